#!/usr/bin/env python3
"""LPIPS fixtures: a seeded random-weight LPIPS (SqueezeNet 1.1 backbone) and torchmetrics references.

Writes (deterministically, offline):

  tests/fixtures/tiny-lpips/lpips-squeeze.safetensors
        the weights of torchmetrics' `_LPIPS(net="squeeze")`: the real SqueezeNet 1.1 `features`
        (50 tensors `net.slices.{s}.{i}.weight/bias`, `...{i}.{squeeze,expand1x1,expand3x3}.*`) and the
        seven LPIPS heads `lin{k}.model.1.weight` [1, C, 1, 1]; 57 tensors, f16 (the seeded values are
        rounded to f16 first, so the file is lossless and every reference below uses the rounded values).
        No `lins.{k}.*` aliases (see below) and no scaling-layer buffers (they are not persistent).
  tests/fixtures/tiny-lpips/config.json
        {"net_type": "squeeze", "version": "0.1", "source": ...}: what a loader needs (the backbone) and
        where the weights came from; scripts/convert_metric_weights.py writes the same format.
  tests/fixtures/reference/lpips.safetensors, lpips.json
        per pair P in {pair_a, pair_b, pair_c, pair_d}:
          P/img0, P/img1   uint8 [H, W, 3]  the two images as PIL would give them (np.array(img))
          P/mask           f32 [H, W, 1]    0/1 background mask (pair_c only)
          P/lpips64        f64 [1]          the LPIPS value with model and inputs in float64
          P/lpips32        f32 [1]          the value exactly as PIE-Bench computes it (float32)
          P/layers64       f64 [7]          the seven spatially averaged per-layer terms (sum = lpips64)
          P/layers32       f32 [7]          the same in float32
        and, for pair_a/img0 (float32, layer-by-layer debugging):
          slices/input     f32 [1, 3, 64, 64]  the scaling layer's output ((x - shift) / scale)
          slices/relu1..7  f32 [1, C, h, w]    the 7 SqueezeNet slice outputs for that input

  Pairs: pair_a 64x64 (two smooth images, the second an "edit" of the first); pair_b 96x80 (H x W; not
  square, so an H/W swap shows); pair_c = pair_a's images times a 64x64x1 mask with a rectangle of
  zeros (PIE-Bench's background-only LPIPS); pair_d 70x58, the one size here where the ceil-mode max
  pools round up (64, 96x80 and PIE-Bench's 512 never do), so a floor-mode pool fails only on pair_d.

The metric is PIE-Bench's (cure-lab/PnPInversion `evaluation/matrics_calculator.py`, `calculate_lpips`):
`LearnedPerceptualImagePatchSimilarity(net_type='squeeze')` (torchmetrics, reduction "mean",
normalize=False) called as `lpips(pred * 2 - 1, gt * 2 - 1)` with
`pred = torch.tensor(np.array(img).astype(np.float32) / 255 [* mask]).permute(2, 0, 1).unsqueeze(0)`.
`lpips32` comes from that metric object, with the random weights loaded into its `.net` (its
construction is made offline by building torchvision's squeezenet1_1 without ImageNet weights), and is
checked to equal a direct `_LPIPS` call bit for bit.

Run after make_fixtures.py (it imports it for the seeding helper and the determinism settings):
    tests/reference/.venv/bin/python tests/reference/make_lpips.py
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchmetrics  # noqa: E402
import torchvision  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torchmetrics.functional.image.lpips import _LPIPS  # noqa: E402
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: E402

OUT = mf.FIX / "tiny-lpips"
WEIGHTS = OUT / "lpips-squeeze.safetensors"
REF_FILE = mf.REF / "lpips.safetensors"
REF_JSON = mf.REF / "lpips.json"

# The same description scripts/convert_metric_weights.py writes for the real weights.
CONFIG = {"net_type": "squeeze", "version": "0.1", "source": "random (tests/reference/make_lpips.py)"}
LAYER_CHANNELS = [64, 128, 256, 384, 384, 512, 512]  # _LPIPS.chns for "squeeze"

# Background mask of pair_c: 1 = kept, a rectangle of zeros (rows 16..39, columns 20..51) = "edited".
MASK_ROWS, MASK_COLS = (16, 40), (20, 52)


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------
def fixture_state(model: _LPIPS) -> dict:
    """The tensors written to the file: `state_dict()` minus the `lins.{k}.*` entries.

    `_LPIPS` keeps its heads both as attributes `lin0..lin6` and in the ModuleList `lins`, so its
    `state_dict()` names each head twice (64 entries for 57 tensors). The released LPIPS files
    (torchmetrics' `lpips_models/squeeze.pth`) hold only `lin{k}.model.1.weight`; so does this one.
    """
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("lins.")}


@torch.no_grad()
def randomize_lpips(model: _LPIPS):
    """Seeded values of a trained model's scale, per parameter name (independent of build order).

    Convs: kaiming-uniform (U(-b, b), b = sqrt(6 / fan_in), torchvision's SqueezeNet init), so the
    ReLU activations stay O(1) through all 25 convs (checked in `check_activations`); biases
    U(-0.05, 0.05) (torchvision's init sets them to 0, which would hide a dropped bias). Heads:
    non-negative like trained LPIPS heads (which are clamped at 0 in training and have many exact
    zeros): max(0, U(-0.025, 0.1)), about 20 % zeros. Everything rounded to f16-representable values.
    """
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.startswith("lins."):
            continue  # the same tensors as lin0..lin6
        g = torch.Generator().manual_seed(mf.param_seed("lpips", name))
        u = torch.rand(p.shape, generator=g, dtype=torch.float64)
        if name.startswith("lin"):
            w = (0.125 * u - 0.025).clamp(min=0)
        elif p.ndim == 4:
            w = (2 * u - 1) * math.sqrt(6 / p[0].numel())
        else:
            w = 0.05 * (2 * u - 1)
        p.copy_(w.half().float())
    for k, v in model.state_dict().items():
        assert torch.equal(v, v.half().float()), k
    for k in range(7):  # the aliases really are the same tensors
        assert getattr(model, f"lin{k}").model[1].weight is model.lins[k].model[1].weight


def new_lpips() -> _LPIPS:
    # pretrained=False: no heads from torchmetrics' file; pnet_rand=True: torchvision builds
    # squeezenet1_1 with weights=None (no download). The architecture is the real one.
    return _LPIPS(pretrained=False, net="squeeze", pnet_rand=True)


@contextlib.contextmanager
def squeezenet_without_download():
    """torchmetrics' metric class always asks torchvision for the ImageNet weights (a download from
    download.pytorch.org); build the architecture without them instead. The weights are replaced anyway."""
    orig = torchvision.models.squeezenet1_1

    def offline(*args, weights=None, **kwargs):
        return orig(*args, weights=None, **kwargs)

    torchvision.models.squeezenet1_1 = offline
    try:
        yield
    finally:
        torchvision.models.squeezenet1_1 = orig


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def smooth_field(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """[H, W, 3] float64, roughly in [-2, 2]: upsampled 5x5 noise plus low-frequency sinusoids
    (1..4 cycles per image), so the network sees structure rather than white noise."""
    low = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64)
    f = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=True)[0]
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, h, dtype=torch.float64), torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij"
    )
    for c in range(3):
        for _ in range(3):
            fy, fx, ph, amp = torch.rand(4, generator=g, dtype=torch.float64).tolist()
            f[c] += (0.3 + 0.4 * amp) * torch.sin(2 * math.pi * ((1 + 3 * fy) * yy + (1 + 3 * fx) * xx) + 6.283 * ph)
    return f.permute(1, 2, 0)


def to_uint8(f: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.round(255 * (0.5 + 0.5 * np.tanh(0.7 * f.numpy()))), 0, 255).astype(np.uint8))


def image_pair(seed: int, h: int, w: int):
    """A source image and an "edited" version of it (the same field plus a second smooth field)."""
    g = torch.Generator().manual_seed(seed)
    a, b = smooth_field(g, h, w), smooth_field(g, h, w)
    return to_uint8(a), to_uint8(a + 0.6 * b)


def pie_input(img: np.ndarray, mask: np.ndarray | None, dtype) -> torch.Tensor:
    """PnPInversion's `calculate_lpips` preprocessing, in `dtype`: [1, 3, H, W] in [-1, 1]."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    x = img.astype(np_dtype) / 255
    if mask is not None:
        x = x * mask.astype(np_dtype)
    t = torch.tensor(x).permute(2, 0, 1).unsqueeze(0)
    return t * 2 - 1


# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def check_activations(model: _LPIPS, x: torch.Tensor) -> list:
    """Every slice output must be O(1): not all zero, not exploding."""
    rows = []
    for k, o in enumerate(model.net(model.scaling_layer(x))):
        o = o.double()
        dead = int((o.amax(dim=(0, 2, 3)) == 0).sum())
        row = dict(
            slice=f"relu{k + 1}",
            shape=list(o.shape),
            mean=round(float(o.mean()), 4),
            std=round(float(o.std()), 4),
            max=round(float(o.max()), 4),
            zero_fraction=round(float((o == 0).double().mean()), 4),
            dead_channels=dead,
        )
        mf.log(f"  {row['slice']} {row['shape']} mean {row['mean']:.3f} std {row['std']:.3f} "
               f"max {row['max']:.3f} zeros {row['zero_fraction']:.3f} dead channels {dead}")
        assert 0.1 < row["std"] < 10 and row["max"] < 100, f"{row['slice']}: activations out of O(1) range"
        assert dead < o.shape[1] // 2, f"{row['slice']}: most channels dead"
        rows.append(row)
    return rows


@torch.no_grad()
def main():
    OUT.mkdir(parents=True, exist_ok=True)
    mf.REF.mkdir(parents=True, exist_ok=True)
    mf.log(f"torch {torch.__version__}  torchvision {torchvision.__version__}  torchmetrics {torchmetrics.__version__}")

    # ---------------- weights ----------------
    model = new_lpips()
    randomize_lpips(model)
    state = fixture_state(model)
    assert len(state) == 57, len(state)
    save_file({k: v.half() for k, v in state.items()}, str(WEIGHTS))
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")

    # load the file back into a fresh model: the f16 file is lossless, and the 7 missing `lins.*`
    # names are the only gap (they alias lin0..lin6, which the file sets)
    model = new_lpips()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in load_file(str(WEIGHTS)).items()}, strict=False)
    assert sorted(missing) == [f"lins.{k}.model.1.weight" for k in range(7)] and not unexpected, (missing, unexpected)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    model.eval()
    model64 = new_lpips()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()

    # torchmetrics' metric object, as PIE-Bench builds it, with the random weights in its `.net`
    with squeezenet_without_download():
        metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
        metric64 = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
    for m in (metric, metric64):
        missing, unexpected = m.net.load_state_dict(state, strict=False)
        assert sorted(missing) == [f"lins.{k}.model.1.weight" for k in range(7)] and not unexpected
        assert all(torch.equal(m.net.state_dict()[k], v) for k, v in model.state_dict().items())
    metric64.set_dtype(torch.float64)  # Metric.double() is a no-op by design
    assert metric64.net.lin0.model[1].weight.dtype == torch.float64

    # ---------------- images ----------------
    a0, a1 = image_pair(101, 64, 64)
    b0, b1 = image_pair(102, 96, 80)
    d0, d1 = image_pair(104, 70, 58)
    mask = np.ones((64, 64, 1), dtype=np.float32)
    mask[MASK_ROWS[0] : MASK_ROWS[1], MASK_COLS[0] : MASK_COLS[1]] = 0
    pairs = {
        "pair_a": (a0, a1, None),
        "pair_b": (b0, b1, None),
        "pair_c": (a0, a1, mask),
        "pair_d": (d0, d1, None),
    }

    mf.log("activations (pair_a/img0, f32)")
    activations = check_activations(model, pie_input(a0, None, torch.float32))

    tensors = {}
    meta_pairs = {}
    for name, (i0, i1, m) in pairs.items():
        tensors[f"{name}/img0"] = torch.from_numpy(i0.copy())  # copies: pair_c reuses pair_a's arrays
        tensors[f"{name}/img1"] = torch.from_numpy(i1.copy())
        if m is not None:
            tensors[f"{name}/mask"] = torch.from_numpy(m)
        x0, x1 = pie_input(i0, m, torch.float32), pie_input(i1, m, torch.float32)
        y0, y1 = pie_input(i0, m, torch.float64), pie_input(i1, m, torch.float64)

        # what PIE-Bench gets: the metric object's forward (one call = that call's value), a 0-d tensor
        v32 = metric(x0, x1)
        v64 = metric64(y0, y1)
        assert v32.shape == () and v32.dtype == torch.float32 and v64.dtype == torch.float64
        # the same through _LPIPS directly, with the per-layer terms
        d32, layers32 = model(x0, x1, retperlayer=True)
        d64, layers64 = model64(y0, y1, retperlayer=True)
        assert torch.equal(d32.squeeze(), v32), (name, d32, v32)
        assert abs(float(d64.squeeze()) - float(v64)) <= 1e-15, (name, d64, v64)
        layers32 = torch.cat([t.reshape(1) for t in layers32])
        layers64 = torch.cat([t.reshape(1) for t in layers64])
        assert abs(float(layers64.sum()) - float(v64)) < 1e-14
        # LPIPS is symmetric, and bitwise so: (a - b)^2 == (b - a)^2
        assert torch.equal(model(x1, x0).squeeze(), v32)

        tensors[f"{name}/lpips64"] = v64.reshape(1)
        tensors[f"{name}/lpips32"] = v32.reshape(1)
        tensors[f"{name}/layers64"] = layers64
        tensors[f"{name}/layers32"] = layers32
        diff = abs(float(v32) - float(v64))
        shapes = [list(o.shape[2:]) for o in model.net(model.scaling_layer(x0))]
        meta_pairs[name] = dict(
            size_hw=list(i0.shape[:2]),
            slice_hw=shapes,
            masked=m is not None,
            lpips64=float(v64),
            lpips32=float(v32),
            abs_diff_f32_f64=diff,
            layers64=[float(t) for t in layers64],
            layers32=[float(t) for t in layers32],
            max_abs_diff_layers=float((layers32.double() - layers64).abs().max()),
        )
        mf.log(f"  {name} {list(i0.shape[:2])}{' masked' if m is not None else ''}: lpips64 {float(v64):.12f} "
               f"lpips32 {float(v32):.9f} |diff| {diff:.2e}")

    # pair_d's pools round up (ceil_mode=True): floor mode would give 16x13, 7x6, 3x2 here
    assert meta_pairs["pair_d"]["slice_hw"][1:4] == [[17, 14], [8, 7], [4, 3]], meta_pairs["pair_d"]["slice_hw"]

    # layer-by-layer debugging data: the scaling layer and the 7 slice outputs for pair_a/img0 (f32)
    x = model.scaling_layer(pie_input(a0, None, torch.float32))
    tensors["slices/input"] = x
    outs = model.net(x)
    xs = model64.scaling_layer(pie_input(a0, None, torch.float64))
    outs64 = model64.net(xs)
    slice_rel = []
    for k, (o, o64) in enumerate(zip(outs, outs64)):
        tensors[f"slices/relu{k + 1}"] = o
        slice_rel.append(float((o.double() - o64).norm() / o64.norm()))

    mf.save(tensors, REF_FILE)

    layer_shapes = {f"relu{k + 1}": list(o.shape) for k, o in enumerate(outs)}
    meta = {
        "description": "LPIPS (torchmetrics LearnedPerceptualImagePatchSimilarity, net_type='squeeze') of "
        "tests/fixtures/tiny-lpips/lpips-squeeze.safetensors, as PIE-Bench's calculate_lpips calls it. "
        "Made by tests/reference/make_lpips.py.",
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "torchmetrics": torchmetrics.__version__,
        },
        "weights": {
            "file": "tests/fixtures/tiny-lpips/lpips-squeeze.safetensors",
            "dtype": "F16 (lossless: the random values are f16-representable; the model runs in f32/f64)",
            "tensors": len(state),
            "parameters": int(sum(v.numel() for v in state.values())),
            "keys": sorted(state),
            "layer_channels": LAYER_CHANNELS,
        },
        "input": "x = np.array(img).astype(float32) / 255; x = x * mask (pair_c, mask [H, W, 1]); "
        "t = torch.tensor(x).permute(2, 0, 1).unsqueeze(0); metric(t0 * 2 - 1, t1 * 2 - 1). "
        "f64 values: the same steps in float64 from the uint8 pixels, model converted with .double() "
        "(its scaling-layer shift/scale are f32 constants widened to f64).",
        "pipeline": [
            "scaling layer: (x - shift) / scale, shift [-0.030, -0.088, -0.188], scale [0.458, 0.448, 0.450] "
            "(f32 constants)",
            "SqueezeNet 1.1 features in 7 slices: [conv 3x3 s2 (no padding) + relu], [maxpool 3 s2 ceil_mode, "
            "fire, fire], [maxpool, fire, fire], [maxpool, fire], [fire], [fire], [fire]; fire = relu(squeeze 1x1) "
            "-> concat(relu(expand1x1), relu(expand3x3 pad 1)) on channels, 1x1 first",
            "per slice: f / sqrt(1e-8 + sum_c f^2) (eps inside the sqrt), d = (f0 - f1)^2, "
            "head = 1x1 conv without bias (Dropout before it is inactive in eval), mean over H, W",
            "lpips = sum of the 7 terms; metric: .squeeze(), mean over the batch (one pair per call)",
        ],
        "pairs": meta_pairs,
        "mask": {"shape": [64, 64, 1], "zero_rows": list(MASK_ROWS), "zero_cols": list(MASK_COLS),
                 "meaning": "1 = background kept, 0 = edited region (rows/cols half-open ranges)"},
        "slices": {
            "image": "pair_a/img0, float32",
            "input_shape": list(x.shape),
            "shapes": layer_shapes,
            "rel_diff_f32_vs_f64": slice_rel,
        },
        "activation_check": activations,
        "keys": {
            "P/img0, P/img1": "uint8 [H, W, 3] (P = pair_a, pair_b, pair_c, pair_d)",
            "pair_c/mask": "f32 [64, 64, 1], 0/1",
            "P/lpips64": "f64 [1]",
            "P/lpips32": "f32 [1] (PIE-Bench's float32 value, from the torchmetrics metric object)",
            "P/layers64": "f64 [7] per-layer spatially averaged terms",
            "P/layers32": "f32 [7]",
            "slices/input": "f32 [1, 3, 64, 64] scaling-layer output for pair_a/img0",
            "slices/relu1..relu7": "f32 slice outputs for pair_a/img0, shapes in slices.shapes",
        },
    }
    REF_JSON.write_text(json.dumps(meta, indent=2) + "\n")
    for f in (WEIGHTS, OUT / "config.json", REF_FILE, REF_JSON):
        mf.log(f"  wrote {f.relative_to(mf.ROOT)} ({f.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
