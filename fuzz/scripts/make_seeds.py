#!/usr/bin/env python3
"""Writes the small seed corpora in fuzz/corpus/ (run from anywhere; needs numpy and Pillow).

Every file is synthetic and tiny (< 10 KB); the whole seed corpus stays well under 1 MB."""
import io
import json
import os
import struct

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")
rng = np.random.default_rng(0)


def out(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- safetensors
DT = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def safetensors(tensors, metadata=None):
    """tensors: list of (key, dtype name, shape, raw bytes or ndarray)."""
    header, blobs, off = {}, [], 0
    for key, dt, shape, arr in tensors:
        if isinstance(arr, np.ndarray):
            raw = arr.astype(DT[dt]).tobytes() if dt in DT else arr.tobytes()
        else:
            raw = arr
        header[key] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def bf16(a):
    return (np.asarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


def tiny_clip(prefix, dt="F32", linear_suffix=()):
    """The tensors of the fuzz target's tiny CLIP (hidden 8, 1 layer, 16 tokens, 77 positions)."""
    d, inter, vocab, pos = 8, 16, 16, 77
    t = []

    def add(key, shape, extra=()):
        a = rng.standard_normal(shape).astype(np.float32) * 0.2
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("layer_norm.weight"):
            a = a + 1
        t.append((prefix + key, dt, tuple(shape) + tuple(extra), bf16(a) if dt == "BF16" else a))

    add("embeddings.token_embedding.weight", (vocab, d))
    add("embeddings.position_embedding.weight", (pos, d))
    l = "encoder.layers.0."
    for n in ("layer_norm1", "layer_norm2"):
        add(l + n + ".weight", (d,))
        add(l + n + ".bias", (d,))
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        add(l + "self_attn." + n + ".weight", (d, d), linear_suffix)
        add(l + "self_attn." + n + ".bias", (d,))
    add(l + "mlp.fc1.weight", (inter, d), linear_suffix)
    add(l + "mlp.fc1.bias", (inter,))
    add(l + "mlp.fc2.weight", (d, inter), linear_suffix)
    add(l + "mlp.fc2.bias", (d,))
    add("final_layer_norm.weight", (d,))
    add("final_layer_norm.bias", (d,))
    return t


diffusers = tiny_clip("text_model.")
out("weights", "tiny_clip_f32.safetensors", safetensors(diffusers, {"format": "pt"}))
out("weights", "tiny_clip_bf16_linear_1x1.safetensors",
    safetensors(tiny_clip("text_model.", "BF16", (1, 1))))
single = tiny_clip("cond_stage_model.transformer.text_model.", "F16") + [
    ("cond_stage_model.transformer.text_model.embeddings.position_ids", "I64", (1, 77),
     np.arange(77, dtype=np.int64)),
    ("model.diffusion_model.input_blocks.0.0.weight", "F16", (2, 1, 1, 1), np.ones(2)),
    ("model.diffusion_model.output_blocks.2.1.conv.bias", "F16", (2,), np.ones(2)),
    ("first_stage_model.decoder.up.3.block.0.nin_shortcut.weight", "F16", (2,), np.ones(2)),
    ("first_stage_model.encoder.mid.attn_1.proj_out.bias", "F16", (2,), np.ones(2)),
    ("model_ema.decay", "F32", (), np.ones(1)),
]
out("weights", "tiny_single_file_f16.safetensors", safetensors(single))
# small malformed ones
out("weights", "empty_header.safetensors", safetensors([]))
out("weights", "int64_where_float.safetensors",
    safetensors([("text_model.final_layer_norm.weight", "I64", (8,), np.arange(8, dtype=np.int64))]))
out("weights", "wrong_shape.safetensors",
    safetensors([("text_model.embeddings.token_embedding.weight", "F32", (4, 2), np.zeros(8))]))
full = safetensors(diffusers)
out("weights", "truncated.safetensors", full[: len(full) // 2])
out("weights", "header_longer_than_file.bin", struct.pack("<Q", 1 << 40) + b'{"a":1}')

# ---------------------------------------------------------------- latents
def latents(meta, shape=(1, 4, 2, 2), dt="F64"):
    n = int(np.prod(shape))
    t = [(k, dt, shape, rng.standard_normal(n)) for k in ("x", "y", "latent")]
    return safetensors(t, meta)


meta = {"format": "edict-latents/2", "model": "tiny", "fingerprint": "0123456789abcdef",
        "prompt": "a cat", "negative": "",
        "method": "edict", "steps": "7", "strength": "0.7", "mix": "0.93", "guidance": "3",
        "leapfrog": "true", "steps_offset": "1"}
out("latents", "valid_edict.safetensors", latents(meta))
out("latents", "valid_ddim.safetensors", latents(dict(meta, method="ddim", leapfrog="false")))
out("latents", "no_metadata.safetensors", latents(None))
out("latents", "f32_tensors.safetensors", latents(meta, dt="F32"))
out("latents", "bad_number.safetensors", latents(dict(meta, steps="seven")))
out("latents", "format_1.safetensors", latents(dict(meta, format="edict-latents/1")))

# ---------------------------------------------------------------- prompts
prompts = {
    "simple.txt": "a photo of a cat",
    "empty.txt": "",
    "spaces.txt": "   \t \n  ",
    "long.txt": " ".join(["a very detailed painting of a lighthouse on a cliff"] * 12),
    "special_tokens.txt": "<|startoftext|>Cat<|endoftext|> dog <|ENDOFTEXT|>x",
    "html_entities.txt": "&lt;3 &#59; &semi; &NTILDE; &amp;\nline <b> &amp;",
    "unicode.txt": "ΣΊΣΥΦΟΣ café ﬁ ｆｕｌｌ 𝔘𝔫𝔦 😀 中文 \u200b\u0085\U0010fffd",
    "controls.txt": "a\x00b\x1b[31mred\x1b[0m\x07\r\nc\x7f",
    "contractions.txt": "Don't you'll we've I'm it'd 1234 3.14 !!!???",
}
for name, text in prompts.items():
    out("tokenizer", name, text.encode("utf-8"))
# a model folder's tokenizer: vocab.json NUL merges.txt NUL prompt
syms = ["a", "c", "t", "a</w>", "c</w>", "t</w>", "ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
vocab = json.dumps({s: i for i, s in enumerate(syms)}).encode()
merges = b"#version: 0.2\nc a\nca t</w>\n"
out("tokenizer", "own_vocab.bin", vocab + b"\0" + merges + b"\0" + b"cat a cat")
out("tokenizer", "own_vocab_no_specials.bin", b'{"a":0}\0a b\n\0a')

# ---------------------------------------------------------------- prompt weights
weighted = {
    "plain.txt": "a photo of a cat",
    "weight.txt": "a (cat:1.3) on a mat",
    "nested.txt": "(a (red:2) car:1.5), ((fluffy)) [[old]] dog",
    "escapes.txt": "a \\(literal\\) \\[x\\] \\\\ back\\slash",
    "colon_text.txt": "(style: watercolor) cat, time: noon",
    "unclosed.txt": "a (cat",
    "stray.txt": "a cat)]",
    "bad_number.txt": "(cat:1.2.3) (dog:-1) (x:)",
    "prompt_editing.txt": "[cat:dog:0.5]",
    "inside_word.txt": "a (cat)s",
    "long.txt": "a " * 80 + "(cat:2)",
}
for name, text in weighted.items():
    out("prompt_weights", name, text.encode("utf-8"))

# ---------------------------------------------------------------- PIE-Bench mapping files
def entry(path, mask, **extra):
    return {"image_path": path, "original_prompt": "a [cat] sitting", "editing_prompt": "a [dog] sitting",
            "editing_instruction": "make it a dog", "editing_type_id": "1", "blended_word": "cat dog",
            "mask": mask, **extra}
mappings = {
    "one.json": {"000000000001": entry("0_random_140/000000000001.jpg", [1000, 20, 1600, 20])},
    "two_sorted.json": {"2": entry("b.jpg", [0, 3]), "10": entry("./a.jpg", [])},
    "clipped_runs.json": {"1": entry("a.jpg", [512 * 512 - 5, 600, 512 * 512 + 5, 10, 7, 0])},
    "odd_mask.json": {"1": entry("a.jpg", [1])},
    "negative_run.json": {"1": entry("a.jpg", [-3, 2])},
    "huge_run.json": {"1": entry("a.jpg", [2**63 - 1, 2**63 - 1])},
    "escape.json": {"1": entry("../../secret.png", [])},
    "absolute.json": {"1": entry("/etc/passwd", [])},
    "missing_field.json": {"1": {"image_path": "a.jpg", "mask": []}},
}
for name, m in mappings.items():
    out("pie_mapping", name, json.dumps(m).encode())

# ---------------------------------------------------------------- LoRA files
# (fuzz_targets/lora.rs resolves them against its small model: cross-attention width 4, 8
# channels, a fused `in_proj` in the second text encoder, two layers per UNet block)
def pair(module, down, up, dt="F32", alpha=None):
    """A module's down and up tensors (suffix, shape), with a scalar f16 alpha when given."""
    t = [(f"{module}.{d}", dt, shape, rng.standard_normal(int(np.prod(shape)))) for d, shape in (down, up)]
    return t + ([(f"{module}.alpha", "F16", (), np.array(alpha))] if alpha else [])
def kohya(module, down, up, **kw):
    return pair(module, ("lora_down.weight", down), ("lora_up.weight", up), **kw)
def peft(module, down, up, **kw):
    return pair(module, ("lora_A.weight", down), ("lora_B.weight", up), **kw)
ATTN2_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
loras = {
    "kohya.safetensors": safetensors(
        kohya("lora_unet_" + ATTN2_K.replace(".", "_"), (2, 4), (8, 2), dt="F16", alpha=1.0)
        + kohya("lora_unet_down_blocks_0_resnets_0_conv1", (2, 8, 3, 3), (8, 2, 1, 1), alpha=4.0)
        + kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", (2, 4), (4, 2))),
    "kohya_sgm.safetensors": safetensors(
        kohya("lora_unet_input_blocks_1_0_in_layers_2", (1, 8, 3, 3), (8, 1, 1, 1))
        + kohya("lora_unet_input_blocks_1_0_emb_layers_1", (1, 16), (8, 1))
        + kohya("lora_unet_middle_block_1_proj_in", (1, 8), (8, 1))
        + kohya("lora_te2_text_model_encoder_layers_0_self_attn_v_proj", (1, 4), (4, 1))),
    "peft.safetensors": safetensors(
        peft("unet." + ATTN2_K, (2, 4), (8, 2)) + peft("text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj", (1, 4), (4, 1)),
        {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.alpha_pattern": {"attn2.to_k": 2},
                                              "text_encoder_2.lora_alpha": 1, "text_encoder_2.use_rslora": True})}),
    "tucker.safetensors": safetensors(kohya("lora_unet_down_blocks_0_resnets_0_conv1", (2, 8, 3, 3), (8, 2, 1, 1))
                                      + [("lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", "F32", (2, 2, 3, 3), np.zeros(36))]),
    "missing_up.safetensors": safetensors([("unet.mid_block.attentions.0.proj_in.lora_A.weight", "F32", (1, 8), np.ones(8))]),
    "alpha_vector.safetensors": safetensors(kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", (2, 4), (4, 2))
                                            + [("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha", "F32", (2,), np.ones(2))]),
    "bad_pattern.safetensors": safetensors(peft("unet." + ATTN2_K, (2, 4), (8, 2)),
                                           {"lora_adapter_metadata": json.dumps({"unet.alpha_pattern": {"(": 2}})}),
    "wrong_shape.safetensors": safetensors(peft("unet." + ATTN2_K, (2, 5), (8, 2))),
}
for name, data in loras.items():
    out("lora", name, data)

# ---------------------------------------------------------------- images
def save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def noise(w, h, mode="RGB"):
    ch = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4, "LA": 2}[mode]
    a = rng.integers(0, 256, (h, w, ch), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if ch == 1 else a, mode)


out("image", "rgb.png", save(noise(16, 12), "PNG"))
out("image", "rgba.png", save(noise(12, 16, "RGBA"), "PNG"))
out("image", "gray.png", save(noise(8, 8, "L"), "PNG"))
g16 = Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16).astype(np.int32), "I").convert("I;16")
out("image", "gray16.png", save(g16, "PNG"))
out("image", "palette.png", save(noise(8, 8).convert("P"), "PNG"))


def png16_rgba(w, h):
    """A 16-bit RGBA PNG (Pillow does not write those)."""
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    px = rng.integers(0, 65536, (h, w * 4), dtype=np.uint16).astype(">u2").tobytes()
    rows = b"".join(b"\0" + px[y * w * 8:(y + 1) * w * 8] for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


out("image", "rgba16.png", png16_rgba(8, 4))
out("image", "one_pixel.png", save(noise(1, 1), "PNG"))
out("image", "baseline.jpg", save(noise(16, 16), "JPEG", quality=80))
out("image", "progressive.jpg", save(noise(16, 16), "JPEG", progressive=True))
out("image", "gray.jpg", save(noise(8, 8, "L"), "JPEG"))
out("image", "cmyk.jpg", save(noise(8, 8, "CMYK"), "JPEG"))
exif = Image.Exif()
exif[0x0112] = 6  # orientation: rotate 90
out("image", "exif_rotated.jpg", save(noise(16, 8), "JPEG", exif=exif.tobytes()))
frames = [noise(8, 8).convert("P") for _ in range(2)]
out("image", "animated.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0))
out("image", "rgb.bmp", save(noise(8, 8), "BMP"))
out("image", "rgb.tiff", save(noise(8, 8), "TIFF"))
out("image", "lossless.webp", save(noise(8, 8), "WEBP", lossless=True))
out("image", "lossy.webp", save(noise(8, 8, "RGBA"), "WEBP", quality=50))
png = save(noise(16, 16), "PNG")
out("image", "truncated.png", png[: len(png) // 2])
