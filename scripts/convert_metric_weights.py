#!/usr/bin/env python3
"""Converts the networks behind PIE-Bench's metrics into the safetensors folders `edict eval-edit` reads.

Run once, on a machine with internet and torch + torchvision + torchmetrics + safetensors installed
(for example the fixture venv: tests/reference/requirements.txt). Never needed in CI: the tests use
the random-weight fixtures of tests/reference/make_lpips.py (same format) and make_dino.py.

    python scripts/convert_metric_weights.py lpips OUT_DIR

  lpips   torchmetrics' LPIPS on SqueezeNet 1.1, which is what PIE-Bench's background LPIPS uses
          (`LearnedPerceptualImagePatchSimilarity(net_type='squeeze')`):
            OUT_DIR/lpips-squeeze.safetensors   f32, 57 tensors, keys as torchmetrics' `_LPIPS` names them:
                                                net.slices.{s}.{i}.* (torchvision squeezenet1_1().features,
                                                ImageNet weights, downloaded by torchvision from
                                                download.pytorch.org into torch's hub cache) and
                                                lin{0..6}.model.1.weight (the LPIPS v0.1 heads that ship
                                                inside the torchmetrics package, lpips_models/squeeze.pth)
            OUT_DIR/config.json                 {"net_type": "squeeze", "version": "0.1", "source": ...}
          Then:  edict eval-edit ... --lpips OUT_DIR

    python scripts/convert_metric_weights.py dino OUT_DIR

  dino    DINO ViT-B/8, the network of PIE-Bench's structure distance (PnPInversion's
          `torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`; torch.hub downloads the
          repository and the checkpoint
          https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth):
            OUT_DIR/dino-vitb8.safetensors      f32, 150 tensors, 85,807,872 parameters, keys exactly as
                                                DINO's `vit_base(patch_size=8, num_classes=0).state_dict()`:
                                                cls_token [1,1,768], pos_embed [1,785,768],
                                                patch_embed.proj.{weight [768,3,8,8], bias},
                                                blocks.{0..11}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
                                                mlp.fc2}.{weight, bias}, norm.{weight, bias} (no head: the
                                                hub model has num_classes=0)
            OUT_DIR/config.json                 {"model": "dino_vitb8", "patch_size": 8, "embed_dim": 768,
                                                 "depth": 12, "num_heads": 12, "source": ...}
          The file is 343 MB. Tests use random weights instead (tests/reference/make_dino.py).

It prints where each part came from and the sha256 of the written safetensors file.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
from pathlib import Path

LPIPS_WEIGHTS = "lpips-squeeze.safetensors"
LPIPS_CONFIG = "config.json"
LPIPS_VERSION = "0.1"  # the heads torchmetrics ships are LPIPS v0.1 (richzhang/PerceptualSimilarity)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def f32_state(model, skip: str) -> dict:
    """`model`'s state dict as contiguous CPU f32 tensors, without the keys starting with `skip`;
    a non-finite value is an error naming its tensor."""
    import torch

    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(skip):
            continue
        if not torch.isfinite(v).all():
            raise ValueError(f"{k}: non-finite values")
        state[k] = v.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    return state


# ----------------------------------------------------------------------------------------------
# lpips
# ----------------------------------------------------------------------------------------------
def lpips_state(model) -> dict:
    """The tensors of a torchmetrics `_LPIPS(net="squeeze")` to write, as contiguous f32.

    `_LPIPS` holds its heads twice (attributes `lin0..lin6` and the ModuleList `lins`), so its
    state_dict names every head twice; only `lin{k}.*` is kept, as in the LPIPS release files.
    The scaling layer's shift/scale are non-persistent buffers (constants in the Rust port).
    """
    if getattr(model, "pnet_type", None) != "squeeze":
        raise ValueError(f"expected an _LPIPS with net='squeeze', got {getattr(model, 'pnet_type', type(model))!r}")
    state = f32_state(model, skip="lins.")
    heads = [f"lin{k}.model.1.weight" for k in range(7)]
    missing = [k for k in heads if k not in state]
    if missing or len(state) != 57:
        raise ValueError(f"unexpected LPIPS state: {len(state)} tensors, missing {missing}")
    return state


def write_lpips(model, out_dir: Path, source: str) -> Path:
    """Writes OUT_DIR/lpips-squeeze.safetensors and OUT_DIR/config.json; returns the weights' path."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LPIPS_WEIGHTS
    save_file(lpips_state(model), str(path))  # no metadata: safetensors writes it in hash order
    config = {"net_type": "squeeze", "version": LPIPS_VERSION, "source": source}
    (out_dir / LPIPS_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def convert_lpips(args) -> None:
    import torch
    import torchmetrics
    import torchvision
    from torchmetrics.functional.image import lpips as tm_lpips

    weights = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    url = weights.url
    # the heads _LPIPS(pretrained=True) reads: lpips_models/squeeze.pth next to torchmetrics' lpips.py
    heads_path = Path(os.path.abspath(os.path.join(inspect.getfile(tm_lpips._LPIPS.__init__), "..", "lpips_models", "squeeze.pth")))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchmetrics {torchmetrics.__version__}")
    print(f"backbone: torchvision squeezenet1_1 ({weights}) from {url}")
    print(f"heads:    torchmetrics {torchmetrics.__version__} {heads_path}")
    if not heads_path.is_file():
        sys.exit(f"error: {heads_path} not found (is torchmetrics installed with its LPIPS models?)")

    # exactly what LearnedPerceptualImagePatchSimilarity(net_type='squeeze') builds (torchvision downloads
    # the ImageNet weights into its hub cache the first time)
    model = tm_lpips._LPIPS(pretrained=True, net="squeeze")

    # _LPIPS loads the heads with strict=False, which would hide a heads file that does not match:
    # compare them with the file itself
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    for k in range(7):
        key = f"lin{k}.model.1.weight"
        if key not in heads or not torch.equal(heads[key], model.state_dict()[key]):
            sys.exit(f"error: {key} was not loaded from {heads_path}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        digest = sha256(cached)
        # torchvision's file names carry the first 8 hex digits of the file's sha256
        expected = os.path.basename(url).rsplit("-", 1)[-1].split(".")[0]
        ok = "matches the name" if digest.startswith(expected) else f"DOES NOT match the name's {expected}"
        print(f"backbone file: {cached} sha256 {digest} ({ok})")

    source = (f"torchvision {torchvision.__version__} squeezenet1_1 {weights} ({url}); "
              f"LPIPS v{LPIPS_VERSION} heads from torchmetrics {torchmetrics.__version__} lpips_models/squeeze.pth")
    path = write_lpips(model, Path(args.out_dir), source)
    print(f"wrote {path} ({path.stat().st_size:,} bytes) sha256 {sha256(path)}")
    print(f"wrote {Path(args.out_dir) / LPIPS_CONFIG}")


# ----------------------------------------------------------------------------------------------
# dino
# ----------------------------------------------------------------------------------------------
DINO_HUB_REPO = "facebookresearch/dino:main"
DINO_MODEL = "dino_vitb8"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
DINO_WEIGHTS = "dino-vitb8.safetensors"
DINO_CONFIG = "config.json"
DINO_PATCH, DINO_DIM, DINO_DEPTH, DINO_HEADS = 8, 768, 12, 12


def dino_vitb8_keys() -> list:
    """(name, shape) of DINO's `vit_base(patch_size=8, num_classes=0).state_dict()`, in its order."""
    d, tokens = DINO_DIM, 1 + (224 // DINO_PATCH) ** 2
    keys = [("cls_token", (1, 1, d)), ("pos_embed", (1, tokens, d)),
            ("patch_embed.proj.weight", (d, 3, DINO_PATCH, DINO_PATCH)), ("patch_embed.proj.bias", (d,))]
    for i in range(DINO_DEPTH):
        b = f"blocks.{i}."
        keys += [(b + "norm1.weight", (d,)), (b + "norm1.bias", (d,)),
                 (b + "attn.qkv.weight", (3 * d, d)), (b + "attn.qkv.bias", (3 * d,)),
                 (b + "attn.proj.weight", (d, d)), (b + "attn.proj.bias", (d,)),
                 (b + "norm2.weight", (d,)), (b + "norm2.bias", (d,)),
                 (b + "mlp.fc1.weight", (4 * d, d)), (b + "mlp.fc1.bias", (4 * d,)),
                 (b + "mlp.fc2.weight", (d, 4 * d)), (b + "mlp.fc2.bias", (d,))]
    return keys + [("norm.weight", (d,)), ("norm.bias", (d,))]


def dino_state(model) -> dict:
    """The tensors of DINO's ViT-B/8 to write, as contiguous f32, under DINO's own names.

    Any `head.*` tensor is left out (the hub model has num_classes=0, so there is none); everything
    else must be exactly the 150 tensors of `dino_vitb8_keys()`, with those shapes.
    """
    state = f32_state(model, skip="head.")
    expected = dino_vitb8_keys()
    got = [(k, tuple(v.shape)) for k, v in state.items()]
    if got != expected:
        missing = [k for k, _ in expected if k not in state]
        unexpected = [k for k in state if k not in dict(expected)]
        wrong = [(k, s, tuple(state[k].shape)) for k, s in expected if k in state and tuple(state[k].shape) != s]
        raise ValueError(f"not DINO ViT-B/8's state: missing {missing}, unexpected {unexpected}, wrong shapes {wrong}")
    return state


def write_dino(model, out_dir: Path, source: str) -> Path:
    """Writes OUT_DIR/dino-vitb8.safetensors and OUT_DIR/config.json; returns the weights' path."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DINO_WEIGHTS
    save_file(dino_state(model), str(path))
    config = {"model": DINO_MODEL, "patch_size": DINO_PATCH, "embed_dim": DINO_DIM, "depth": DINO_DEPTH,
              "num_heads": DINO_HEADS, "source": source}
    (out_dir / DINO_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def convert_dino(args) -> None:
    import torch

    print(f"torch {torch.__version__}")
    print(f"model:      torch.hub.load({DINO_HUB_REPO!r}, {DINO_MODEL!r}) (hub dir {torch.hub.get_dir()})")
    print(f"checkpoint: {DINO_URL}")
    # exactly what PIE-Bench's VitExtractor builds: torch.hub downloads the repository's main branch and
    # the checkpoint (into <hub dir>/checkpoints) the first time; hubconf loads it with strict=True
    model = torch.hub.load(DINO_HUB_REPO, DINO_MODEL)
    model.eval()

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(DINO_URL)
    if cached.is_file():
        print(f"checkpoint file: {cached} sha256 {sha256(cached)}")
        ckpt = torch.load(cached, map_location="cpu", weights_only=True)
        sd = model.state_dict()
        differ = [k for k in sd if k not in ckpt or not torch.equal(ckpt[k].to(sd[k].dtype), sd[k])]
        if differ:
            sys.exit(f"error: the model's weights are not the checkpoint's: {differ[:5]}")
    else:
        print(f"warning: {cached} not found (a different hub cache?); not compared with the checkpoint")

    source = f"torch.hub {DINO_HUB_REPO} {DINO_MODEL} ({DINO_URL})"
    path = write_dino(model, Path(args.out_dir), source)
    print(f"wrote {path} ({path.stat().st_size:,} bytes) sha256 {sha256(path)}")
    print(f"wrote {Path(args.out_dir) / DINO_CONFIG}")


# ----------------------------------------------------------------------------------------------
# command line: one subcommand per metric network
# ----------------------------------------------------------------------------------------------
SUBCOMMANDS = {
    # name: (help, function)
    "lpips": ("LPIPS v0.1 on SqueezeNet 1.1 (torchmetrics; PIE-Bench's background LPIPS)", convert_lpips),
    "dino": ("DINO ViT-B/8 (torch.hub facebookresearch/dino:main dino_vitb8; PIE-Bench's structure distance)",
             convert_dino),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert the networks of PIE-Bench's metrics (downloaded by torchvision/torchmetrics/torch.hub) "
        "into safetensors folders for `edict eval-edit`.",
        epilog="Needs torch, torchvision, torchmetrics, safetensors and internet; run once, not in CI.",
    )
    sub = parser.add_subparsers(dest="metric", required=True, metavar="METRIC")
    for name, (help_text, func) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
