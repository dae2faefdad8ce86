#!/usr/bin/env python3
"""Reference-fixture generator for the EDICT / Stable Diffusion v1.x Burn port.

Builds, fully offline and deterministically (no hub downloads):

  tests/fixtures/tiny-sd/               diffusers-layout tiny SD1.x model (seeded random weights,
                                        rounded to f16-representable values, real CLIP BPE vocab)
  tests/fixtures/tiny-sd.safetensors    the same networks as one original-SD (LDM/CompVis) checkpoint, f16
  tests/fixtures/reference/             reference outputs (tokenizer, text encoder, UNet, VAE, EDICT f64)
  tests/fixtures/tiny-sd2/              a tiny SD 2.x-shaped model (gelu text encoder padded with "!",
                                        linear projections, per-block heads, upcast attention,
                                        v-prediction), fp16 files only; references in reference/sd2_*

Run:  python tests/reference/make_fixtures.py          (from the repository root; see README.md)

Re-running reproduces byte-identical files (checked by hashing the outputs; see README.md).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

import open_clip
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
MODEL = FIX / "tiny-sd"
SINGLE = FIX / "tiny-sd.safetensors"
MODEL2 = FIX / "tiny-sd2"
SINGLE2 = FIX / "tiny-sd2.safetensors"
REF = FIX / "reference"

BASE_SEED = 20240611
# Channel widths of the UNet and VAE. (32, 32, 64, 64) gives ~38 MiB of fixtures (UNet 2.4M params, f32 +
# fp16 variant + single file); (16, 16, 32, 32) keeps the whole fixture tree under 20 MiB. Only the width
# changes: block types, layers_per_block=2, 8 groups, 2 heads, cross-attention 32 are as in the brief.
BLOCK_OUT = (16, 16, 32, 32)
SCALING_FACTOR = 0.18215

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # single-threaded CPU kernels: same reduction order on every run
torch.manual_seed(BASE_SEED)
np.random.seed(BASE_SEED % 2**32)
random.seed(BASE_SEED)


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------
# 1a. Tokenizer: the real CLIP BPE vocabulary (49408 tokens), rebuilt from open_clip's merges file
# ----------------------------------------------------------------------------------------------
BPE_GZ = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"

SPECIAL_TOKEN = {
    "__type": "AddedToken",
    "lstrip": False,
    "normalized": True,
    "rstrip": False,
    "single_word": False,
}


def build_clip_vocab():
    """vocab/merges exactly as OpenAI CLIP's SimpleTokenizer (and SD1.x's vocab.json) builds them."""
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # line 0 is the "#version" header
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408, len(vocab)
    assert len(set(vocab)) == 49408
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer(dst: Path):
    dst.mkdir(parents=True, exist_ok=True)
    encoder, merges = build_clip_vocab()
    # cross-check against open_clip's own tokenizer tables
    st = SimpleTokenizer()
    # (open_clip >= 2.24 names its two special tokens <start_of_text>/<end_of_text>; ids are the same)
    oc = sorted(st.encoder.items(), key=lambda kv: kv[1])
    assert [k for k, _ in oc[:49406]] == list(encoder)[:49406], "vocab differs from open_clip's"
    with open(dst / "vocab.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(encoder, ensure_ascii=False))
    with open(dst / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    bos = dict(SPECIAL_TOKEN, content="<|startoftext|>")
    eos = dict(SPECIAL_TOKEN, content="<|endoftext|>")
    tok_cfg = {
        "add_prefix_space": False,
        "bos_token": bos,
        "do_lower_case": True,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": eos,
    }
    with open(dst / "tokenizer_config.json", "w") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")
    stm = {
        "bos_token": {k: v for k, v in bos.items() if k != "__type"},
        "eos_token": {k: v for k, v in eos.items() if k != "__type"},
        "pad_token": "<|endoftext|>",
        "unk_token": {k: v for k, v in eos.items() if k != "__type"},
    }
    with open(dst / "special_tokens_map.json", "w") as f:
        json.dump(stm, f, indent=2)
        f.write("\n")
    # verify with transformers
    slow = CLIPTokenizer.from_pretrained(str(dst))
    assert slow.fix_text is not None, "ftfy must be installed: SD1.x's slow CLIPTokenizer uses ftfy.fix_text"
    assert len(slow) == 49408 and slow.bos_token_id == 49406 and slow.eos_token_id == 49407
    assert slow.pad_token_id == 49407
    assert slow("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407], slow(
        "a photo of a cat"
    ).input_ids
    return encoder


# ----------------------------------------------------------------------------------------------
# 1b. Networks with seeded random weights
# ----------------------------------------------------------------------------------------------
def make_unet(sample_size=8, cross_attention_dim=32, attention_head_dim=2, sd2=False):
    """SD 1.x's options by default; `sd2` turns on SD 2.x's linear projections and upcast
    attention (SD 2.1 also has a per-block head count: [5, 10, 20, 20], 64-wide heads)."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention=False,
        block_out_channels=BLOCK_OUT,
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=8,
        norm_eps=1e-5,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,  # SD semantics: the NUMBER OF HEADS (8 in real SD1.x)
        use_linear_projection=sd2,
        upcast_attention=sd2,
    )


def make_vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=BLOCK_OUT,
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=SCALING_FACTOR,
    )


def make_text_encoder(hidden=32, heads=2, hidden_act="quick_gelu", pad_token_id=1):
    """SD 1.x's text tower shape by default; SD 2.x's OpenCLIP tower differs in activation
    (gelu) and pad token ("!", id 0)."""
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        projection_dim=hidden,
        attention_dropout=0.0,
        dropout=0.0,
    )
    return CLIPTextModel(cfg)


# Residual-branch outputs get a smaller gain so the residual stream stays O(1).
RESIDUAL_OUT_SUFFIXES = (
    "conv2.weight",  # resnet second conv (UNet + VAE)
    "to_out.0.weight",  # attention output
    "ff.net.2.weight",  # feed-forward output
    "proj_out.weight",  # spatial transformer output
    "fc2.weight",  # CLIP MLP output
    "out_proj.weight",  # CLIP attention output
)


def param_seed(tag: str, name: str) -> int:
    h = hashlib.sha256(f"{BASE_SEED}:{tag}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def randomize(model: torch.nn.Module, tag: str, gains: dict | None = None):
    """Overwrite every parameter from a generator seeded by (tag, parameter name).

    Independent of construction order, so a diffusers/transformers version that builds modules in
    another order still produces the same weights. Values are rounded to f16-representable floats.
    """
    gains = gains or {}
    norm_params = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            for pname, _ in mod.named_parameters(recurse=False):
                norm_params.add(f"{mname}.{pname}" if mname else pname)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        g = torch.Generator().manual_seed(param_seed(tag, name))
        z = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name in norm_params:
            w = 1.0 + 0.1 * z if name.endswith("weight") else 0.1 * z  # gamma ~ 1, beta small
        elif "embedding" in name and p.ndim == 2:
            w = 0.5 * z  # token / position embedding tables
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            gain = 0.5 if name.endswith(RESIDUAL_OUT_SUFFIXES) else 1.0
            for suffix, gg in gains.items():
                if name.endswith(suffix):
                    gain = gg
            w = gain * z / math.sqrt(fan_in)
        else:
            w = 0.05 * z  # biases
        p.copy_(w.half().float())
    for name, p in model.named_parameters():
        assert torch.equal(p, p.half().float()), name


def state_f32(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# 2. diffusers -> original SD (LDM) single-file mapping
#    (the published logic of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py)
# ----------------------------------------------------------------------------------------------
def unet_to_ldm(sd: dict) -> dict:
    conv = [
        ("time_embed.0.weight", "time_embedding.linear_1.weight"),
        ("time_embed.0.bias", "time_embedding.linear_1.bias"),
        ("time_embed.2.weight", "time_embedding.linear_2.weight"),
        ("time_embed.2.bias", "time_embedding.linear_2.bias"),
        ("input_blocks.0.0.weight", "conv_in.weight"),
        ("input_blocks.0.0.bias", "conv_in.bias"),
        ("out.0.weight", "conv_norm_out.weight"),
        ("out.0.bias", "conv_norm_out.bias"),
        ("out.2.weight", "conv_out.weight"),
        ("out.2.bias", "conv_out.bias"),
    ]
    conv_resnet = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("emb_layers.1", "time_emb_proj"),
        ("skip_connection", "conv_shortcut"),
    ]
    conv_layer = []
    for i in range(4):
        for j in range(2):
            conv_layer.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i < 3:
                conv_layer.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            conv_layer.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i > 0:
                conv_layer.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < 3:
            conv_layer.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            conv_layer.append((f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.", f"up_blocks.{i}.upsamplers.0."))
    conv_layer.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        conv_layer.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))

    mapping = {k: k for k in sd}
    for sd_name, hf_name in conv:
        mapping[hf_name] = sd_name
    for k, v in mapping.items():
        if "resnets" in k:
            for sd_part, hf_part in conv_resnet:
                v = v.replace(hf_part, sd_part)
            mapping[k] = v
    for k, v in mapping.items():
        for sd_part, hf_part in conv_layer:
            v = v.replace(hf_part, sd_part)
        mapping[k] = v
    return {"model.diffusion_model." + v: sd[k] for k, v in mapping.items()}


def vae_to_ldm(sd: dict) -> dict:
    conv = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(4):
        for j in range(2):
            conv.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            conv.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            conv.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            conv.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        conv.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    conv_attn = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ]
    mapping = {k: k for k in sd}
    for k, v in mapping.items():
        for sd_part, hf_part in conv:
            v = v.replace(hf_part, sd_part)
        mapping[k] = v
    for k, v in mapping.items():
        if "attentions" in k:
            for sd_part, hf_part in conv_attn:
                v = v.replace(hf_part, sd_part)
            mapping[k] = v
    out = {}
    for k, v in mapping.items():
        t = sd[k]
        if any(f"mid.attn_1.{w}.weight" in v for w in ("q", "k", "v", "proj_out")):
            t = t.reshape(*t.shape, 1, 1)  # linear [C,C] -> 1x1 conv [C,C,1,1]
        out["first_stage_model." + v] = t
    return out


def text_to_ldm(sd: dict) -> dict:
    return {"cond_stage_model.transformer." + k: v for k, v in sd.items()}


def write_single_file(unet_sd, vae_sd, text_sd, alphas_cumprod_f32, betas_f32):
    ckpt = {}
    ckpt.update(unet_to_ldm(unet_sd))
    ckpt.update(vae_to_ldm(vae_sd))
    ckpt.update(text_to_ldm(text_sd))
    assert len(ckpt) == len(unet_sd) + len(vae_sd) + len(text_sd), "key collision in LDM mapping"
    ckpt = {k: v.half().contiguous() for k, v in ckpt.items()}
    # Keys real SD1.x checkpoints also carry, which a loader must tolerate/ignore:
    ckpt["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    ckpt["betas"] = betas_f32.clone()
    ckpt["alphas_cumprod"] = alphas_cumprod_f32.clone()
    save_file(ckpt, str(SINGLE), metadata={"format": "pt"})

    # --- verify: convert back with diffusers' own single-file loader functions ---
    back = load_file(str(SINGLE))
    checks = [
        ("unet", convert_ldm_unet_checkpoint(back, dict(UNET_CONFIG)), unet_sd),
        ("vae", convert_ldm_vae_checkpoint(back, dict(VAE_CONFIG)), vae_sd),
        ("text", convert_ldm_clip_checkpoint(back), text_sd),
    ]
    for name, conv, ref in checks:
        conv = {k: v for k, v in conv.items() if not k.endswith("position_ids")}
        assert set(conv) == set(ref), (name, sorted(set(conv) ^ set(ref))[:10])
        for k in ref:
            a = conv[k].float()
            assert a.shape == ref[k].shape, (name, k, a.shape, ref[k].shape)
            assert torch.equal(a, ref[k]), (name, k)
        log(f"  single-file round trip via diffusers loader: {name}: {len(ref)} tensors identical")
    return ckpt


# ----------------------------------------------------------------------------------------------
# 3a. Tokenizer reference prompts
# ----------------------------------------------------------------------------------------------
LONG_1 = (
    "a highly detailed matte painting of a sprawling cyberpunk city at night, neon lights reflecting "
    "on wet streets, flying cars, towering skyscrapers, dense fog, volumetric lighting, cinematic "
    "composition, dramatic atmosphere, intricate details, sharp focus, trending on artstation, "
    "concept art by greg rutkowski and syd mead, unreal engine 5, octane render, 8k resolution, "
    "ultra realistic, award winning photograph"
)
LONG_2 = " ".join(f"word{i}" for i in range(120))
LONG_3 = ", ".join(["masterpiece", "best quality", "ultra-detailed", "illustration"] * 12)
LONG_4 = "🐱" * 100
LONG_5 = "the " * 75 + "end"  # exactly at the border: 76 words + BOS/EOS
LONG_6 = "the " * 74 + "end"
LONG_7 = "supercalifragilisticexpialidocious " * 20
LONG_8 = "東京の夜景、雨に濡れた街路、ネオンの光、" * 8


def tokenizer_prompts():
    p = [
        # empty / whitespace
        "", " ", "   ", "\t", "\n", " \t \n ", "\r\n", "\u00a0", "\u3000", "\u2003em space",
        # typical SD prompts
        "a photo of a cat", "a photo of a dog", "A photo of a cat", "A PHOTO OF A CAT",
        "an astronaut riding a horse on mars", "a painting of a fox sitting in a field at sunrise in the style of Claude Monet",
        "portrait of a woman, oil on canvas, highly detailed, 4k", "photo of a red sports car, studio lighting, bokeh",
        "(masterpiece:1.2), best quality, 1girl, solo, looking at viewer", "[cat|dog] hybrid, {fluffy}, <lora:foo:0.8>",
        "a cute corgi lives in a house made out of sushi", "A bowl of soup that looks like a monster, knitted out of wool",
        "an armchair in the shape of an avocado", "a cat wearing a wizard hat, digital art, trending on artstation",
        "ultra realistic photograph of a lighthouse during a storm, 35mm, f/1.8", "low-poly 3D render of a forest",
        "a photo of a cat ", " a photo of a cat", "  a photo of a cat  ", "a  photo   of\ta\ncat",
        "a photo of a cat.", "a photo of a cat!", "a photo of a cat?!", "a photo of a cat...",
        # punctuation
        "hello, world!", "wait... what?!", "!!!", "???", "...", "a-b_c.d/e\\f", "(((nested)))", "[[[brackets]]]",
        "{{curly}}", "<angle>", "#hashtag @mention $dollar %percent ^caret &amp *star", "a+b=c; d:e | f~g `h`",
        '"double quoted"', "'single quoted'", "semi;colon;separated", "comma,,,double", "--flag --v 5 --ar 16:9",
        "email@example.com", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\me\\file.png", "¡¿Qué?!", "«guillemets»",
        "—em dash– en dash", "…ellipsis char", "•bullet ·middot", "©®™", "°C ± µm ×÷",
        # digits / numbers
        "0", "1", "42", "1234567", "3.14159", "1,000,000", "2024-06-11", "12:34:56", "-273.15", "1e10",
        "8k uhd", "4K", "v1.5", "SD1.x", "RTX4090", "abc123def456", "1st 2nd 3rd 4th", "007", "۱۲۳ arabic-indic digits",
        "②③ circled", "Ⅻ roman", "½ ¾ fractions", "x²+y³", "१२३ devanagari digits",
        # case
        "MiXeD CaSe PrOmPt", "CamelCaseWord", "ALLCAPS", "İstanbul", "ǅ titlecase", "ß straße STRASSE", "Σίσυφος ΣΊΣΥΦΟΣ",
        # apostrophes / contractions
        "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S DON'T THEY'RE", "the cat's toy",
        "it’s curly", "don’t curly", "‘single curly’", "“double curly”", "rock 'n' roll", "o'clock", "''", "'s",
        "'t'", "can't won't shan't", "y'all'd've",
        # accents / Latin
        "café", "naïve", "Zürich", "crème brûlée", "façade", "résumé", "Ångström", "São Paulo", "Łódź", "Dvořák",
        "cafe\u0301 (combining acute)", "n\u0303 combining tilde", "ﬁ ligature", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
        # non-Latin scripts
        "猫の写真", "一只猫的照片", "東京タワー", "고양이 사진", "한국어 프롬프트 테스트", "صورة قطة", "مرحبا بالعالم",
        "שלום עולם", "Привет, мир", "фотография кошки", "Γειά σου Κόσμε", "नमस्ते दुनिया", "สวัสดีชาวโลก",
        "ሰላም ልዑል", "ᚠᚢᚦᚨᚱᚲ runes", "𝔣𝔯𝔞𝔨𝔱𝔲𝔯 math letters", "mixed 猫 and cat and 고양이",
        # emoji
        "🐱", "🐶🐱", "a cat 🐱 and a dog 🐶", "👍🏽 skin tone", "👨‍👩‍👧‍👦 family zwj", "🏳️‍🌈 rainbow flag",
        "🇯🇵🇺🇸🇫🇷 flags", "❤️ heart with vs16", "☺︎ text style", "🧑‍🚀 astronaut zwj", "😀😃😄😁😆😅🤣😂",
        "emoji at end 🎉", "🎉 emoji at start", "*️⃣ keycap", "🫠 newer emoji",
        # special-token literals
        "<|endoftext|>", "<|startoftext|>", "a <|endoftext|> b", "a<|endoftext|>b", "<|startoftext|>a photo<|endoftext|>",
        "<|endoftext|><|endoftext|>", "<|ENDOFTEXT|>", "< |endoftext| >", "<|endof", "endoftext", "</w>", "a</w>b",
        "<|startoftext|> <|startoftext|>",
        # control characters and invisible
        "\x00", "a\x00b", "bell\x07", "\x1b[31mred\x1b[0m", "tab\there", "line1\nline2", "cr\rreturn",
        "zero\u200bwidth", "\ufeffbom", "soft\u00adhyphen", "rtl\u202emark", "\x7fdel", "form\x0cfeed", "vt\x0bvt",
        "nbsp\u00a0between", "word\u2028linesep", "\x85nel",
        # html entities and weird ftfy cases
        "&amp;", "Tom &amp; Jerry", "&lt;tag&gt;", "&#39;quote", "mojibake cafÃ©", "â€œsmartâ€\x9d", "ﬀ ﬃ",
        # lengths
        "a", "aa", "aaaa" * 10, "x" * 200, LONG_1, LONG_2, LONG_3, LONG_4, LONG_5, LONG_6, LONG_7, LONG_8,
        "a photo of a cat, " * 10,
    ]
    # seeded fuzz: random mixtures of the interesting pieces above
    rng = random.Random(BASE_SEED)
    pieces = [
        "cat", "dog", "Photo", "of", "a", " ", "  ", "\t", "\n", ",", ".", "!", "'s", "’", "'ll", "123", "7",
        "café", "猫", "고양이", "قطة", "🐱", "👨‍👩‍👧", "🇫🇷", "<|endoftext|>", "(", ")", ":1.2", "-", "_", "ÄÖÜ",
        "\u200b", "\x00", "&amp;", "42nd", "HDR", "über", "résumé", "🙂", "ǅ", "ß",
    ]
    while len(p) < 240:
        n = rng.randint(1, 12)
        p.append("".join(rng.choice(pieces) for _ in range(n)))
    # random code points from assorted blocks
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x3040, 0x30FF),
              (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F)]
    for _ in range(20):
        s = "".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(1, 20)))
        p.append(s)
    seen, out = set(), []
    for s in p:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_tokens(tok_dir: Path):
    slow = CLIPTokenizer.from_pretrained(str(tok_dir))
    fast = CLIPTokenizerFast.from_pretrained(str(tok_dir))
    oc = SimpleTokenizer()
    prompts = tokenizer_prompts()
    rows, fast_diff, oc_diff = [], [], []
    for s in prompts:
        ids = slow(s, padding="max_length", max_length=77, truncation=True).input_ids
        full = slow(s, padding=False, truncation=False).input_ids
        assert len(ids) == 77
        fids = fast(s, padding="max_length", max_length=77, truncation=True).input_ids
        if fids != ids:
            fast_diff.append({"prompt": s, "slow": ids, "fast": fids})
        # open_clip (OpenAI's original tokenizer, with html.unescape) as a third opinion
        o = oc.encode(s)
        o = ([49406] + o)[:76] + [49407]
        o = o + [49407] * (77 - len(o))  # SD1.x pads with <|endoftext|>
        if o != ids:
            oc_diff.append({"prompt": s, "slow": ids, "open_clip": o})
        rows.append({"prompt": s, "ids": ids, "truncated": len(full) > 77})
    return rows, fast_diff, oc_diff


# ----------------------------------------------------------------------------------------------
# 3b. Schedule (SD1.x DDIM, authors' conventions) -- computed in float64
# ----------------------------------------------------------------------------------------------
def alphas_cumprod_f64():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0), betas


def edict_timesteps(steps: int, strength: float, steps_offset: int = 0):
    """Denoising-order timesteps actually run: t_k = (1000/N)*k + offset, k = N-1..0, skipping the
    first N - floor(N*s) of them (authors: t_limit = steps - int(steps * strength))."""
    stride = 1000 // steps
    all_t = [stride * k + steps_offset for k in range(steps - 1, -1, -1)]
    skip = steps - int(steps * strength)
    return all_t[skip:], stride


def coeffs(ac, t: int, stride: int):
    """DDIM step t -> t - stride:  x_prev = a*x + b*eps,
    a = sqrt(ab_prev/ab_t), b = sqrt(1-ab_prev) - sqrt(ab_prev*(1-ab_t)/ab_t).
    set_alpha_to_one = False: the alpha "before" t=0 is alphas_cumprod[0]."""
    ab_t = ac[t]
    prev = t - stride
    ab_prev = ac[prev] if prev >= 0 else ac[0]
    a = torch.sqrt(ab_prev / ab_t)
    b = torch.sqrt(1 - ab_prev) - torch.sqrt(ab_prev * (1 - ab_t) / ab_t)
    return a, b


# ----------------------------------------------------------------------------------------------
# 3c. EDICT sampler (float64), written next to the equations of docs/edict.md
# ----------------------------------------------------------------------------------------------
class Guided:
    """eps(z, t) = eps_u + g * (eps_c - eps_u); the two branches run as one batch of 2."""

    def __init__(self, unet, uncond, cond, g):
        self.unet, self.ctx, self.g = unet, torch.cat([uncond, cond]), g

    @torch.no_grad()
    def __call__(self, z, t):
        out = self.unet(torch.cat([z, z]), t, encoder_hidden_states=self.ctx).sample
        eps_u, eps_c = out.chunk(2)
        return eps_u + self.g * (eps_c - eps_u)


def edict_denoise(x, y, ts, stride, ac, eps, p, leapfrog=True):
    """Coupled denoising. i = position in the denoising order (0 = first, largest t)."""
    for i, t in enumerate(ts):
        a, b = coeffs(ac, t, stride)
        x_first = (i % 2 == 0) or not leapfrog
        if x_first:  # (u, v) = (x, y)
            x = a * x + b * eps(y, t)  # 1. u <- a*u + b*eps(v, t)
            y = a * y + b * eps(x, t)  # 2. v <- a*v + b*eps(u_new, t)
        else:  # (u, v) = (y, x)
            y = a * y + b * eps(x, t)
            x = a * x + b * eps(y, t)
        x = p * x + (1 - p) * y  # 3. mixing, x first ...
        y = p * y + (1 - p) * x  # ... then y with the new x
    return x, y


def edict_invert(x, y, ts, stride, ac, eps, p, leapfrog=True, parity_from_inversion_counter=False, trace=None):
    """Exact inverse of edict_denoise: walk ts in reverse and undo each step.

    The leapfrog parity is the timestep's position i in the DENOISING order. The flag
    parity_from_inversion_counter reproduces diffusers' community EDICT pipeline instead, whose
    inversion picks the order from its own loop counter j (j = 0 at the smallest t): at even j it
    undoes x first (= "y was updated first"), which agrees with the denoising parity only when the
    number of steps is even. Used here only to demonstrate the trap."""
    n = len(ts)
    for j, i in enumerate(reversed(range(n))):
        t = ts[i]
        a, b = coeffs(ac, t, stride)
        y = (y - (1 - p) * x) / p  # 1. undo mixing: y first ...
        x = (x - (1 - p) * y) / p  # ... then x
        if parity_from_inversion_counter:
            x_first = (j % 2 == 1) or not leapfrog
        else:
            x_first = (i % 2 == 0) or not leapfrog
        if x_first:  # denoising did x then y: undo y, then x
            y = (y - b * eps(x, t)) / a
            x = (x - b * eps(y, t)) / a
        else:  # denoising did y then x: undo x, then y
            x = (x - b * eps(y, t)) / a
            y = (y - b * eps(x, t)) / a
        if trace is not None:
            trace.append((x.clone(), y.clone()))
    return x, y


def ddim_invert(z, ts, stride, ac, eps):
    """Baseline DDIM inversion (single chain): x_t = (x_prev - b*eps(x_prev, t)) / a, i.e. eps is
    evaluated at the lower-noise latent (the usual approximation; this is what makes it inexact)."""
    for t in reversed(ts):
        a, b = coeffs(ac, t, stride)
        z = (z - b * eps(z, t)) / a
    return z


def ddim_denoise(z, ts, stride, ac, eps):
    for t in ts:
        a, b = coeffs(ac, t, stride)
        z = a * z + b * eps(z, t)
    return z


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def smooth_image(seed: int, size: int = 64):
    """Smooth random pattern in [-1, 1]: upsampled low-res noise plus a few random sinusoids."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=True)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    for c in range(3):
        for _ in range(3):
            fx, fy, ph = (torch.rand(3, generator=g) * torch.tensor([6.0, 6.0, 6.283])).tolist()
            img[0, c] += 0.5 * torch.sin(2 * math.pi * (fx * xx + fy * yy) + ph)
    img = torch.tanh(0.8 * img)
    return img.half().float()  # f16-representable, so an f16 pipeline gets the same input


def tokenize(tok, s):
    return torch.tensor([tok(s, padding="max_length", max_length=77, truncation=True).input_ids], dtype=torch.int64)


def stats(name, t):
    t = t.double()
    log(f"  {name:34s} shape={list(t.shape)} mean={t.mean():+.4f} std={t.std():.4f} absmax={t.abs().max():.4f}")
    assert torch.isfinite(t).all(), name
    assert 1e-2 < t.std() < 1e2 and t.abs().max() < 1e3, f"{name}: activations out of O(1) range"


def save(tensors: dict, path: Path, meta: dict | None = None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


UNET_CONFIG: dict = {}
VAE_CONFIG: dict = {}


# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# 4. SD 2.x: what differs from 1.x, on the same tiny widths
# ----------------------------------------------------------------------------------------------
def text_to_openclip(sd: dict, extra_layer: dict) -> dict:
    """transformers CLIPTextModel keys -> the OpenCLIP layout of SD 2.x single files
    (`cond_stage_model.model.*`, q/k/v fused into `in_proj`). SD 2.x uses the penultimate layer
    of OpenCLIP's 24, so real files hold one more resblock than the text encoder: `extra_layer`
    plays it here, with `text_projection`, both to be ignored by a loader."""
    p, out = "cond_stage_model.model.", {}
    out[p + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[p + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[p + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[p + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")})
    for i in layers + [len(layers)]:
        src = extra_layer if i == len(layers) else {k.split(f"layers.{i}.", 1)[1]: v for k, v in sd.items() if f"layers.{i}." in k}
        r = f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[r + f"attn.in_proj_{kind}"] = torch.cat([src[f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[r + f"attn.out_proj.{kind}"] = src[f"self_attn.out_proj.{kind}"]
            out[r + f"ln_1.{kind}"] = src[f"layer_norm1.{kind}"]
            out[r + f"ln_2.{kind}"] = src[f"layer_norm2.{kind}"]
            out[r + f"mlp.c_fc.{kind}"] = src[f"mlp.fc1.{kind}"]
            out[r + f"mlp.c_proj.{kind}"] = src[f"mlp.fc2.{kind}"]
    out[p + "text_projection"] = torch.eye(sd["text_model.final_layer_norm.weight"].shape[0])
    return out


def write_single_file2(unet_sd, vae_sd, te, unet_config):
    """The SD 2.x model as one original (LDM) checkpoint, f16, verified with diffusers' loaders."""
    text_sd = state_f32(te)
    extra = make_text_encoder(hidden=48, heads=3, hidden_act="gelu", pad_token_id=0)
    randomize(extra, "text_encoder2_extra")
    extra_layer = {k.split("layers.0.", 1)[1]: v for k, v in state_f32(extra).items() if "layers.0." in k}
    ckpt = {**unet_to_ldm(unet_sd), **vae_to_ldm(vae_sd), **text_to_openclip(text_sd, extra_layer)}
    ckpt = {k: v.half().contiguous() for k, v in ckpt.items()}
    save_file(ckpt, str(SINGLE2), metadata={"format": "pt"})
    back = load_file(str(SINGLE2))
    conv_text = convert_open_clip_checkpoint(te, back)
    extra_keys = {k for k in conv_text if ".layers.2." in k or k == "text_projection.weight"}
    checks = [
        ("unet", convert_ldm_unet_checkpoint(back, dict(unet_config)), state_f32_of(unet_sd)),
        ("vae", convert_ldm_vae_checkpoint(back, dict(VAE_CONFIG)), vae_sd),
        ("text", {k: v for k, v in conv_text.items() if k not in extra_keys}, text_sd),
    ]
    assert len(extra_keys) == 16, sorted(extra_keys)  # the extra resblock (q, k, v split); text_projection is skipped
    for name, conv, ref in checks:
        assert set(conv) == set(ref), (name, sorted(set(conv) ^ set(ref))[:10])
        for k in ref:
            assert torch.equal(conv[k].float().reshape(ref[k].shape), ref[k]), (name, k)
        log(f"  SD 2.x single file via diffusers' loaders: {name}: {len(ref)} tensors identical")


def state_f32_of(sd: dict) -> dict:
    return {k: v.float() for k, v in sd.items()}


def make_sd2(vae):
    log("SD 2.x-shaped model")
    if MODEL2.exists():
        shutil.rmtree(MODEL2)
    MODEL2.mkdir(parents=True)
    shutil.copytree(MODEL / "tokenizer", MODEL2 / "tokenizer")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # SD 2.x pads with "!"
        path = MODEL2 / "tokenizer" / name
        cfg = json.loads(path.read_text())
        cfg["pad_token"] = "!"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
    tok = CLIPTokenizer.from_pretrained(str(MODEL2 / "tokenizer"))
    assert tok.pad_token_id == 0 and tokenize(tok, "a photo")[0, -1] == 0
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    sched.save_pretrained(str(MODEL2 / "scheduler"))
    unet = make_unet(sample_size=12, cross_attention_dim=48, attention_head_dim=[2, 2, 4, 4], sd2=True)
    te = make_text_encoder(hidden=48, heads=3, hidden_act="gelu", pad_token_id=0)
    randomize(unet, "unet2")
    randomize(te, "text_encoder2")
    # fp16 files only (the weights are f16-representable): half the fixture size
    for m, sub in ((unet, "unet"), (vae, "vae"), (te, "text_encoder")):
        m.eval()
        copy = type(m).from_config(m.config) if sub != "text_encoder" else CLIPTextModel(m.config)
        copy.load_state_dict(m.state_dict())
        copy.half().save_pretrained(str(MODEL2 / sub), safe_serialization=True, variant="fp16")
    index = json.loads((MODEL / "model_index.json").read_text())
    (MODEL2 / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    unet = UNet2DConditionModel.from_pretrained(str(MODEL2 / "unet"), variant="fp16", torch_dtype=torch.float32).eval()
    te = CLIPTextModel.from_pretrained(str(MODEL2 / "text_encoder"), variant="fp16", torch_dtype=torch.float32).eval()
    assert unet.config.upcast_attention and unet.config.use_linear_projection
    write_single_file2(state_f32(unet), state_f32(vae), te, unet.config)

    log("SD 2.x references")
    prompts = ["", "a photo of a cat", "a photo of a dog"]
    out = {}
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = tokenize(tok, p)
            out[f"ids_{i}"], out[f"hidden_{i}"] = ids, te(ids).last_hidden_state
            stats(f"sd2 hidden_{i}", out[f"hidden_{i}"])
        g = torch.Generator().manual_seed(BASE_SEED + 5)
        out["sample"] = torch.randn(2, 4, 8, 8, generator=g)
        out["encoder_hidden_states"] = torch.cat([out["hidden_0"], out["hidden_1"]])
        for t in (981, 1):
            out[f"out_t{t}"] = unet(out["sample"], t, encoder_hidden_states=out["encoder_hidden_states"]).sample
            stats(f"sd2 out_t{t}", out[f"out_t{t}"])
    save(out, REF / "sd2_networks.safetensors")

    # EDICT in float64 with v converted to ε inside the noise prediction
    ac = alphas_cumprod_f64()[0]
    unet64, vae64, te64 = unet.double(), vae.double(), te.double()
    with torch.no_grad():
        image = smooth_image(BASE_SEED + 2)
        z0 = vae64.encode(image.double()).latent_dist.mean * SCALING_FACTOR
        torch.set_default_dtype(torch.float64)
        emb = {p: te64(tokenize(tok, p)).last_hidden_state for p in prompts}
        torch.set_default_dtype(torch.float32)

    class GuidedV(Guided):
        """ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t, v classifier-free guided."""

        def __call__(self, z, t):
            return ac[t].sqrt() * super().__call__(z, t) + (1 - ac[t]).sqrt() * z

    # cross-check the conversion with diffusers' own v-prediction DDIM step (f32 alphas)
    ref = DDIMScheduler.from_config(sched.config, steps_offset=0)
    ref.set_timesteps(10)
    gg = torch.Generator().manual_seed(BASE_SEED + 6)
    xs, vs = torch.randn(1, 4, 8, 8, generator=gg, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=gg, dtype=torch.float64)
    for t in (900, 500):
        a, b = coeffs(ac, t, 100)
        eps = ac[t].sqrt() * vs + (1 - ac[t]).sqrt() * xs
        assert rel(a * xs + b * eps, ref.step(vs, t, xs, eta=0.0).prev_sample) < 1e-5, t

    src, tgt, guidance, p = prompts[1], prompts[2], 3.0, 0.93
    eps_src = GuidedV(unet64, emb[""], emb[src], guidance)
    eps_tgt = GuidedV(unet64, emb[""], emb[tgt], guidance)
    ts, stride = edict_timesteps(10, 0.8)
    inv_x, inv_y = edict_invert(z0.clone(), z0.clone(), ts, stride, ac, eps_src, p)
    edit_x, edit_y = edict_denoise(inv_x, inv_y, ts, stride, ac, eps_tgt, p)
    recon_x, _ = edict_denoise(inv_x, inv_y, ts, stride, ac, eps_src, p)
    log(f"  SD 2.x EDICT (v-prediction) round trip rel err {rel(recon_x, z0):.3e}, edit vs latent {rel(edit_x, z0):.3e}")
    assert rel(recon_x, z0) < 1e-10
    with torch.no_grad():
        edit_image = vae64.decode(edit_x / SCALING_FACTOR).sample
    save({"latent": z0, "inv_x": inv_x, "inv_y": inv_y, "edit_x": edit_x, "edit_y": edit_y, "edit_image": edit_image},
         REF / "sd2_edict.safetensors")


def main():
    for d in (MODEL, REF):
        if d.exists():
            shutil.rmtree(d)
    for f in (SINGLE, SINGLE2):
        if f.exists():
            f.unlink()
    MODEL.mkdir(parents=True)
    REF.mkdir(parents=True)
    log(f"torch {torch.__version__}  diffusers {diffusers.__version__}  transformers {transformers.__version__}")

    # ---------------- tokenizer ----------------
    log("tokenizer")
    write_tokenizer(MODEL / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))

    # ---------------- scheduler ----------------
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    sched.save_pretrained(str(MODEL / "scheduler"))

    # ---------------- networks ----------------
    log("networks")
    unet, vae, te = make_unet(), make_vae(), make_text_encoder()
    randomize(unet, "unet")
    randomize(vae, "vae", gains={"encoder.conv_out.weight": 4.0})  # posterior mean ~ a few units, like SD
    randomize(te, "text_encoder")
    for m in (unet, vae, te):
        m.eval()
    UNET_CONFIG.update(unet.config)
    VAE_CONFIG.update(vae.config)
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("unet", unet), ("vae", vae), ("text_encoder", te))}
    log(f"  parameters: {n_params}")

    unet.save_pretrained(str(MODEL / "unet"), safe_serialization=True)
    UNet2DConditionModel.from_config(unet.config)  # config round-trips
    unet16 = make_unet()
    unet16.load_state_dict(unet.state_dict())
    unet16.half().save_pretrained(str(MODEL / "unet"), safe_serialization=True, variant="fp16")
    del unet16
    vae.save_pretrained(str(MODEL / "vae"), safe_serialization=True)
    te.save_pretrained(str(MODEL / "text_encoder"), safe_serialization=True)
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(MODEL / "model_index.json", "w") as f:
        json.dump(model_index, f, indent=2)
        f.write("\n")

    # reload from disk: what we test is what we saved
    unet = UNet2DConditionModel.from_pretrained(str(MODEL / "unet")).eval()
    vae = AutoencoderKL.from_pretrained(str(MODEL / "vae")).eval()
    te = CLIPTextModel.from_pretrained(str(MODEL / "text_encoder")).eval()
    from diffusers import StableDiffusionPipeline  # the folder loads as a whole pipeline, offline

    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), local_files_only=True)
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    del pipe
    u16 = load_file(str(MODEL / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    for k, v in state_f32(unet).items():
        assert u16[k].dtype == torch.float16 and torch.equal(u16[k].float(), v), k

    # ---------------- single-file checkpoint ----------------
    log("single-file LDM checkpoint")
    ac64, betas64 = alphas_cumprod_f64()
    write_single_file(
        state_f32(unet), state_f32(vae), state_f32(te), sched.alphas_cumprod.float(), sched.betas.float()
    )

    # ---------------- tokens.json ----------------
    log("tokenizer reference")
    rows, fast_diff, oc_diff = make_tokens(MODEL / "tokenizer")
    with open(REF / "tokens.json", "w", encoding="utf-8") as f:  # one prompt per line
        f.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows) + "\n]\n")
    with open(REF / "tokens_fast_disagreements.json", "w", encoding="utf-8") as f:
        json.dump(
            {"fast_vs_slow": fast_diff, "open_clip_vs_slow": oc_diff}, f, ensure_ascii=False, separators=(",", ":")
        )
        f.write("\n")
    log(f"  {len(rows)} prompts, {sum(r['truncated'] for r in rows)} truncated:")
    for r in rows:
        if r["truncated"]:
            log(f"    {r['prompt'][:60]!r}")
    log(f"  fast != slow for {len(fast_diff)} prompts: {[d['prompt'] for d in fast_diff]}")
    log(f"  open_clip != slow for {len(oc_diff)} prompts: {[d['prompt'] for d in oc_diff]}")

    # ---------------- text encoder ----------------
    log("text encoder reference (f32)")
    te_prompts = ["", "a photo of a cat", "Zürich café at night, 🐱 & 猫!", LONG_1]
    te_out, hidden = {}, {}
    with torch.no_grad():
        for i, s in enumerate(te_prompts):
            ids = tokenize(tok, s)
            h = te(ids).last_hidden_state
            te_out[f"ids_{i}"] = ids
            te_out[f"hidden_{i}"] = h
            hidden[s] = h
            stats(f"hidden_{i}", h)
    save(te_out, REF / "text_encoder.safetensors")
    with open(REF / "text_encoder.json", "w", encoding="utf-8") as f:
        json.dump({"prompts": te_prompts, "truncated": [len(tok(s).input_ids) > 77 for s in te_prompts]},
                  f, ensure_ascii=False, indent=2)
        f.write("\n")

    # ---------------- UNet ----------------
    log("unet reference (f32)")
    g = torch.Generator().manual_seed(BASE_SEED + 1)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    sample_wide = torch.randn(1, 4, 8, 16, generator=g)
    ehs = torch.cat([hidden[""], hidden["a photo of a cat"]])
    un = {"sample": sample, "encoder_hidden_states": ehs, "sample_wide": sample_wide,
          "encoder_hidden_states_wide": hidden["a photo of a cat"]}
    with torch.no_grad():
        for idx, t in enumerate((981, 1)):
            un[f"timestep_{idx}"] = torch.tensor([t], dtype=torch.int64)
            un[f"out_t{t}"] = unet(sample, t, encoder_hidden_states=ehs).sample
            stats(f"out_t{t}", un[f"out_t{t}"])
        un["out_wide_t981"] = unet(sample_wide, 981, encoder_hidden_states=un["encoder_hidden_states_wide"]).sample
        stats("out_wide_t981", un["out_wide_t981"])
    save(un, REF / "unet.safetensors")

    # ---------------- VAE ----------------
    log("vae reference (f32)")
    image = smooth_image(BASE_SEED + 2)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(BASE_SEED + 3))
    with torch.no_grad():
        post = vae.encode(image).latent_dist
        decoded = vae.decode(latent).sample
        recon = vae.decode(post.mean).sample
    va = {"image": image, "posterior_mean": post.mean, "posterior_logvar": post.logvar, "latent": latent,
          "decoded": decoded}
    for k, v in va.items():
        stats(k, v)
    stats("decode(posterior_mean)", recon)
    save(va, REF / "vae.safetensors")

    # ---------------- EDICT (float64) ----------------
    log("EDICT reference (float64)")
    unet64, vae64, te64 = unet.double(), vae.double(), te.double()
    with torch.no_grad():
        z0 = vae64.encode(image.double()).latent_dist.mean * SCALING_FACTOR
        # transformers builds CLIP's causal mask with torch.full(..., finfo(dtype).min) in the DEFAULT dtype,
        # which overflows for float64 unless the default dtype is float64 too.
        torch.set_default_dtype(torch.float64)
        emb = {s: te64(tokenize(tok, s)).last_hidden_state for s in ("", "a photo of a cat", "a photo of a dog")}
        torch.set_default_dtype(torch.float32)
    ac = ac64
    # cross-check the schedule conventions against diffusers' DDIMScheduler (steps_offset 0, eta 0)
    ref_sched = DDIMScheduler.from_config(sched.config, steps_offset=0)
    ref_sched.set_timesteps(10)
    assert ref_sched.timesteps.tolist() == edict_timesteps(10, 1.0)[0], ref_sched.timesteps
    gg = torch.Generator().manual_seed(BASE_SEED + 4)
    xs, es = torch.randn(1, 4, 8, 8, generator=gg, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=gg, dtype=torch.float64)
    for t in (900, 500, 0):
        a, b = coeffs(ac, t, 100)
        want = ref_sched.step(es, t, xs, eta=0.0).prev_sample
        assert rel(a * xs + b * es, want) < 1e-5, t  # diffusers uses f32 alphas_cumprod
    src, tgt, guidance, p = "a photo of a cat", "a photo of a dog", 3.0, 0.93
    eps_src = Guided(unet64, emb[""], emb[src], guidance)
    eps_tgt = Guided(unet64, emb[""], emb[tgt], guidance)
    ed = {"alphas_cumprod": ac, "latent": z0, "text_uncond": emb[""], "text_source": emb[src], "text_target": emb[tgt]}
    runs_meta = []
    for r, (steps, strength) in enumerate(((10, 0.8), (10, 0.7))):
        ts, stride = edict_timesteps(steps, strength)
        trace = []
        inv_x, inv_y = edict_invert(z0.clone(), z0.clone(), ts, stride, ac, eps_src, p, trace=trace)
        edit_x, edit_y = edict_denoise(inv_x, inv_y, ts, stride, ac, eps_tgt, p)
        recon_x, recon_y = edict_denoise(inv_x, inv_y, ts, stride, ac, eps_src, p)
        e_x, e_y = rel(recon_x, z0), rel(recon_y, z0)
        # the known trap: parity from the inversion loop counter
        bx, by = edict_invert(z0.clone(), z0.clone(), ts, stride, ac, eps_src, p, parity_from_inversion_counter=True)
        bad_x, _ = edict_denoise(bx, by, ts, stride, ac, eps_src, p)
        e_bad = rel(bad_x, z0)
        pre = f"run{r}_"
        ed.update({pre + "inv_x": inv_x, pre + "inv_y": inv_y, pre + "edit_x": edit_x, pre + "edit_y": edit_y,
                   pre + "recon_x": recon_x, pre + "recon_y": recon_y,
                   pre + "inv_trace_x": torch.stack([tx for tx, _ in trace]),
                   pre + "inv_trace_y": torch.stack([ty for _, ty in trace])})
        meta = {"run": r, "steps": steps, "strength": strength, "n_steps_run": len(ts), "timesteps": ts,
                "stride": stride, "roundtrip_rel_err_x": e_x, "roundtrip_rel_err_y": e_y,
                "roundtrip_rel_err_x_wrong_parity": e_bad, "edit_vs_latent_rel": rel(edit_x, z0)}
        log(f"  run{r}: steps={steps} strength={strength} -> {len(ts)} steps {ts}")
        log(f"    EDICT round trip rel err: x {e_x:.3e}  y {e_y:.3e}   (wrong parity: {e_bad:.3e})")
        log(f"    edit vs latent rel diff: {rel(edit_x, z0):.3e}")
        if r == 0:
            di = ddim_invert(z0.clone(), ts, stride, ac, eps_src)
            dr = ddim_denoise(di, ts, stride, ac, eps_src)
            ed["ddim_inv"], ed["ddim_recon"] = di, dr
            meta["ddim_roundtrip_rel_err"] = rel(dr, z0)
            log(f"    DDIM inversion round trip rel err: {rel(dr, z0):.3e}")
        assert e_x < 1e-10 and e_y < 1e-10, "EDICT round trip is not exact"
        runs_meta.append(meta)
    for k, v in ed.items():
        assert v.dtype == torch.float64, k
    save(ed, REF / "edict.safetensors")
    diff_ac = float(((sched.alphas_cumprod.double() - ac) / ac).abs().max())
    edict_meta = {
        "source_prompt": src, "target_prompt": tgt, "uncond_prompt": "", "guidance": guidance, "mix_p": p,
        "leapfrog": True, "steps_offset": 0, "set_alpha_to_one": False, "scaling_factor": SCALING_FACTOR,
        "latent": "vae.encode(image).latent_dist.mean * 0.18215, networks in float64; image = vae.safetensors:image",
        "alphas_cumprod": "float64: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, cumprod(1-betas)",
        "alphas_cumprod_max_rel_diff_vs_diffusers_f32": diff_ac,
        "runs": runs_meta,
    }
    with open(REF / "edict.json", "w") as f:
        json.dump(edict_meta, f, indent=2)
        f.write("\n")

    make_sd2(vae)

    # ---------------- summary ----------------
    log("files:")
    total = 0
    for path in sorted(FIX.rglob("*")):
        if path.is_file():
            sz = path.stat().st_size
            total += sz
            log(f"  {sz:>10d}  {path.relative_to(ROOT)}")
    log(f"  total {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
