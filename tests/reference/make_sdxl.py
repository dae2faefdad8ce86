#!/usr/bin/env python3
"""SDXL-shaped tiny model and references: two text encoders, added conditioning, SGM single file.

Builds, fully offline and deterministically (no hub downloads), reusing make_fixtures.py's helpers
(`randomize`, `tokenize`, `smooth_image`, the EDICT loops, ...) and the tiny-sd tokenizer and VAE it
wrote; it rewrites nothing make_fixtures.py writes. Writes only:

  tests/fixtures/tiny-sdxl/                    diffusers-layout StableDiffusionXLPipeline folder, fp16 files
                                               only (weights f16-representable: an f32 load is exact)
  tests/fixtures/tiny-sdxl.safetensors         the same networks as one SGM (original SDXL) checkpoint, f16
  tests/fixtures/reference/sdxl_networks.safetensors
                                               f32 references: both text encoders (penultimate / last /
                                               pooled), the pipeline's encode_prompt, add_time_ids, UNet, VAE
  tests/fixtures/reference/sdxl_edict.safetensors + sdxl_edict.json
                                               EDICT in float64 with SDXL conditioning (zero unconditional
                                               branch, pooled text + micro-conditioning time ids)

Run:  tests/reference/.venv/bin/python tests/reference/make_sdxl.py     (after make_fixtures.py; see README.md)

Re-running reproduces byte-identical files (checked by hashing the outputs; see README.md).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

import diffusers  # noqa: E402

FIX, REF, log, rel, stats, tokenize = mf.FIX, mf.REF, mf.log, mf.rel, mf.stats, mf.tokenize
MODEL = FIX / "tiny-sdxl"
SINGLE = FIX / "tiny-sdxl.safetensors"
NETS = REF / "sdxl_networks.safetensors"
EDICT = REF / "sdxl_edict.safetensors"
EDICT_JSON = REF / "sdxl_edict.json"

SCALING_FACTOR = 0.13025  # SDXL's VAE
HIDDEN1, HIDDEN2, PROJ2 = 16, 24, 20  # projection 20 != hidden 24: a transposed projection fails
TIME_EMBED = 8  # addition_time_embed_dim (SDXL: 256)
PROMPTS = ["", "a photo of a cat", "a photo of a dog"]


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------
def make_unet():
    """SDXL base's UNet options on tiny widths. SDXL base ships `"upcast_attention": null`;
    diffusers accepts None (Attention only tests its truthiness), so None is passed and saved."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=False,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        transformer_layers_per_block=[1, 2, 3],  # SDXL: [1, 2, 10]; the mid block takes the last
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=8,
        norm_eps=1e-5,
        cross_attention_dim=HIDDEN1 + HIDDEN2,
        attention_head_dim=[1, 2, 4],  # SDXL semantics: the NUMBER OF HEADS per block ([5, 10, 20])
        use_linear_projection=True,
        upcast_attention=None,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=PROJ2 + 6 * TIME_EMBED,
    )


def text_config(hidden, heads, act, bos, projection_dim, layers=3, intermediate=None):
    """Both encoders carry SDXL's legacy `eos_token_id: 2` (and `pad_token_id: 1`): transformers then
    pools at the argmax of the ids (the first <|endoftext|>, the largest id) instead of searching for
    id 2. `layers` and `intermediate` (default 2 * hidden) are the tiny model's unless given
    (scripts/make_full_size.py --sdxl builds SDXL's own sizes with this)."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=projection_dim,
        attention_dropout=0.0,
        dropout=0.0,
    )


def make_text_encoder():  # SDXL's CLIP ViT-L text tower
    return CLIPTextModel(text_config(HIDDEN1, 2, "quick_gelu", 49406, HIDDEN1))


def make_text_encoder_2():  # SDXL's OpenCLIP ViT-bigG text tower, with its projection
    return CLIPTextModelWithProjection(text_config(HIDDEN2, 3, "gelu", 0, PROJ2))


# ----------------------------------------------------------------------------------------------
# diffusers -> SGM (original SDXL) single-file mapping
# (the logic of diffusers' scripts/convert_diffusers_to_original_sdxl.py; block and layer counts
# are read from the config and the keys, so the same functions map SDXL's full sizes:
# scripts/make_full_size.py --sdxl)
# ----------------------------------------------------------------------------------------------
UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
RESNET_PARTS = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_prefix_map(config) -> dict:
    """diffusers module prefix -> SGM prefix. Per level i: input_blocks 3i+1, 3i+2 (resnet .0,
    attention .1 when the block has attentions) and the downsampler input_blocks 3(i+1).0.op;
    output_blocks 3i..3i+2 (resnet .0, attention .1), the upsampler as .1 after a resnet-only layer
    or .2 after an attention (SDXL: output_blocks.2.2.conv and output_blocks.5.2.conv)."""
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    m = {}
    for i in range(n):
        for j in range(lpb):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(lpb + 1) * i + j + 1}.0."
            if down_attn[i]:
                m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(lpb + 1) * i + j + 1}.1."
        for j in range(lpb + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(lpb + 1) * i + j}.0."
            if up_attn[i]:
                m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(lpb + 1) * i + j}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_attn[i] else 1}."
    m["mid_block.resnets.0."] = "middle_block.0."
    m["mid_block.attentions.0."] = "middle_block.1."
    m["mid_block.resnets.1."] = "middle_block.2."
    return m


def unet_to_sgm(sd: dict, config) -> dict:
    prefixes = {**UNET_TOP, **unet_prefix_map(config)}
    out = {}
    for k, v in sd.items():
        hits = [p for p in prefixes if k.startswith(p)]
        assert len(hits) == 1, (k, hits)
        rest = k[len(hits[0]):]
        if ".resnets." in hits[0]:
            for hf, sgm in RESNET_PARTS:
                if rest.startswith(hf + "."):
                    rest = sgm + rest[len(hf):]
                    break
        out["model.diffusion_model." + prefixes[hits[0]] + rest] = v
    assert len(out) == len(sd)
    return out


def text2_to_openclip(sd: dict, prefix="conditioner.embedders.1.model.") -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP's layout: q/k/v fused into `in_proj` and
    `text_projection` stored as OpenCLIP keeps it, [hidden, projection] (x @ P), the transpose of
    transformers' Linear weight [projection, hidden]."""
    out = {
        prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        prefix + "text_projection": sd["text_projection.weight"].t().contiguous(),
        prefix + "logit_scale": torch.tensor(math.log(100.0)),  # OpenCLIP's trained value (100, the clamp)
    }
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        src = {k.split(f"layers.{i}.", 1)[1]: v for k, v in sd.items() if f"encoder.layers.{i}." in k}
        r = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[r + f"attn.in_proj_{kind}"] = torch.cat([src[f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[r + f"attn.out_proj.{kind}"] = src[f"self_attn.out_proj.{kind}"]
            out[r + f"ln_1.{kind}"] = src[f"layer_norm1.{kind}"]
            out[r + f"ln_2.{kind}"] = src[f"layer_norm2.{kind}"]
            out[r + f"mlp.c_fc.{kind}"] = src[f"mlp.fc1.{kind}"]
            out[r + f"mlp.c_proj.{kind}"] = src[f"mlp.fc2.{kind}"]
    return out


# each network's key prefix in an SGM checkpoint, by its diffusers folder
SGM_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}


def to_sgm(part: str, sd: dict, config=None) -> dict:
    """One network's diffusers/transformers state dict in SGM's layout; `part` is its folder name,
    `config` the UNet's config (only the UNet's mapping needs it). Asserts that no keys collide."""
    if part == "unet":
        out = unet_to_sgm(sd, config)
    elif part == "vae":
        out = mf.vae_to_ldm(sd)
    elif part == "text_encoder":
        out = {SGM_PREFIX[part] + k: v for k, v in sd.items()}
    else:
        out = text2_to_openclip(sd, SGM_PREFIX[part])
    expected = len(sd)
    if part == "text_encoder_2":
        # +1: logit_scale; -3*2*layers: q/k/v weights and biases fused into in_proj_weight/bias
        layers = {k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")}
        expected += 1 - 2 * 2 * len(layers)
    assert len(out) == expected, f"key collision in the SGM mapping of {part}"
    return out


def from_sgm(part: str, ckpt: dict, config) -> dict:
    """diffusers' own single-file converters: the `part` network's state dict from SGM keys
    (`config`: the network's config; for text_encoder_2 only read when `text_projection` is missing)."""
    if part == "unet":
        return convert_ldm_unet_checkpoint(ckpt, dict(config))
    if part == "vae":
        return convert_ldm_vae_checkpoint(ckpt, dict(config))
    if part == "text_encoder":
        return convert_ldm_clip_checkpoint(ckpt)
    return convert_open_clip_checkpoint(SimpleNamespace(config=config), ckpt, prefix=SGM_PREFIX[part])


def write_single_file(unet, vae, te1, te2):
    unet_sd, vae_sd, te1_sd, te2_sd = (mf.state_f32(m) for m in (unet, vae, te1, te2))
    parts = {"unet": unet_sd, "vae": vae_sd, "text_encoder": te1_sd, "text_encoder_2": te2_sd}
    mapped = [to_sgm(part, sd, unet.config) for part, sd in parts.items()]
    ckpt = {k: v for m in mapped for k, v in m.items()}
    assert len(ckpt) == sum(map(len, mapped)), "key collision between the networks in the SGM mapping"
    ckpt = {k: v.half().contiguous() for k, v in sorted(ckpt.items())}
    save_file(ckpt, str(SINGLE), metadata={"format": "pt"})

    # verify: convert back with diffusers' own single-file converters
    back = load_file(str(SINGLE))
    conv2 = from_sgm("text_encoder_2", back, te2.config)
    checks = [
        ("unet", from_sgm("unet", back, unet.config), unet_sd),
        ("vae", from_sgm("vae", back, vae.config), vae_sd),
        ("text_encoder", from_sgm("text_encoder", back, te1.config), te1_sd),
        ("text_encoder_2", conv2, te2_sd),
    ]
    counts = {}
    for name, conv, ref in checks:
        assert set(conv) == set(ref), (name, sorted(set(conv) ^ set(ref))[:10])
        for k in ref:
            assert conv[k].shape == ref[k].shape, (name, k, conv[k].shape, ref[k].shape)
            assert torch.equal(conv[k].float(), ref[k]), (name, k)
        counts[name] = len(ref)
        log(f"  single file via diffusers' converters: {name}: {len(ref)} tensors identical")
    assert conv2["text_projection.weight"].shape == (PROJ2, HIDDEN2)
    # and as a whole pipeline: from_single_file with the folder as config (a 3-layer text_encoder_2
    # cannot be auto-detected: diffusers keys "xl_base" on ...resblocks.9...)
    sf = StableDiffusionXLPipeline.from_single_file(str(SINGLE), config=str(MODEL), local_files_only=True,
                                                    torch_dtype=torch.float32)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", te1), ("text_encoder_2", te2)):
        a, b = getattr(sf, name).state_dict(), model.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b), name
    log("  StableDiffusionXLPipeline.from_single_file(config=tiny-sdxl) loads the same weights")
    return ckpt, counts


# ----------------------------------------------------------------------------------------------
# EDICT with SDXL conditioning
# ----------------------------------------------------------------------------------------------
class GuidedXL:
    """eps(z, t) = eps_u + g * (eps_c - eps_u), batch [uncond, cond]. The unconditional row is all
    zeros (context and pooled): force_zeros_for_empty_prompt with no negative prompt. Both rows get
    the same micro-conditioning time ids."""

    def __init__(self, unet, ctx, pooled, time_ids, g):
        self.unet, self.g = unet, g
        self.ctx = torch.cat([torch.zeros_like(ctx), ctx])
        self.pooled = torch.cat([torch.zeros_like(pooled), pooled])
        self.time_ids = time_ids.repeat(2, 1)

    @torch.no_grad()
    def __call__(self, z, t):
        out = self.unet(torch.cat([z, z]), t, encoder_hidden_states=self.ctx,
                        added_cond_kwargs={"text_embeds": self.pooled, "time_ids": self.time_ids}).sample
        eps_u, eps_c = out.chunk(2)
        return eps_u + self.g * (eps_c - eps_u)


def encode(te1, te2, tok1, tok2, prompt):
    """(concat of both penultimate hidden states [1,77,80], te2's projected pooled [1,40])."""
    o1 = te1(tokenize(tok1, prompt), output_hidden_states=True)
    o2 = te2(tokenize(tok2, prompt), output_hidden_states=True)
    return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1), o2.text_embeds


# ----------------------------------------------------------------------------------------------
def main():
    for d in (MODEL,):
        if d.exists():
            shutil.rmtree(d)
    for f in (SINGLE, NETS, EDICT, EDICT_JSON):
        if f.exists():
            f.unlink()
    MODEL.mkdir(parents=True)
    log(f"torch {torch.__version__}  diffusers {diffusers.__version__}")

    # ---------------- tokenizers, scheduler ----------------
    shutil.copytree(mf.MODEL / "tokenizer", MODEL / "tokenizer")
    shutil.copytree(mf.MODEL / "tokenizer", MODEL / "tokenizer_2")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # OpenCLIP's tokenizer pads with "!"
        path = MODEL / "tokenizer_2" / name
        cfg = json.loads(path.read_text())
        cfg["pad_token"] = "!"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
    tok1 = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer_2"))
    assert tok1.pad_token_id == 49407 and tok2.pad_token_id == 0
    assert tokenize(tok2, "a photo")[0, -1] == 0 and tokenize(tok1, "a photo")[0, -1] == 49407
    EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
        use_karras_sigmas=False,
    ).save_pretrained(str(MODEL / "scheduler"))

    # ---------------- networks: seeded, f16-representable, saved as fp16 files only ----------------
    unet, te1, te2 = make_unet(), make_text_encoder(), make_text_encoder_2()
    mf.randomize(unet, "sdxl_unet")
    mf.randomize(te1, "sdxl_text_encoder")
    mf.randomize(te2, "sdxl_text_encoder_2")
    vae_sd = AutoencoderKL.from_pretrained(str(mf.MODEL / "vae"))  # tiny-sd's VAE weights
    cfg = {k: v for k, v in vae_sd.config.items() if not k.startswith("_")}  # no _name_or_path (a local path)
    vae = AutoencoderKL.from_config({**cfg, "scaling_factor": SCALING_FACTOR, "force_upcast": True})
    vae.load_state_dict(vae_sd.state_dict())
    del vae_sd
    n_params = {}
    for m, sub in ((unet, "unet"), (vae, "vae"), (te1, "text_encoder"), (te2, "text_encoder_2")):
        n_params[sub] = sum(p.numel() for p in m.parameters())
        m.eval().half().save_pretrained(str(MODEL / sub), safe_serialization=True, variant="fp16")
    log(f"  parameters: {n_params}")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (MODEL / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        files = sorted(p.name for p in (MODEL / sub).iterdir())
        assert len(files) == 2 and files[0] == "config.json" and files[1].endswith(".fp16.safetensors"), files

    # ---------------- load the folder back as a whole pipeline, offline, in f32 ----------------
    pipe = StableDiffusionXLPipeline.from_pretrained(str(MODEL), local_files_only=True, variant="fp16",
                                                     torch_dtype=torch.float32)
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.config.force_zeros_for_empty_prompt
    assert pipe.tokenizer_2.pad_token_id == 0 and pipe.tokenizer.pad_token_id == 49407
    assert pipe.unet.config.upcast_attention is None and pipe.vae.config.scaling_factor == SCALING_FACTOR
    assert pipe.scheduler.config.timestep_spacing == "leading" and pipe.scheduler.config.steps_offset == 1
    for built, loaded in ((unet, pipe.unet), (vae, pipe.vae), (te1, pipe.text_encoder), (te2, pipe.text_encoder_2)):
        a, b = built.state_dict(), loaded.state_dict()
        assert set(a) == set(b)
        for k in a:
            assert b[k].dtype == torch.float32 and torch.equal(a[k].float(), b[k]), k
    unet, vae, te1, te2 = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval(), pipe.text_encoder_2.eval()
    del built, loaded

    # ---------------- single file ----------------
    log("SGM single-file checkpoint")
    _, conv_counts = write_single_file(unet, vae, te1, te2)

    # ---------------- f32 references ----------------
    log("references (f32)")
    out = {}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ids1, ids2 = tokenize(tok1, p), tokenize(tok2, p)
            o1 = te1(ids1, output_hidden_states=True)
            o2 = te2(ids2, output_hidden_states=True)
            assert len(o1.hidden_states) == 4 and len(o2.hidden_states) == 4  # embeddings + 3 layers
            # pooling: legacy eos_token_id 2 -> argmax of the ids = the first 49407 (<|endoftext|>)
            eos = int((ids2[0] == 49407).nonzero()[0])
            assert torch.equal(o2.text_embeds, te2.text_projection(o2.last_hidden_state[:, eos]))
            out.update({f"ids1_{i}": ids1, f"ids2_{i}": ids2,
                        f"te1_penultimate_{i}": o1.hidden_states[-2], f"te1_last_{i}": o1.last_hidden_state,
                        f"te2_penultimate_{i}": o2.hidden_states[-2], f"te2_pooled_{i}": o2.text_embeds})
            for k in ("te1_penultimate", "te1_last", "te2_penultimate", "te2_pooled"):
                stats(f"{k}_{i}", out[f"{k}_{i}"])
        pe, npe, ppe, nppe = pipe.encode_prompt(prompt="a photo of a cat", device="cpu", num_images_per_prompt=1,
                                                do_classifier_free_guidance=True, negative_prompt=None)
        out.update({"prompt_embeds": pe, "negative_prompt_embeds": npe, "pooled_prompt_embeds": ppe,
                    "negative_pooled_prompt_embeds": nppe})
        assert pe.shape == (1, 77, HIDDEN1 + HIDDEN2) and ppe.shape == (1, PROJ2)
        assert torch.equal(pe, torch.cat([out["te1_penultimate_1"], out["te2_penultimate_1"]], -1))
        assert torch.equal(ppe, out["te2_pooled_1"])
        assert not npe.any() and not nppe.any() and npe.shape == pe.shape and nppe.shape == ppe.shape
        _, npe2, _, nppe2 = pipe.encode_prompt(prompt="a photo of a cat", device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=True, negative_prompt="a photo of a dog")
        out.update({"neg2_prompt_embeds": npe2, "neg2_pooled_prompt_embeds": nppe2})
        assert torch.equal(npe2, torch.cat([out["te1_penultimate_2"], out["te2_penultimate_2"]], -1))
        assert torch.equal(nppe2, out["te2_pooled_2"])
        for k in ("prompt_embeds", "pooled_prompt_embeds", "neg2_prompt_embeds", "neg2_pooled_prompt_embeds"):
            stats(k, out[k])
        # original_size and target_size are (height, width)
        tid = pipe._get_add_time_ids((64, 48), (0, 0), (64, 48), dtype=torch.float32, text_encoder_projection_dim=PROJ2)
        assert tid.tolist() == [[64.0, 48.0, 0.0, 0.0, 64.0, 48.0]], tid
        out["add_time_ids_64x48"] = tid

        g = torch.Generator().manual_seed(mf.BASE_SEED + 11)
        out["sample"] = torch.randn(2, 4, 8, 6, generator=g)
        out["encoder_hidden_states"] = torch.cat([
            torch.cat([out[f"te1_penultimate_{i}"], out[f"te2_penultimate_{i}"]], -1) for i in (0, 1)])
        out["text_embeds"] = torch.cat([out["te2_pooled_0"], out["te2_pooled_1"]])
        out["time_ids"] = tid.repeat(2, 1)
        added = {"text_embeds": out["text_embeds"], "time_ids": out["time_ids"]}
        sensitivity = {}
        for t in (981, 1):
            o = unet(out["sample"], t, encoder_hidden_states=out["encoder_hidden_states"], added_cond_kwargs=added).sample
            out[f"unet_out_t{t}"] = o
            stats(f"unet_out_t{t}", o)
            # how much the added conditioning matters (a port that drops or garbles it must fail)
            alt = {
                "time_ids_64x64": {"text_embeds": added["text_embeds"],
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(2, 1)},
                "text_embeds_zero": {"text_embeds": torch.zeros_like(added["text_embeds"]),
                                     "time_ids": added["time_ids"]},
            }
            for name, kw in alt.items():
                o2 = unet(out["sample"], t, encoder_hidden_states=out["encoder_hidden_states"], added_cond_kwargs=kw).sample
                sensitivity[f"t{t}_{name}"] = rel(o2, o)
                assert rel(o2, o) > 1e-3, (t, name, rel(o2, o))
        log(f"  UNet output change when the added conditioning changes: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sensitivity.items()))

        out["image"] = mf.smooth_image(mf.BASE_SEED + 2)
        assert torch.equal(out["image"], load_file(str(REF / "vae.safetensors"))["image"])
        out["posterior_mean"] = vae.encode(out["image"]).latent_dist.mean
        out["decoded"] = vae.decode(out["posterior_mean"]).sample
        for k in ("image", "posterior_mean", "decoded", "sample", "encoder_hidden_states", "text_embeds"):
            stats(k, out[k])
    for k, v in out.items():
        assert v.dtype == (torch.int64 if k.startswith("ids") else torch.float32), k
    mf.save(out, NETS)

    # ---------------- EDICT, float64 ----------------
    log("EDICT reference (float64)")
    unet64, vae64, te1_64, te2_64 = unet.double(), vae.double(), te1.double(), te2.double()
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]], dtype=torch.float64)  # 64x64 image, no crop
    src, tgt, guidance, p = PROMPTS[1], PROMPTS[2], 3.0, 0.93
    with torch.no_grad():
        z0 = vae64.encode(out["image"].double()).latent_dist.mean * SCALING_FACTOR
        # CLIP's causal mask is built in the default dtype (see make_fixtures.py)
        torch.set_default_dtype(torch.float64)
        emb = {s: encode(te1_64, te2_64, tok1, tok2, s) for s in (src, tgt)}
        torch.set_default_dtype(torch.float32)
    for s, i in ((src, 1), (tgt, 2)):  # the f64 encoders agree with the f32 references
        ctx, pooled = emb[s]
        assert ctx.dtype == torch.float64 and pooled.dtype == torch.float64
        ref_ctx = torch.cat([out[f"te1_penultimate_{i}"], out[f"te2_penultimate_{i}"]], -1).double()
        assert rel(ctx, ref_ctx) < 1e-5 and rel(pooled, out[f"te2_pooled_{i}"].double()) < 1e-5
    ac = mf.alphas_cumprod_f64()[0]
    eps_src = GuidedXL(unet64, *emb[src], time_ids, guidance)
    eps_tgt = GuidedXL(unet64, *emb[tgt], time_ids, guidance)
    steps, strength = 10, 0.8
    ts, stride = mf.edict_timesteps(steps, strength)
    inv_x, inv_y = mf.edict_invert(z0.clone(), z0.clone(), ts, stride, ac, eps_src, p)
    edit_x, edit_y = mf.edict_denoise(inv_x, inv_y, ts, stride, ac, eps_tgt, p)
    recon_x, recon_y = mf.edict_denoise(inv_x, inv_y, ts, stride, ac, eps_src, p)
    e_x, e_y, e_edit = rel(recon_x, z0), rel(recon_y, z0), rel(edit_x, z0)
    log(f"  timesteps {ts}: round trip rel err x {e_x:.3e} y {e_y:.3e}, edit vs latent {e_edit:.3e}")
    assert e_x < 1e-10 and e_y < 1e-10, "EDICT round trip is not exact"
    assert e_edit > 1e-2, "the edit does not change the latent"
    with torch.no_grad():
        edit_image = vae64.decode(edit_x / SCALING_FACTOR).sample
    ed = {"latent": z0, "inv_x": inv_x, "inv_y": inv_y, "edit_x": edit_x, "edit_y": edit_y, "recon_x": recon_x,
          "edit_image": edit_image,
          "text_uncond": torch.zeros_like(emb[src][0]), "text_source": emb[src][0], "text_target": emb[tgt][0],
          "pooled_uncond": torch.zeros_like(emb[src][1]), "pooled_source": emb[src][1], "pooled_target": emb[tgt][1]}
    for k, v in ed.items():
        assert v.dtype == torch.float64, k
        if not k.endswith("uncond"):
            stats(k, v)
    mf.save(ed, EDICT)
    meta = {
        "source_prompt": src, "target_prompt": tgt,
        "uncond": "zeros: text_uncond and pooled_uncond are all 0 (force_zeros_for_empty_prompt, no negative prompt)",
        "guidance": guidance, "mix_p": p, "leapfrog": True, "steps": steps, "strength": strength,
        "timesteps": ts, "stride": stride, "steps_offset": 0, "set_alpha_to_one": False,
        "time_ids": time_ids[0].tolist(),
        "time_ids_meaning": "(original_h, original_w, crop_top, crop_left, target_h, target_w), same for both rows",
        "encoder_hidden_states": "cat(text_encoder hidden_states[-2], text_encoder_2 hidden_states[-2]), last axis",
        "text_embeds": "text_encoder_2(...).text_embeds (pooled at the first <|endoftext|>, projected)",
        "scaling_factor": SCALING_FACTOR,
        "latent": "vae.encode(image).latent_dist.mean * 0.13025, networks in float64; "
                  "image = sdxl_networks.safetensors:image (= vae.safetensors:image)",
        "alphas_cumprod": "float64, as edict.json (reference/edict.safetensors:alphas_cumprod)",
        "f32_parts": "diffusers computes the sinusoidal timestep embedding and the time-id embedding in float32",
        "roundtrip_rel_err_x": e_x, "roundtrip_rel_err_y": e_y, "edit_vs_latent_rel": e_edit,
    }
    EDICT_JSON.write_text(json.dumps(meta, indent=2) + "\n")

    # ---------------- summary ----------------
    log(f"  single-file tensors checked: {conv_counts}")
    log("files:")
    total = 0
    paths = sorted(p for p in MODEL.rglob("*") if p.is_file()) + [SINGLE, NETS, EDICT, EDICT_JSON]
    for path in paths:
        sz = path.stat().st_size
        total += sz
        log(f"  {sz:>10d}  {path.relative_to(mf.ROOT)}")
    log(f"  total {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
