#!/usr/bin/env python3
"""Writes a full-size SD 1.5-shaped model with seeded random weights, for memory, limit and
speed checks of the real architecture (the architecture, not the values, sets what those cost):

    OUT/                      diffusers folder: text_encoder (CLIP ViT-L/14 text tower, 12 layers),
                              unet (320/640/1280/1280), vae (128/256/512/512), tokenizer, scheduler;
                              f32 files and .fp16 variants (≈ 3.4 GB + 1.7 GB)
    OUT.safetensors           the same networks as one original (LDM) single-file checkpoint, fp16

Nothing here is committed (gigabytes); run it where the checks run:

    python3 -m venv tests/reference/.venv && tests/reference/.venv/bin/pip install -r tests/reference/requirements.txt
    tests/reference/.venv/bin/python scripts/make_full_size.py /tmp/sd15-random

Weights: each network's own PyTorch/diffusers initialisation under a fixed seed, which keeps
activations finite through a few EDICT steps (the output is noise, not images).
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

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


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
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
    print(json.dumps({"folder": str(out), "single_file": str(single)}))


if __name__ == "__main__":
    main()
