#!/usr/bin/env python3
"""PIE-Bench structure-distance fixtures: DINO ViT-B/8 with seeded random weights, and references.

PIE-Bench's "structure distance" (cure-lab/PnPInversion `evaluation/matrics_calculator.py`,
`MetricsCalculator.calculate_structure_distance` -> `LossG.calculate_global_ssim_loss`) is the mean
squared difference of the two images' self-similarity matrices of the layer-11 attention *keys* of
DINO ViT-B/8 (`torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`). No weight file is
written: the Rust side regenerates the same random weights from `random_values` below (bit-exact),
and `scripts/convert_metric_weights.py dino OUT_DIR` converts the real ones.

Writes (deterministically, offline) tests/fixtures/reference/dino.safetensors and dino.json:

  generator/<key>        f32 [8]          the first 8 values of `random_values(7, key, shape)` for
                                          cls_token, pos_embed, patch_embed.proj.weight/.bias,
                                          blocks.0.norm1.weight/.bias, blocks.3.mlp.fc1.bias,
                                          blocks.11.attn.qkv.weight, norm.weight (every branch of the
                                          generator: rank 3 and 4, rank 2, norm weight, bias); dino.json
                                          has their bits in hex and the sha256 of each whole tensor
  P/img0, P/img1         uint8 [H, W, 3]  P = pair_a (256x256: the Resize downscales, so its antialias
                                          filter acts) and pair_b (96x96: upscaled); img0 is the source,
                                          img1 the "edit" (the first plus another smooth field)
  pair_a/resized0        f32 [3, 224, 224] global_transform(img0) as the metric computes it in float32:
                                          Resize(224, max_size=480) then Normalize(ImageNet mean, std)
  P/resized0_sum         f64 [3]          per-channel sums of that f32 tensor (pair_b's whole tensor is
                                          Normalize(resize/up_out), checked here bit for bit)
  P/keys0_head           f64 [4, 768]     layer-11 keys of img0's first 4 tokens (CLS, patches 0..2),
                                          heads concatenated (the row layout of `concatenated_keys`)
  P/sim_rows0            f64 [4, 785]     the first 4 rows of img0's key self-similarity matrix
  P/distance64           f64 [1]          the structure distance in float64: pixels -> float64 -> Resize
                                          and Normalize in float64 -> float64 model (fully f64)
  P/distance32           f32 [1]          the distance exactly as the benchmark computes it (float32)
  resize/nonsquare_out   f32 [3, 224, 238] Resize(224, max_size=480) alone of pair_a/img0 rows 0..239
                                          (240x256 -> short side 224, long int(224*256/240) = 238)
  resize/up_out          f32 [3, 224, 224] Resize alone of pair_b/img0 (96x96, upscale)
  unit/tokens            f32 [13, 2, 768] a model-only check on an O(1) input (see below): tokens 0 (CLS)
                                          and 1 after the embedding (cls + pos_embed), then after each of
                                          the 12 blocks (computed in f64, stored f32)
  unit/keys_head64       f64 [4, 768]     layer-11 keys of the first 4 tokens for that input
  unit/sim_rows64        f64 [4, 785]     the first 4 rows of its key self-similarity matrix

  dino.json: versions, model (configuration, the 150 keys), generator (algorithm, samples), metric (the
  steps), resize (the interpolate call, the size rule with examples, the antialias algorithm and its
  numpy re-implementation's agreement), pairs (distances, f32-vs-f64 differences, two cheap
  sensitivities), unit, activations (std after the embedding and each block), keys (this table).

  The `unit` input is u = f32(f32(pair_a/resized0 / 255) - 2), elementwise in float32, [1, 3, 224, 224]
  (mean 0.3, std 1.2; like DINO's own preprocessing, which divides by 255). The benchmark feeds
  0..255 pixels that are *not* divided by 255, so its patch embeddings have std ~660 and the 12
  blocks, which add O(1) each, move the distance by only ~1.4e-3: it cannot see the position
  embedding at all (0 change in f32) nor GELU/LayerNorm-eps details (8e-8); see `--sensitivity` and
  dino.json -> pairs.*.rel_change_of_distance64_if. On `u` the blocks dominate (skipping them
  changes the similarity rows by 89 %, dropping pos_embed by 9e-4), so `unit/*` checks the
  transformer itself.

The metric, as the benchmark runs it (evaluate.py calls calculate_structure_distance(src, tgt)):
  img = np.array(pil).astype(np.float32)                       # 0..255, no / 255
  x = torch.from_numpy(np.transpose(img, (2, 0, 1))).unsqueeze(0)
  for a, b in zip(src, tgt):                                    # the batch of one
      a = Normalize(mean, std)(Resize(224, max_size=480)(a))     # torchvision, on [3, H, W] tensors
      keys = qkv output of blocks[11].attn.qkv (hook) for a[None]: [1, N, 2304]
              .reshape(N, 3, 12, 64).permute(1, 2, 0, 3)[1]     # [12, N, 64]
      ck = keys.transpose(0, 1).reshape(N, 768)                 # heads concatenated per token
      sim = (ck @ ck.T) / clamp(|ck| |ck|^T, min=1e-8)          # [1, N, N]
      loss += F.mse_loss(sim_b, sim_a)                          # mean over N*N, N = 785 for 224x224
The model is implemented with timm's VisionTransformer, which has DINO's structure and state-dict
names exactly (150 tensors, 85,807,872 parameters). It was checked once against DINO's own
`vision_transformer.py` (facebookresearch/dino 7c446df, `vit_base(patch_size=8, num_classes=0)`),
both loaded with these weights: the block-11 qkv hook outputs are bit-identical in float32 and
float64 (max |difference| 0.0) with timm's fused attention turned off, which this script does
(timm's unfused path scales q by 1/8 before q @ k^T, DINO scales the product: exact either way,
1/8 being a power of two).

Run after make_fixtures.py (it imports make_fixtures for the determinism settings and make_lpips
for the smooth test images):
    tests/reference/.venv/bin/python tests/reference/make_dino.py                # ~40 s on 1 thread
    tests/reference/.venv/bin/python tests/reference/make_dino.py --sensitivity  # also prints how much
        # the references move under plausible porting mistakes (~80 s more; writes nothing more)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import make_lpips  # noqa: E402  (smooth_field / image_pair, the images of the LPIPS fixtures)
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.transforms.functional import _compute_resized_output_size  # noqa: E402

REF_FILE = mf.REF / "dino.safetensors"
REF_JSON = mf.REF / "dino.json"

SEED = 7
PATCH, DIM, DEPTH, HEADS, MLP = 8, 768, 12, 12, 3072
IMG = 224
TOKENS = 1 + (IMG // PATCH) ** 2  # 785
LAYER = 11
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESIZE, MAX_SIZE = 224, 480  # LossG: Resize(cfg['dino_global_patch_size'] = 224, max_size=480)
GENERATOR_SAMPLES = [
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "blocks.0.norm1.weight",
    "blocks.0.norm1.bias",
    "blocks.3.mlp.fc1.bias",
    "blocks.11.attn.qkv.weight",
    "norm.weight",
]
NONSQUARE_ROWS = 240  # resize/nonsquare_out: pair_a/img0[:240] (240 x 256)


# ----------------------------------------------------------------------------------------------
# the random weights (bit-exact numpy port of the Rust generator)
# ----------------------------------------------------------------------------------------------
def dino_keys() -> list:
    """(name, shape) of DINO's `vit_base(patch_size=8, num_classes=0).state_dict()`, in its order."""
    keys = [
        ("cls_token", (1, 1, DIM)),
        ("pos_embed", (1, TOKENS, DIM)),
        ("patch_embed.proj.weight", (DIM, 3, PATCH, PATCH)),
        ("patch_embed.proj.bias", (DIM,)),
    ]
    for i in range(DEPTH):
        b = f"blocks.{i}."
        keys += [
            (b + "norm1.weight", (DIM,)),
            (b + "norm1.bias", (DIM,)),
            (b + "attn.qkv.weight", (3 * DIM, DIM)),
            (b + "attn.qkv.bias", (3 * DIM,)),
            (b + "attn.proj.weight", (DIM, DIM)),
            (b + "attn.proj.bias", (DIM,)),
            (b + "norm2.weight", (DIM,)),
            (b + "norm2.bias", (DIM,)),
            (b + "mlp.fc1.weight", (MLP, DIM)),
            (b + "mlp.fc1.bias", (MLP,)),
            (b + "mlp.fc2.weight", (DIM, MLP)),
            (b + "mlp.fc2.bias", (DIM,)),
        ]
    keys += [("norm.weight", (DIM,)), ("norm.bias", (DIM,))]
    return keys


def fnv1a(key: str, seed: int) -> int:
    h = 0xCBF29CE484222325 ^ seed
    for b in key.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def random_values(seed: int, key: str, shape) -> np.ndarray:
    """The Rust generator, bit for bit: f32 values that depend only on (seed, key, shape).

    state = FNV-1a(key bytes) started from 0xcbf29ce484222325 ^ seed; value i (0-based) is SplitMix64
    of state + (i + 1) * 0x9E3779B97F4A7C15 (wrapping), u = ((z >> 40) as f32 / 2^24 * 2 - 1) * sqrt(3)
    (unit variance, f32 arithmetic left to right), then center + scale * u in f32 with
      rank 1 and key '<...>.<m>.weight' with "norm" in <m>:  (1, 0.1)       LayerNorm gammas
      rank >= 2:                                            (0, 1/sqrt(prod(shape[1:])))  (f32 sqrt)
      otherwise (biases, rank 0):                           (0, 0.05)
    Checked once against the Rust function itself (compiled with rustc 1.95, -O): all 85,807,872 values
    of the 150 tensors, and a rank-0 tensor, are bit-identical. numpy's float32 ufuncs are single IEEE
    operations (never contracted into an FMA), as Rust's f32 arithmetic is.
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    u64 = np.uint64
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=u64)
        z *= u64(0x9E3779B97F4A7C15)
        z += u64(fnv1a(key, seed))
        z ^= z >> u64(30)
        z *= u64(0xBF58476D1CE4E5B9)
        z ^= z >> u64(27)
        z *= u64(0x94D049BB133111EB)
        z ^= z >> u64(31)
    f = np.float32
    u = (z >> u64(40)).astype(f)  # < 2^24: exact
    u /= f(1 << 24)
    u *= f(2)
    u -= f(1)
    u *= np.sqrt(f(3))
    parts = key.rsplit(".")
    norm_weight = len(shape) == 1 and key.endswith(".weight") and len(parts) >= 2 and "norm" in parts[-2]
    if len(shape) == 1 and norm_weight:
        center, scale = f(1.0), f(0.1)
    elif len(shape) >= 2:
        center, scale = f(0.0), f(1) / np.sqrt(f(math.prod(shape[1:])))
    else:
        center, scale = f(0.0), f(0.05)
    u *= scale
    u += center
    assert u.dtype == np.float32
    return u.reshape(shape)


def random_state(seed: int = SEED) -> dict:
    return {k: torch.from_numpy(random_values(seed, k, s)) for k, s in dino_keys()}


# ----------------------------------------------------------------------------------------------
# the model: timm's VisionTransformer in DINO's vit_base(patch_size=8) configuration
# ----------------------------------------------------------------------------------------------
def build_vit(state: dict) -> VisionTransformer:
    model = VisionTransformer(
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=0,
        class_token=True,
        global_pool="token",
        weight_init="skip",  # every parameter is overwritten below
    )
    for blk in model.blocks:
        blk.attn.fused_attn = False  # DINO's explicit softmax(q k^T * scale) v (SDPA rounds differently)
        assert isinstance(blk.mlp.act, torch.nn.GELU) and blk.mlp.act.approximate == "none"
    sd = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == dino_keys(), "timm's names/shapes differ from DINO's"
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# the metric, mirrored from PnPInversion (VitExtractor, LossG, MetricsCalculator)
# ----------------------------------------------------------------------------------------------
def global_transform():
    """LossG.global_transform: Compose([Resize(224, max_size=480), Normalize(ImageNet mean, std)])."""
    return transforms.Compose([transforms.Resize(RESIZE, max_size=MAX_SIZE), transforms.Normalize(MEAN, STD)])


def attn_cosine_sim(x, eps=1e-08):
    x = x[0]  # TEMP: getting rid of redundant dimension, TBF  (sic, as in PnPInversion)
    norm1 = x.norm(dim=2, keepdim=True)
    factor = torch.clamp(norm1 @ norm1.permute(0, 2, 1), min=eps)
    sim_matrix = (x @ x.permute(0, 2, 1)) / factor
    return sim_matrix


class VitExtractor:
    """What `get_keys_self_sim_from_input` uses of PnPInversion's VitExtractor: forward hooks on every
    block's attn.qkv, one full forward pass, the qkv output of the requested block. Every call is
    appended to `trace` (input, keys, sim) for the references."""

    def __init__(self, model, trace: list | None = None):
        self.model = model
        self.trace = trace if trace is not None else []

    def get_qkv_feature_from_input(self, input_img):
        outputs = []
        handles = [blk.attn.qkv.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in self.model.blocks]
        try:
            self.model(input_img)
        finally:
            for h in handles:
                h.remove()
        return outputs

    def get_keys_from_input(self, input_img, layer_num):
        qkv = self.get_qkv_feature_from_input(input_img)[layer_num]
        b, c, h, w = input_img.shape
        patch_num = 1 + (h // PATCH) * (w // PATCH)
        return qkv.reshape(patch_num, 3, HEADS, DIM // HEADS).permute(1, 2, 0, 3)[1]

    def get_keys_self_sim_from_input(self, input_img, layer_num):
        keys = self.get_keys_from_input(input_img, layer_num=layer_num)
        h, t, d = keys.shape
        concatenated_keys = keys.transpose(0, 1).reshape(t, h * d)
        ssim_map = attn_cosine_sim(concatenated_keys[None, None, ...])
        self.trace.append(dict(input=input_img, keys=concatenated_keys, sim=ssim_map))
        return ssim_map


def calculate_global_ssim_loss(extractor, transform, outputs, inputs):
    loss = 0.0
    for a, b in zip(inputs, outputs):  # avoid memory limitations
        a = transform(a)
        b = transform(b)
        target_keys_self_sim = extractor.get_keys_self_sim_from_input(a.unsqueeze(0), layer_num=LAYER)
        keys_ssim = extractor.get_keys_self_sim_from_input(b.unsqueeze(0), layer_num=LAYER)
        loss += F.mse_loss(keys_ssim, target_keys_self_sim)
    return loss


def calculate_structure_distance(extractor, img_pred, img_gt, np_dtype=np.float32):
    """MetricsCalculator.calculate_structure_distance without masks; np_dtype float32 is the benchmark,
    float64 the double-precision reference (the same steps on float64 tensors)."""
    img_pred = np.array(img_pred).astype(np_dtype)
    img_gt = np.array(img_gt).astype(np_dtype)
    assert img_pred.shape == img_gt.shape, "Image shapes should be the same."
    img_pred = torch.from_numpy(np.transpose(img_pred, axes=(2, 0, 1)))
    img_gt = torch.from_numpy(np.transpose(img_gt, axes=(2, 0, 1)))
    img_pred = torch.unsqueeze(img_pred, 0)
    img_gt = torch.unsqueeze(img_gt, 0)
    return calculate_global_ssim_loss(extractor, global_transform(), img_gt, img_pred)


# ----------------------------------------------------------------------------------------------
# Resize: torchvision's path, and an independent re-implementation to check its description
# ----------------------------------------------------------------------------------------------
def resize_output_size(h: int, w: int) -> list:
    """Resize(224, max_size=480)'s size rule (torchvision _compute_resized_output_size), in integers."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = RESIZE, (RESIZE * long) // short  # int(224 * long / short): the same here
    if new_long > MAX_SIZE:
        new_short, new_long = (MAX_SIZE * new_short) // new_long, MAX_SIZE
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return [new_h, new_w]


def aa_axis(n_in: int, n_out: int, f32: bool):
    """ATen's _compute_indices_min_size_weights_aa for the bilinear (triangle) filter, align_corners=False.

    f64: scale = in/out; support = scale if scale >= 1 else 1; invscale = 1/scale if scale >= 1 else 1;
    center = scale * (i + 0.5); xmin = max(int(center - support + 0.5), 0);
    xsize = min(int(center + support + 0.5), in) - xmin; w_j = max(0, 1 - |(j + xmin - center + 0.5) * invscale|),
    normalised by their sum. f32: the same with ATen's float/double promotions for scalar_t = float.
    """
    f = np.float32
    if f32:
        scale = f(n_in) / f(n_out)
        support = f(float(scale)) if scale >= 1.0 else f(1.0)
        invscale = f(1.0 / float(scale)) if scale >= 1.0 else f(1.0)
    else:
        scale = n_in / n_out
        support = scale if scale >= 1.0 else 1.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_interp = int(math.ceil(float(support))) * 2 + 1
    taps = []
    for i in range(n_out):
        if f32:
            center = f(float(scale) * (i + 0.5))
            xmin = max(int(float(center - support) + 0.5), 0)
            xsize = min(int(float(center + support) + 0.5), n_in) - xmin
        else:
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xsize = min(int(center + support + 0.5), n_in) - xmin
        xsize = min(max(xsize, 0), max_interp)
        ws, total = [], (f(0) if f32 else 0.0)
        for j in range(xsize):
            if f32:
                a = abs(f((float(f(f(j + xmin) - center)) + 0.5) * float(invscale)))
                w = f(1.0 - float(a)) if a < 1.0 else f(0)
            else:
                a = abs((j + xmin - center + 0.5) * invscale)
                w = 1.0 - a if a < 1.0 else 0.0
            ws.append(w)
            total = total + w
        if total != 0:
            ws = [w / total for w in ws]
        taps.append((xmin, ws))
    return taps


def aa_resize(x: np.ndarray, out_h: int, out_w: int, fma: bool) -> np.ndarray:
    """[C, H, W] -> [C, out_h, out_w]: the width pass first, then the height (an unchanged axis is
    skipped); out = src[xmin] * w_0, then out += src[xmin + j] * w_j in order (fma: fused, as ATen's
    AVX2/AVX512 float kernel is compiled; emulated by an exact f64 product-sum rounded once to f32)."""
    f32 = x.dtype == np.float32

    def one_pass(x, n_out, axis):
        taps = aa_axis(x.shape[axis], n_out, f32)
        shape = list(x.shape)
        shape[axis] = n_out
        y = np.empty(shape, x.dtype)
        for o, (xmin, ws) in enumerate(taps):
            acc = np.take(x, xmin, axis=axis) * ws[0]
            for j in range(1, len(ws)):
                src = np.take(x, xmin + j, axis=axis)
                if f32 and fma:
                    acc = (src.astype(np.float64) * np.float64(ws[j]) + acc.astype(np.float64)).astype(np.float32)
                else:
                    acc = acc + src * ws[j]
            idx = [slice(None)] * 3
            idx[axis] = o
            y[tuple(idx)] = acc
        return y

    if out_w != x.shape[2]:
        x = one_pass(x, out_w, 2)
    if out_h != x.shape[1]:
        x = one_pass(x, out_h, 1)
    return x


def metric_tensor(img: np.ndarray, np_dtype=np.float32) -> torch.Tensor:
    """[3, H, W] float tensor exactly as the metric hands it to the transform (a transposed numpy view)."""
    return torch.from_numpy(np.transpose(np.array(img).astype(np_dtype), axes=(2, 0, 1)))


def check_resize(images: dict) -> dict:
    """The sizes, and the interpolation re-derived independently (f64 to rounding; f32 bit for bit?)."""
    sizes = []
    for h, w in [(512, 512), (256, 256), (96, 96), (224, 224), (240, 256), (300, 200), (223, 224),
                 (480, 640), (40, 96), (500, 150), (1000, 300)]:
        out = _compute_resized_output_size((h, w), [RESIZE], MAX_SIZE)
        assert out == resize_output_size(h, w), (h, w, out)
        sizes.append({"in_hw": [h, w], "out_hw": out})
    rows = []
    resize = transforms.Resize(RESIZE, max_size=MAX_SIZE)
    for name, img in images.items():
        for np_dtype in (np.float64, np.float32):
            x = metric_tensor(img, np_dtype)
            t = resize(x).numpy()
            out_hw = resize_output_size(*img.shape[:2])
            assert list(t.shape[1:]) == out_hw
            xc = np.ascontiguousarray(x.numpy())
            row = {"image": name, "in_hw": list(img.shape[:2]), "out_hw": out_hw, "dtype": np.dtype(np_dtype).name}
            if np_dtype == np.float64:
                e = aa_resize(xc, *out_hw, fma=False)
                row["max_abs_diff"] = float(np.abs(t - e).max())
                assert row["max_abs_diff"] < 1e-11, row
            else:
                e = aa_resize(xc, *out_hw, fma=True)
                row["fma_bit_exact_fraction"] = float((t == e).mean())
                row["fma_max_abs_diff"] = float(np.abs(t - e).max())
                e = aa_resize(xc, *out_hw, fma=False)
                row["mul_add_bit_exact_fraction"] = float((t == e).mean())
                row["mul_add_max_abs_diff"] = float(np.abs(t - e).max())
                assert row["fma_max_abs_diff"] < 1e-3 and row["mul_add_max_abs_diff"] < 1e-3, row
                # contiguous or the metric's transposed view: the same bits
                assert torch.equal(resize(x), resize(x.contiguous()))
            rows.append(row)
    # antialias=True against plain bilinear: the same for upscaling (to rounding), not for downscaling
    aa_vs_plain = {}
    for name, img in images.items():
        x = metric_tensor(img, np.float64)[None]
        size = resize_output_size(*img.shape[:2])
        a = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        b = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        aa_vs_plain[name] = float((a - b).abs().max())
    return {"sizes": sizes, "reimplementation": rows, "antialias_vs_plain_bilinear_max_abs_diff_f64": aa_vs_plain}


# ----------------------------------------------------------------------------------------------
# activations, debugging tokens
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def record_tokens(model, store: list):
    """Appends, per forward pass, the [B, N, D] tensors after the embedding and after every block."""
    handles = [model.pos_drop.register_forward_hook(lambda m, i, o: store.append([o]))]
    handles += [blk.register_forward_hook(lambda m, i, o: store[-1].append(o)) for blk in model.blocks]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def token_stats(tokens: list, keys: torch.Tensor) -> dict:
    """std over the patch tokens and over the CLS token after the embedding and each block."""
    rows = []
    for k, t in enumerate(tokens):
        t = t[0].double()
        rows.append({
            "after": "embedding" if k == 0 else f"block {k - 1}",
            "patch_std": round(float(t[1:].std()), 4),
            "cls_std": round(float(t[0].std()), 4),
            "absmax": round(float(t.abs().max()), 2),
        })
    keys = keys.double()
    keys_stats = {"std": round(float(keys.std()), 4), "absmax": round(float(keys.abs().max()), 4)}
    return {"tokens": rows, "layer11_keys": keys_stats}


def check_sane(stats: dict, what: str):
    for r in stats["tokens"]:
        assert 0.01 < r["cls_std"] < 100 and 0.1 < r["patch_std"] < 1e4, (what, r)
        assert math.isfinite(r["absmax"]), (what, r)
    assert 0.1 < stats["layer11_keys"]["std"] < 10, (what, stats["layer11_keys"])


def layer11_sim(model, inp, variant: str = ""):
    """A hand-written forward to block 11's qkv (for the sensitivity study), with one deliberate change."""
    x = model.patch_embed(inp)
    if variant == "no pos_embed":
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    else:
        x = model._pos_embed(x)
    for blk in ([] if variant == "blocks 0..10 skipped" else model.blocks[:LAYER]):
        x = blk(x)
    qkv = model.blocks[LAYER].attn.qkv(model.blocks[LAYER].norm1(x))[0]
    n = qkv.shape[0]
    which = 0 if variant == "queries instead of keys" else 1
    k = qkv.reshape(n, 3, HEADS, DIM // HEADS).permute(1, 2, 0, 3)[which]
    ck = k.reshape(n, DIM) if variant == "heads not transposed" else k.transpose(0, 1).reshape(n, DIM)
    if variant == "no CLS token":
        ck = ck[1:]
    return attn_cosine_sim(ck[None, None])


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


@torch.no_grad()
def sensitivity(model, model64, pairs, u, unit_sim64):
    """Relative change of pair_a's distance (float32 benchmark path) and of the unit check (float64)
    under one porting mistake at a time; printed only (~1 minute)."""
    a0, a1 = pairs["pair_a"]
    tr = global_transform()
    x0, x1 = tr(metric_tensor(a0)).unsqueeze(0), tr(metric_tensor(a1)).unsqueeze(0)
    base = float(F.mse_loss(layer11_sim(model, x1), layer11_sim(model, x0)))
    ext = VitExtractor(model)
    hook_base = float(calculate_structure_distance(ext, a0, a1))
    assert base == hook_base, (base, hook_base)  # the hand-written forward is the model's
    assert rel(layer11_sim(model64, u.double())[0, :4], unit_sim64) == 0

    def models_with(change):
        m32, m64 = copy.deepcopy(model), copy.deepcopy(model64)
        for m in (m32, m64):
            for mod in m.modules():
                change(mod)
        return m32, m64

    def set_if(kind, attr, value):
        return lambda mod: setattr(mod, attr, value) if kind(mod) else None

    changes = {
        "attention scale 1 instead of 1/8": set_if(lambda m: hasattr(m, "fused_attn"), "scale", 1.0),
        "GELU tanh approximation": set_if(lambda m: isinstance(m, torch.nn.GELU), "approximate", "tanh"),
        "LayerNorm eps 1e-5": set_if(lambda m: isinstance(m, torch.nn.LayerNorm), "eps", 1e-5),
    }
    mf.log("sensitivity: relative change of pair_a/distance32 | of unit/sim_rows64 (f64)")

    def report(name, d, sim64):
        if sim64 is None:
            mf.log(f"  {name:38s} {(d - base) / base:+.2e}")
        else:
            mf.log(f"  {name:38s} {(d - base) / base:+.2e} | sim rows {rel(sim64[0, :4], unit_sim64):.2e}")

    for v in ["blocks 0..10 skipped", "no pos_embed", "queries instead of keys", "heads not transposed", "no CLS token"]:
        d = float(F.mse_loss(layer11_sim(model, x1, v), layer11_sim(model, x0, v)))
        report(v, d, layer11_sim(model64, u.double(), v) if v in ("blocks 0..10 skipped", "no pos_embed") else None)
    for name, change in changes.items():
        m32, m64 = models_with(change)
        d = float(F.mse_loss(layer11_sim(m32, x1), layer11_sim(m32, x0)))
        report(name, d, layer11_sim(m64, u.double()))
    no_aa = transforms.Compose([transforms.Resize(RESIZE, max_size=MAX_SIZE, antialias=False),
                                transforms.Normalize(MEAN, STD)])
    ys = [no_aa(metric_tensor(a)).unsqueeze(0) for a in (a0, a1)]
    d = float(F.mse_loss(layer11_sim(model, ys[1]), layer11_sim(model, ys[0])))
    report("Resize without antialias", d, None)
    scaled = [tr(metric_tensor(a) / 255).unsqueeze(0) for a in (a0, a1)]
    d = float(F.mse_loss(layer11_sim(model, scaled[1]), layer11_sim(model, scaled[0])))
    report("pixels / 255 (DINO's usual input)", d, None)
    # float64 reference with the Resize/Normalize done in float32 and then converted
    d64 = float(calculate_structure_distance(VitExtractor(model64), a0, a1, np.float64))
    ys = [tr(metric_tensor(a)).double().unsqueeze(0) for a in (a0, a1)]
    d64b = float(F.mse_loss(layer11_sim(model64, ys[1]), layer11_sim(model64, ys[0])))
    mf.log(f"  distance64, transform in f32 then converted vs fully f64: {(d64b - d64) / d64:+.2e} "
           f"({d64b:.15f} vs {d64:.15f})")


# ----------------------------------------------------------------------------------------------
def sha256_f32(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensitivity", action="store_true",
                        help="also print how much the references move under porting mistakes (~1 min more)")
    args = parser.parse_args()
    t_start = time.time()
    mf.REF.mkdir(parents=True, exist_ok=True)
    mf.log(f"torch {torch.__version__}  torchvision {torchvision.__version__}  timm {timm.__version__}  "
           f"cpu capability {torch.backends.cpu.get_cpu_capability()}")

    # ---------------- weights ----------------
    t = time.time()
    state = random_state(SEED)
    mf.log(f"generated {sum(v.numel() for v in state.values()):,} values in {time.time() - t:.1f} s")
    model = build_vit(state)
    model64 = copy.deepcopy(model).double()
    tensors = {f"generator/{k}": state[k].reshape(-1)[:8].clone() for k in GENERATOR_SAMPLES}
    generator_meta = {
        k: {
            "shape": list(state[k].shape),
            "first8_bits": [f"{b:08x}" for b in state[k].reshape(-1)[:8].numpy().view(np.uint32)],
            "first8": [float(v) for v in state[k].reshape(-1)[:8]],
            "sha256_f32le": sha256_f32(state[k].numpy()),
            "sum_f64": float(state[k].double().sum()),
        }
        for k in GENERATOR_SAMPLES
    }

    # ---------------- images ----------------
    pairs = {"pair_a": make_lpips.image_pair(201, 256, 256), "pair_b": make_lpips.image_pair(202, 96, 96)}
    a0 = pairs["pair_a"][0]
    resize = transforms.Resize(RESIZE, max_size=MAX_SIZE)
    normalize = transforms.Normalize(MEAN, STD)

    # ---------------- the metric, f32 (benchmark) and f64 ----------------
    meta_pairs = {}
    act = {}
    for name, (i0, i1) in pairs.items():
        tensors[f"{name}/img0"] = torch.from_numpy(i0.copy())
        tensors[f"{name}/img1"] = torch.from_numpy(i1.copy())
        trace32, trace64, tokens = [], [], []
        d32 = calculate_structure_distance(VitExtractor(model, trace32), i0, i1, np.float32)
        with record_tokens(model64, tokens):
            d64 = calculate_structure_distance(VitExtractor(model64, trace64), i0, i1, np.float64)
        assert d32.dtype == torch.float32 and d32.shape == () and d64.dtype == torch.float64
        # trace[0] is img0 (the source, `a` in the loop), trace[1] img1
        r32 = trace32[0]["input"][0]
        assert r32.shape == (3, IMG, IMG) and r32.dtype == torch.float32
        assert torch.equal(r32, normalize(resize(metric_tensor(i0))))
        # Normalize is (x - f32(mean)) / f32(std), one IEEE subtraction and division per value
        m32, s32 = np.float32(MEAN).reshape(3, 1, 1), np.float32(STD).reshape(3, 1, 1)
        assert np.array_equal(r32.numpy(), (resize(metric_tensor(i0)).numpy() - m32) / s32)
        if name == "pair_a":
            tensors["pair_a/resized0"] = r32.clone()
        else:
            # resize/up_out is pair_b's Resize output; Normalize of it is pair_b's resized0
            tensors["resize/up_out"] = resize(metric_tensor(i0)).clone()
            assert torch.equal(normalize(tensors["resize/up_out"]), r32)
        tensors[f"{name}/resized0_sum"] = r32.double().sum(dim=(1, 2))
        sim64, keys64 = trace64[0]["sim"], trace64[0]["keys"]
        assert sim64.shape == (1, TOKENS, TOKENS) and keys64.shape == (TOKENS, DIM)
        tensors[f"{name}/keys0_head"] = keys64[:4].clone()
        tensors[f"{name}/sim_rows0"] = sim64[0, :4].clone()
        tensors[f"{name}/distance64"] = d64.reshape(1)
        tensors[f"{name}/distance32"] = d32.reshape(1)
        # the benchmark's symmetric in its arguments, bit for bit ((x - y)^2 = (y - x)^2)
        assert torch.equal(F.mse_loss(trace32[0]["sim"], trace32[1]["sim"]), d32)
        act[name] = token_stats(tokens[0], keys64)
        check_sane(act[name], name)
        sim32, keys32 = trace32[0]["sim"], trace32[0]["keys"]
        meta_pairs[name] = dict(
            size_hw=list(i0.shape[:2]),
            resized_hw=[IMG, IMG],
            distance64=float(d64),
            distance32=float(d32),
            rel_diff_f32_f64=(float(d32) - float(d64)) / float(d64),
            rel_diff_keys_f32_f64=rel(keys32, keys64),
            rel_diff_sim_f32_f64=rel(sim32, sim64),
            sim_diagonal_max_abs_dev_from_1=float((torch.diagonal(sim64[0]) - 1).abs().max()),
            sim_min=float(sim64.min()),
        )
        skip = float(F.mse_loss(layer11_sim(model64, trace64[1]["input"], "blocks 0..10 skipped"),
                                layer11_sim(model64, trace64[0]["input"], "blocks 0..10 skipped")))
        no_cls = float(F.mse_loss(trace64[1]["sim"][:, 1:, 1:], trace64[0]["sim"][:, 1:, 1:]))
        meta_pairs[name]["rel_change_of_distance64_if"] = {
            "blocks 0..10 are skipped": sig3((skip - float(d64)) / float(d64)),
            "the CLS token is left out": sig3((no_cls - float(d64)) / float(d64)),
        }
        mf.log(f"  {name} {list(i0.shape[:2])}: distance64 {float(d64):.15f} distance32 {float(d32):.9f} "
               f"(rel {meta_pairs[name]['rel_diff_f32_f64']:+.1e}); blocks 0..10 skipped: "
               f"{meta_pairs[name]['rel_change_of_distance64_if']['blocks 0..10 are skipped']:+.1e}")

    # ---------------- Resize alone ----------------
    nonsquare = a0[:NONSQUARE_ROWS]
    tensors["resize/nonsquare_out"] = resize(metric_tensor(nonsquare)).clone()
    assert list(tensors["resize/nonsquare_out"].shape) == [3, 224, 238]
    resize_meta = check_resize({"pair_a/img0": a0, "pair_b/img0": pairs["pair_b"][0],
                                "pair_a/img0[:240]": nonsquare, "pair_b/img0[:40]": pairs["pair_b"][0][:40]})

    # ---------------- model-only check on an O(1) input ----------------
    u = torch.from_numpy(tensors["pair_a/resized0"].numpy() / np.float32(255) - np.float32(2)).unsqueeze(0)
    assert u.dtype == torch.float32
    trace64, trace32, tokens = [], [], []
    with record_tokens(model64, tokens):
        VitExtractor(model64, trace64).get_keys_self_sim_from_input(u.double(), LAYER)
    VitExtractor(model, trace32).get_keys_self_sim_from_input(u, LAYER)
    keys64, sim64 = trace64[0]["keys"], trace64[0]["sim"]
    tensors["unit/tokens"] = torch.stack([t[0, :2] for t in tokens[0]]).float()
    tensors["unit/keys_head64"] = keys64[:4].clone()
    tensors["unit/sim_rows64"] = sim64[0, :4].clone()
    act["unit"] = token_stats(tokens[0], keys64)
    check_sane(act["unit"], "unit")
    skip = layer11_sim(model64, u.double(), "blocks 0..10 skipped")
    unit_meta = dict(
        input="u = f32(f32(pair_a/resized0 / 255) - 2), [1, 3, 224, 224]",
        input_mean=float(u.double().mean()),
        input_std=float(u.double().std()),
        rel_diff_keys_f32_f64=rel(trace32[0]["keys"], keys64),
        rel_diff_sim_f32_f64=rel(trace32[0]["sim"], sim64),
        rel_change_of_sim_rows64_if_blocks_0_10_are_skipped=sig3(rel(skip[0, :4], sim64[0, :4])),
    )
    for name in ("pair_a", "unit"):
        mf.log(f"activations ({name}/img0, f64): " + ", ".join(
            f"{r['after']} patch std {r['patch_std']:.3f} cls {r['cls_std']:.3f}" for r in act[name]["tokens"][::3])
            + f"; layer-11 keys std {act[name]['layer11_keys']['std']:.3f}")

    # ---------------- write ----------------
    mf.save(tensors, REF_FILE)
    key_docs = {
        "generator/<key>": "f32 [8]: the first 8 values of random_values(7, key, shape); keys in generator",
        "P/img0, P/img1": "uint8 [H, W, 3] (P = pair_a 256x256, pair_b 96x96); img0 = source, img1 = edit",
        "pair_a/resized0": "f32 [3, 224, 224] Normalize(Resize(img0)) in float32, as the metric computes it",
        "P/resized0_sum": "f64 [3] per-channel sums of the f32 global_transform(img0)",
        "P/keys0_head": "f64 [4, 768] layer-11 keys (heads concatenated) of img0's tokens 0..3 (0 = CLS)",
        "P/sim_rows0": "f64 [4, 785] rows 0..3 of img0's key self-similarity matrix",
        "P/distance64": "f64 [1] structure distance, fully float64 (pixels, Resize, Normalize, model, mse)",
        "P/distance32": "f32 [1] structure distance exactly as the benchmark computes it (float32)",
        "resize/nonsquare_out": "f32 [3, 224, 238] Resize(224, max_size=480) of pair_a/img0 rows 0..239 (240x256)",
        "resize/up_out": "f32 [3, 224, 224] Resize(224, max_size=480) of pair_b/img0 (96x96); "
        "Normalize of it = pair_b's global_transform(img0), bit for bit",
        "unit/tokens": "f32 [13, 2, 768] tokens 0 and 1 after the embedding, then after blocks 0..11 (f64 run)",
        "unit/keys_head64": "f64 [4, 768] layer-11 keys of tokens 0..3 for the unit input",
        "unit/sim_rows64": "f64 [4, 785] rows 0..3 of its key self-similarity matrix",
    }
    meta = {
        "description": "PIE-Bench structure distance (DINO ViT-B/8 layer-11 key self-similarity, "
        "cure-lab/PnPInversion matrics_calculator.py) on a DINO ViT-B/8 with seeded random weights. "
        "Made by tests/reference/make_dino.py.",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
                     "numpy": np.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "model": {
            "name": "dino_vitb8 (facebookresearch/dino vision_transformer.vit_base(patch_size=8, num_classes=0))",
            "patch_size": PATCH, "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "mlp_hidden": MLP,
            "qkv_bias": True, "layer_norm_eps": 1e-6, "gelu": "exact (erf)", "img_size": IMG, "tokens": TOKENS,
            "pos_embed": "added after prepending CLS; interpolate_pos_encoding is the identity for a 28x28 grid",
            "block": "x = x + proj(softmax(q k^T / 8) v) on norm1(x); x = x + fc2(gelu(fc1(norm2(x))))",
            "qkv_layout": "qkv [N, 2304] = [3][12 heads][64]: keys = qkv.reshape(N, 3, 12, 64)[:, 1] -> [N, 12, 64] "
            "-> concatenated [N, 768] in head order",
            "implementation": "timm VisionTransformer (fused attention off), verified bit-identical (f32, f64) "
            "to DINO's vision_transformer.py at the block-11 qkv output",
            "parameters": int(sum(v.numel() for v in state.values())),
            "keys": [k for k, _ in dino_keys()],
        },
        "generator": {
            "seed": SEED,
            "key": "the DINO state-dict name",
            "algorithm": "state = FNV-1a(key) from 0xcbf29ce484222325 ^ seed; value i: SplitMix64 of "
            "state + (i+1)*0x9E3779B97F4A7C15; u = ((z >> 40) as f32 / 2^24 * 2 - 1) * sqrt(3); "
            "center + scale * u (f32): LayerNorm weights (1, 0.1), rank >= 2 (0, 1/sqrt(prod(shape[1:]))), "
            "else (0, 0.05)",
            "samples": generator_meta,
        },
        "metric": [
            "img = np.array(pil_image).astype(np.float32)  (0..255, not divided by 255)",
            "x = torch.from_numpy(np.transpose(img, (2, 0, 1))) [3, H, W]",
            "Resize(224, max_size=480): F.interpolate(x[None], size=[h, w], mode='bilinear', "
            "align_corners=False, antialias=True)[0] (skipped when [H, W] already equals the size)",
            "Normalize: (x - mean) / std per channel, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) "
            "as tensors of x's dtype (f32 constants in float32)",
            "qkv = blocks[11].attn.qkv output for x[None]; keys = qkv.reshape(N, 3, 12, 64).permute(1, 2, 0, 3)[1]",
            "ck = keys.transpose(0, 1).reshape(N, 768); sim = (ck ck^T) / clamp(|ck| |ck|^T, min=1e-8) [1, N, N]",
            "distance = F.mse_loss(sim(tgt), sim(src)): mean over N*N (evaluate.py passes (src, tgt); "
            "LossG then takes src as `a`, the target); symmetric",
        ],
        "resize": {
            "call": "torch.nn.functional.interpolate(img.unsqueeze(0), size=[new_h, new_w], mode='bilinear', "
            "align_corners=False, antialias=True).squeeze(0) (torchvision 0.29 _functional_tensor.resize; "
            "float32/float64 inputs are not cast; Resize's antialias defaults to True)",
            "size_rule": "short, long = sorted(H, W); new_short = 224; new_long = int(224 * long / short); "
            "if new_long > 480: new_short, new_long = int(480 * new_short / new_long), 480; the short side "
            "stays the short side; if [new_h, new_w] == [H, W] the image is returned unchanged",
            "antialias_algorithm": "separable, width pass first then height (a pass is skipped when that "
            "side is unchanged). Per axis (in -> out), scale = in/out, support = max(scale, 1), "
            "invscale = 1/max(scale, 1); for output i: center = scale*(i + 0.5), xmin = max(int(center - "
            "support + 0.5), 0), xsize = min(int(center + support + 0.5), in) - xmin, w_j = max(0, 1 - "
            "|(xmin + j - center + 0.5) * invscale|) for j < xsize, divided by their sum; out = sum_j "
            "w_j * src[xmin + j]. For upscaling this equals plain bilinear (align_corners=False, edge clamp) "
            "up to rounding. float32: ATen computes center, support, invscale and the weights in f32 with "
            "some products in f64 (see aa_axis in make_dino.py) and accumulates out = src[xmin]*w_0, then "
            "out = fma(src[xmin+j], w_j, out); that reproduces torch's f32 output bit for bit here "
            "(cpu capability in versions; a build without FMA would round differently)",
            **resize_meta,
        },
        "pairs": meta_pairs,
        "unit": unit_meta,
        "activations": {
            "note": "f64 runs of the img0s and of the unit input; std over the patch tokens' values and "
            "over the CLS token's 768 values after the embedding (cls + pos_embed) and after each block",
            **act,
        },
        "keys": key_docs,
    }
    REF_JSON.write_text(json.dumps(meta, indent=2) + "\n")
    for f in (REF_FILE, REF_JSON):
        mf.log(f"  wrote {f.relative_to(mf.ROOT)} ({f.stat().st_size:,} bytes)")
    mf.log(f"done in {time.time() - t_start:.0f} s")

    if args.sensitivity:
        sensitivity(model, model64, pairs, u, sim64[0, :4])


if __name__ == "__main__":
    main()
