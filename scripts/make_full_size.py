#!/usr/bin/env python3
"""Writes a full-size SD 1.5- or SDXL-shaped model with seeded random weights, for memory, limit and
speed checks of the real architecture (the architecture, not the values, sets what those cost).

    make_full_size.py OUT            SD 1.5's shapes:
      OUT/                      diffusers folder: text_encoder (CLIP ViT-L/14 text tower, 12 layers),
                                unet (320/640/1280/1280), vae (128/256/512/512), tokenizer, scheduler;
                                f32 files and .fp16 variants (≈ 3.4 GB + 1.7 GB)
      OUT.safetensors           the same networks as one original (LDM) single-file checkpoint, fp16

    make_full_size.py --sdxl OUT     SDXL base's shapes (stabilityai/stable-diffusion-xl-base-1.0):
      OUT/                      StableDiffusionXLPipeline folder, fp16 files only (*.fp16.safetensors,
                                ≈ 6.9 GB): text_encoder (CLIP ViT-L text tower, 12 layers, 768),
                                text_encoder_2 (OpenCLIP bigG text tower, 32 layers, 1280, projected),
                                unet (SDXL base's config: 320/640/1280, transformer depths 1/2/10,
                                text_time conditioning), vae (SD's, scaling 0.13025, force_upcast),
                                tokenizer, tokenizer_2 (pads with "!"), scheduler (Euler, leading)
      OUT.safetensors           the same networks as one SGM (original SDXL) single file, fp16
                                (`model.diffusion_model.*`, `first_stage_model.*`,
                                `conditioner.embedders.{0,1}.*`; ≈ 6.9 GB), checked against the
                                folder with diffusers' own single-file converters
      Parameter counts are asserted equal to SDXL base's published ones. Memory: one network is
      built, halved, saved and freed at a time (the UNet is 10.3 GB in f32 while it is built):
      peak RSS 13 GiB, 1.5 minutes on 2 cores (dev machine).

Nothing here is committed (gigabytes); run it where the checks run:

    python3 -m venv tests/reference/.venv && tests/reference/.venv/bin/pip install -r tests/reference/requirements.txt
    tests/reference/.venv/bin/python scripts/make_full_size.py /tmp/sd15-random
    tests/reference/.venv/bin/python scripts/make_full_size.py --sdxl ~/.cache/edict/sdxl-random

Weights: each network's own PyTorch/diffusers/transformers initialisation under a fixed seed
(SD 1.5: one seed for all three; SDXL: one per network, so each is independent of the others),
which keeps activations finite through a few EDICT steps (the output is noise, not images). The
SGM mapping is tests/reference/make_sdxl.py's (the one its tiny SDXL single file is made and
checked with), the LDM mapping tests/reference/make_fixtures.py's.
"""

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "reference"), str(ROOT / "benches")]
from make_fixtures import text_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402  (the published key mapping)
from peer_diffusers import SD15_UNET, SD15_VAE  # noqa: E402  (SD 1.5's UNet and VAE configs)

TEXT = CLIPTextConfig(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
    projection_dim=768,
)

# stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (every option that is not diffusers'
# default; `upcast_attention` is null there, as make_sdxl.py's tiny UNet)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10],
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,  # 768 + 1280: both encoders' states side by side
    attention_head_dim=[5, 10, 20],  # SDXL's (legacy) meaning: the number of heads per block
    use_linear_projection=True,
    upcast_attention=None,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled + 6 time ids x 256
)
SDXL_VAE = {**SD15_VAE, "scaling_factor": 0.13025, "force_upcast": True, "sample_size": 1024}
# SDXL base's published parameter counts
SDXL_PARAMS = {
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae": 83_653_863,
    "unet": 2_567_463_684,
}
SDXL_SEED = 2048  # network i (in SDXL_PARAMS' order) is built under torch.manual_seed(SDXL_SEED + i)


def sd15(out: Path):
    torch.manual_seed(1505)
    unet, vae, te = UNet2DConditionModel(**SD15_UNET).eval(), AutoencoderKL(**SD15_VAE).eval(), CLIPTextModel(TEXT).eval()
    for model, sub in ((unet, "unet"), (vae, "vae"), (te, "text_encoder")):
        model.save_pretrained(str(out / sub), safe_serialization=True)
        model.half().save_pretrained(str(out / sub), safe_serialization=True, variant="fp16")
        print(f"{sub}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters", flush=True)
    shutil.copytree(ROOT / "tests" / "fixtures" / "tiny-sd" / "tokenizer", out / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(str(out / "scheduler"))
    (out / "model_index.json").write_text(
        (ROOT / "tests" / "fixtures" / "tiny-sd" / "model_index.json").read_text())
    ckpt = {**unet_to_ldm(unet.state_dict()), **vae_to_ldm(vae.state_dict()), **text_to_ldm(te.state_dict())}
    single = out.with_suffix(".safetensors")
    save_file({k: v.half().contiguous() for k, v in ckpt.items()}, str(single), metadata={"format": "pt"})
    return single


def sdxl_network(part: str):
    """`part` (a diffusers folder name) built with its library's own initialisation, in f32."""
    from make_sdxl import text_config  # SDXL's legacy eos_token_id 2 / pad_token_id 1

    if part == "text_encoder":  # CLIP ViT-L/14's text tower
        return CLIPTextModel(text_config(768, 12, "quick_gelu", 0, 768, layers=12, intermediate=3072))
    if part == "text_encoder_2":  # OpenCLIP ViT-bigG/14's text tower, with its projection
        return CLIPTextModelWithProjection(text_config(1280, 20, "gelu", 0, 1280, layers=32, intermediate=5120))
    if part == "vae":
        return AutoencoderKL(**SDXL_VAE)
    return UNet2DConditionModel(**SDXL_UNET)


def sdxl(out: Path):
    from make_sdxl import SGM_PREFIX, from_sgm, to_sgm  # the tiny SDXL's (checked) SGM mapping

    fixture = ROOT / "tests" / "fixtures" / "tiny-sdxl"
    for sub in ("tokenizer", "tokenizer_2", "scheduler"):  # the real CLIP BPE; tokenizer_2 pads with "!"
        shutil.copytree(fixture / sub, out / sub)
    (out / "model_index.json").write_text((fixture / "model_index.json").read_text())
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "EulerDiscreteScheduler" and scheduler["timestep_spacing"] == "leading"
    assert json.loads((out / "model_index.json").read_text())["force_zeros_for_empty_prompt"] is True

    # one network at a time: build (f32), count, halve, save its fp16 file, keep only its SGM keys
    ckpt, configs = {}, {}
    for i, part in enumerate(SDXL_PARAMS):
        t = time.time()
        torch.manual_seed(SDXL_SEED + i)
        model = sdxl_network(part).eval().requires_grad_(False)
        n = sum(p.numel() for p in model.parameters())
        assert n == SDXL_PARAMS[part], f"{part}: {n:,} parameters, SDXL base has {SDXL_PARAMS[part]:,}"
        model.half()
        model.save_pretrained(str(out / part), safe_serialization=True, variant="fp16")
        files = sorted(p.name for p in (out / part).iterdir())
        assert len(files) == 2 and files[0] == "config.json" and files[1].endswith(".fp16.safetensors"), files
        configs[part] = json.loads((out / part / "config.json").read_text())
        sgm = to_sgm(part, model.state_dict(), model.config)
        assert not ckpt.keys() & sgm.keys(), f"{part}: SGM keys collide with another network's"
        ckpt.update({k: v.half().contiguous() for k, v in sgm.items()})
        del model, sgm
        gc.collect()
        print(f"{part}: {n:,} parameters (SDXL base's), {time.time() - t:.0f} s", flush=True)

    single = out.with_suffix(".safetensors")
    t = time.time()
    save_file(dict(sorted(ckpt.items())), str(single), metadata={"format": "pt"})
    n_keys = len(ckpt)
    del ckpt
    gc.collect()
    print(f"{single.name}: {n_keys} tensors, {time.time() - t:.0f} s", flush=True)

    # the single file read back per network by diffusers' converters equals the folder's fp16 file
    t = time.time()
    with safe_open(str(single), "pt") as f:
        keys = list(f.keys())
        for part in SDXL_PARAMS:
            sub = {k: f.get_tensor(k) for k in keys if k.startswith(SGM_PREFIX[part])}
            config = configs[part] if part in ("unet", "vae") else CLIPTextConfig(**configs[part])
            conv = from_sgm(part, sub, config)
            ref = load_file(str(next((out / part).glob("*.fp16.safetensors"))))
            assert set(conv) == set(ref), (part, sorted(set(conv) ^ set(ref))[:10])
            for k in ref:
                assert conv[k].dtype == torch.float16 and torch.equal(conv[k], ref[k]), (part, k)
            print(f"  single file = folder ({part}): {len(ref)} tensors identical via diffusers' converters", flush=True)
            del sub, conv, ref
            gc.collect()
    assert sum(k.startswith(tuple(SGM_PREFIX.values())) for k in keys) == len(keys), "keys outside the four networks"
    print(f"  checked in {time.time() - t:.0f} s", flush=True)
    return single


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdxl", action="store_true", help="SDXL base's shapes (default: SD 1.5's)")
    ap.add_argument("out", type=Path, help="the folder to write; OUT.safetensors is written beside it")
    args = ap.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    single = sdxl(out) if args.sdxl else sd15(out)
    print(json.dumps({"folder": str(out), "single_file": str(single)}))


if __name__ == "__main__":
    main()
