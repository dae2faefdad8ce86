#!/usr/bin/env python3
"""LoRA files for the tiny seeded models, and the fused weights diffusers computes from them.

Builds, fully offline and deterministically, reusing make_fixtures.py (seeds, determinism settings)
and make_sdxl.py (the diffusers -> SGM UNet key mapping); it reads `tiny-sd/` and `tiny-sdxl/` and
rewrites nothing they write. Writes only:

  tests/fixtures/lora/sd-peft.safetensors     tiny-sd LoRA in diffusers/PEFT format (made with peft's
                                              LoraConfig + add_adapter, saved by save_lora_weights, f32,
                                              `lora_adapter_metadata` in the header): UNet r=4 alpha=2,
                                              text encoder r=2 alpha=4
  tests/fixtures/lora/sd-kohya.safetensors    the same values in kohya-ss (sd-scripts) format, f16:
                                              lora_unet_<diffusers path>, lora_te_<transformers path>
  tests/fixtures/lora/sdxl-kohya.safetensors  tiny-sdxl LoRA in kohya format with SGM UNet names
                                              (lora_unet_input_blocks_4_1_...), lora_te1_ / lora_te2_,
                                              f16 (alpha f32): UNet r=4 alpha=8, te1 r=2 alpha=1, te2 r=2 alpha=2
  tests/fixtures/lora/sdxl-peft.safetensors   the same SDXL values in diffusers/PEFT format, f16
  tests/fixtures/reference/lora.safetensors   f32 fused weights, one per kind of layer (its path with the
                                              numbers blanked; lora.json lists every changed weight), after
                                              pipe.load_lora_weights(file) + pipe.fuse_lora(
                                              components=<networks>, lora_scale=S) + unload_lora_weights(),
                                              keyed `<case>/<network folder>/<diffusers key>`, for the cases
                                              sd-kohya (S=0.7) and sdxl-kohya (S=1.0); sd-peft (0.7) and
                                              sdxl-peft (1.0) fuse to the same weights (asserted), so their
                                              reference is the kohya case's (`reference_case` in lora.json)
  tests/fixtures/reference/lora.json          per case: file, scale, reference_case, r / alpha / modules /
                                              changed weights (their keys) / max |fused - original| per network

Targets (every file): UNet to_q, to_k, to_v, to_out.0, proj_in, proj_out, ff.net.0.proj, ff.net.2,
conv1, conv2 (3x3 convs), time_emb_proj, conv_shortcut (1x1 conv); text encoders q_proj, k_proj,
v_proj, out_proj, fc1, fc2. diffusers 0.36's kohya converter maps all of them, SGM names included
(checked: after fusing, exactly the targeted weights change), so no module type is dropped.

All A/B values are seeded per (file family, network, key) and rounded to f16 first, so the f16 kohya
files and the f32 PEFT file hold identical values; the script asserts that the PEFT and kohya files
of a model fuse to the same weights (two independent diffusers readers agree), and that diffusers'
fused weights equal W + scale * alpha / r * (B @ A) computed here in f64 (3x3 convs: B[:, :, 0, 0]
@ A flattened over (in, kh, kw)).

Run:  tests/reference/.venv/bin/python tests/reference/make_lora.py      (after make_sdxl.py; see README.md)
      needs peft (pinned in requirements.txt); ~12 s

Re-running reproduces byte-identical files (checked by hashing the outputs; see README.md).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import make_sdxl as mx  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import peft  # noqa: E402

FIX, REF, log = mf.FIX, mf.REF, mf.log
LORA = FIX / "lora"
REF_FILE = REF / "lora.safetensors"
REF_JSON = REF / "lora.json"

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj", "conv_shortcut"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
LORA_B_GAIN = 0.3  # B ~ 0.3 N(0,1)/sqrt(r), A ~ N(0,1)/sqrt(fan_in): delta = 0.3 alpha/r x the weights' scale

# Per model: network folder -> (target modules, r, lora_alpha, kohya prefix). alpha/r differs per
# network (0.5, 2 / 2, 0.5, 1), so a loader that ignores alpha or takes one network's for all fails.
SD = {
    "unet": (UNET_TARGETS, 4, 2, "lora_unet"),
    "text_encoder": (TE_TARGETS, 2, 4, "lora_te"),
}
SDXL = {
    "unet": (UNET_TARGETS, 4, 8, "lora_unet"),
    "text_encoder": (TE_TARGETS, 2, 1, "lora_te1"),
    "text_encoder_2": (TE_TARGETS, 2, 2, "lora_te2"),
}
# case -> (model, file, lora_scale, the case whose stored weights are its reference). A model's PEFT and
# kohya files hold the same values and fuse to the same weights (asserted), so the fused weights are
# stored once per model, under the kohya case: storing both would double a 6 MB file for nothing.
CASES = {
    "sd-kohya": ("sd", "sd-kohya.safetensors", 0.7, "sd-kohya"),
    "sd-peft": ("sd", "sd-peft.safetensors", 0.7, "sd-kohya"),
    "sdxl-kohya": ("sdxl", "sdxl-kohya.safetensors", 1.0, "sdxl-kohya"),
    "sdxl-peft": ("sdxl", "sdxl-peft.safetensors", 1.0, "sdxl-kohya"),
}


# ----------------------------------------------------------------------------------------------
# pipelines
# ----------------------------------------------------------------------------------------------
def load(model: str):
    """A fresh float32 pipeline (tiny-sdxl has fp16 files only: f16-representable, so exact in f32)."""
    if model == "sd":
        return StableDiffusionPipeline.from_pretrained(
            str(FIX / "tiny-sd"), torch_dtype=torch.float32, local_files_only=True)
    return StableDiffusionXLPipeline.from_pretrained(
        str(FIX / "tiny-sdxl"), torch_dtype=torch.float32, variant="fp16", local_files_only=True)


def nets_of(model: str) -> dict:
    return SD if model == "sd" else SDXL


# ----------------------------------------------------------------------------------------------
# making the LoRA: peft adapters with seeded, f16-representable A and B
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def add_seeded_adapter(net: torch.nn.Module, targets, r: int, alpha: int, tag: str) -> dict:
    """add_adapter(LoraConfig) on `net`, then overwrite every lora_A/lora_B from a generator seeded by
    (tag, key): PEFT zero-initialises B, which would make the LoRA a no-op. Returns the PEFT state dict
    ({module}.lora_A.weight / .lora_B.weight, no adapter name), float32 holding f16 values."""
    net.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    for name, p in sorted(net.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        key = name.replace(".default.", ".")  # the key as saved, independent of the adapter name
        g = torch.Generator().manual_seed(mf.param_seed(tag, key))
        z = torch.randn(p.shape, generator=g, dtype=torch.float32)
        gain = LORA_B_GAIN if ".lora_B." in name else 1.0
        p.copy_((gain * z / p[0].numel() ** 0.5).half().float())  # f16 first: every file holds these values
    sd = get_peft_model_state_dict(net)
    assert sd and all(v.dtype == torch.float32 for v in sd.values())
    return {k: v.clone() for k, v in sorted(sd.items())}


def modules_of(lora: dict) -> list[str]:
    return sorted({k.rsplit(".lora_", 1)[0] for k in lora})


def make_lora(model: str) -> tuple[dict, dict]:
    """{network: PEFT state dict} and {network: LoraConfig dict} for one model."""
    pipe = load(model)
    loras, configs = {}, {}
    for folder, (targets, r, alpha, _) in nets_of(model).items():
        net = getattr(pipe, folder)
        loras[folder] = add_seeded_adapter(net, targets, r, alpha, f"lora_{model}_{folder}")
        cfg = net.peft_config["default"].to_dict()
        # diffusers writes sets as list(set): order by string hash, which changes between runs
        configs[folder] = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}
        configs[folder]["base_model_name_or_path"] = None  # transformers sets it to the folder's absolute path
        log(f"  {model} {folder}: r={r} alpha={alpha}, {len(modules_of(loras[folder]))} modules")
    return loras, configs


# ----------------------------------------------------------------------------------------------
# writing the files
# ----------------------------------------------------------------------------------------------
def save_peft(model: str, loras: dict, configs: dict, path: Path, dtype: torch.dtype):
    """diffusers' own writer (what a diffusers training script produces), renamed from
    pytorch_lora_weights.safetensors."""
    cls = StableDiffusionPipeline if model == "sd" else StableDiffusionXLPipeline
    kwargs = {}
    for folder in nets_of(model):
        kwargs[f"{folder}_lora_layers"] = {k: v.to(dtype) for k, v in loras[folder].items()}
        kwargs[f"{folder}_lora_adapter_metadata"] = configs[folder]
    with tempfile.TemporaryDirectory() as tmp:
        cls.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        shutil.move(str(Path(tmp) / "pytorch_lora_weights.safetensors"), str(path))
    sort_header_metadata(path)


def sort_header_metadata(path: Path):
    """safetensors serialises `__metadata__` from a Rust HashMap, whose key order ("format",
    "lora_adapter_metadata") changes from run to run. Rewrite the header with the keys sorted: same
    length, same tensors, byte-identical reruns."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    text = data[8:8 + n].decode()
    header = json.loads(text)
    # python's compact json reproduces safetensors' header bytes, so only the key order changes
    assert json.dumps(header, separators=(",", ":"), ensure_ascii=False) == text.rstrip(" ")
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(new) <= n
    path.write_bytes(data[:8] + new + b" " * (n - len(new)) + data[8 + n:])


def sgm_module_names(unet_config, modules: list[str]) -> dict:
    """diffusers UNet module path -> SGM path (make_sdxl.py's single-file mapping, on `<module>.weight`)."""
    sgm = mx.unet_to_sgm({m + ".weight": m for m in modules}, unet_config)
    out = {m: k[len("model.diffusion_model."):-len(".weight")] for k, m in sgm.items()}
    assert len(set(out.values())) == len(modules)
    return out


def save_kohya(model: str, loras: dict, path: Path, alpha_dtype: torch.dtype, unet_config=None):
    """kohya-ss names: <prefix>_<module path, '.' -> '_'>.{lora_down,lora_up}.weight (= A, B) in f16 and
    a 0-d .alpha. SDXL's UNet uses SGM paths (sd-scripts' own SDXL UNet); text encoders use
    transformers' paths."""
    out = {}
    for folder, (_, _, alpha, prefix) in nets_of(model).items():
        modules = modules_of(loras[folder])
        names = sgm_module_names(unet_config, modules) if unet_config is not None and folder == "unet" \
            else {m: m for m in modules}
        for m in modules:
            name = f"{prefix}_{names[m].replace('.', '_')}"
            assert name + ".alpha" not in out, name
            out[name + ".lora_down.weight"] = loras[folder][m + ".lora_A.weight"].half()
            out[name + ".lora_up.weight"] = loras[folder][m + ".lora_B.weight"].half()
            out[name + ".alpha"] = torch.tensor(float(alpha), dtype=alpha_dtype)
    save_file(out, str(path))


# ----------------------------------------------------------------------------------------------
# references: what diffusers fuses
# ----------------------------------------------------------------------------------------------
def expected_fused(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * alpha/r * B @ A in f64 (alpha/r folded into `scale`). A conv LoRA is a kxk conv to r
    channels followed by a 1x1 conv, so its delta is B[:, :, 0, 0] @ A flattened over (in, kh, kw)."""
    delta = b.double().flatten(1) @ a.double().flatten(1)
    return w.double() + scale * delta.reshape(w.shape)


@torch.no_grad()
def fuse_case(case: str, loras: dict) -> tuple[dict, dict]:
    """Fresh pipeline, load_lora_weights + fuse_lora + unload_lora_weights; returns the changed weights
    and the json summary. Asserts that exactly the LoRA's target weights changed."""
    model, file, scale, ref_case = CASES[case]
    nets = nets_of(model)
    base = {f: getattr(load(model), f).state_dict() for f in nets}
    pipe = load(model)
    pipe.load_lora_weights(str(LORA / file))
    pipe.fuse_lora(components=list(nets), lora_scale=scale)
    pipe.unload_lora_weights()  # drops the PEFT wrappers (keys without base_layer.), keeps fused weights
    changed = {}
    summary = {"file": f"tests/fixtures/lora/{file}", "scale": scale, "reference_case": ref_case, "networks": {}}
    for folder, (_, r, alpha, _) in nets.items():
        fused = getattr(pipe, folder).state_dict()
        assert list(fused) == list(base[folder]), f"{case} {folder}: keys differ from the plain model's"
        modules = modules_of(loras[folder])
        targets = {m + ".weight" for m in modules}
        diff = {k for k in fused if not torch.equal(fused[k], base[folder][k])}
        assert diff == targets, (case, folder, sorted(diff ^ targets)[:10])
        max_abs, kinds = 0.0, set()
        for m in modules:
            k = m + ".weight"
            a, b = loras[folder][m + ".lora_A.weight"], loras[folder][m + ".lora_B.weight"]
            want = expected_fused(base[folder][k], a, b, scale * alpha / r)
            err = (fused[k].double() - want).abs().max().item()
            assert err < 1e-5 * want.abs().max().item(), (case, k, err)
            # one stored weight per kind of layer (the path with its numbers blanked) keeps the
            # file small; lora.json lists every changed weight
            kind = re.sub(r"\d+", "#", m)
            if kind not in kinds:
                kinds.add(kind)
                changed[f"{case}/{folder}/{k}"] = fused[k].clone()
            max_abs = max(max_abs, (fused[k] - base[folder][k]).abs().max().item())
        summary["networks"][folder] = {"r": r, "lora_alpha": alpha, "modules": len(modules),
                                       "changed_weights": len(diff), "max_abs_fused_minus_original": max_abs,
                                       "changed_keys": sorted(diff)}
        log(f"  {case:10s} {folder:14s} {len(modules):3d} modules changed, max |fused - original| {max_abs:.4f}")
    return changed, summary


def assert_same(a: dict, b: dict, tol=1e-6) -> float:
    """Two cases' fused weights agree: diffusers' PEFT and kohya readers give the same model, an
    independent check of the kohya names (and of the SGM mapping for SDXL)."""
    a = {k.split("/", 1)[1]: v for k, v in a.items()}  # noqa: the sampled keys are the same (same modules)
    b = {k.split("/", 1)[1]: v for k, v in b.items()}
    assert a.keys() == b.keys(), "the cases change different weights"
    err = max((a[k] - b[k]).abs().max().item() for k in a)
    assert err <= tol, f"max |diff| {err}"
    return err


# ----------------------------------------------------------------------------------------------
def main():
    diffusers_logging.set_verbosity_error()  # progress bars / the "kohya checkpoint detected" notes
    diffusers_logging.disable_progress_bar()
    log(f"torch {torch.__version__}  diffusers {diffusers.__version__}  peft {peft.__version__}")
    if LORA.exists():
        shutil.rmtree(LORA)
    LORA.mkdir(parents=True)
    for f in (REF_FILE, REF_JSON):
        f.unlink(missing_ok=True)

    log("LoRA files")
    sd_loras, sd_cfgs = make_lora("sd")
    save_peft("sd", sd_loras, sd_cfgs, LORA / "sd-peft.safetensors", torch.float32)
    save_kohya("sd", sd_loras, LORA / "sd-kohya.safetensors", torch.float16)
    xl_loras, xl_cfgs = make_lora("sdxl")
    unet_config = load("sdxl").unet.config
    save_kohya("sdxl", xl_loras, LORA / "sdxl-kohya.safetensors", torch.float32, unet_config)
    save_peft("sdxl", xl_loras, xl_cfgs, LORA / "sdxl-peft.safetensors", torch.float16)
    with safe_open(str(LORA / "sdxl-kohya.safetensors"), "pt") as f:
        names = {k.split(".")[0] for k in f.keys()}
    # sd-scripts' SDXL names: input_blocks 3i+j+1 / output_blocks 3i+j, resnet (.0) parts in_layers.2,
    # out_layers.3, emb_layers.1, skip_connection; the transformer is .1
    for n in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_unet_middle_block_1_proj_in",
              "lora_unet_output_blocks_2_0_in_layers_2", "lora_unet_output_blocks_2_0_out_layers_3",
              "lora_unet_output_blocks_2_0_emb_layers_1", "lora_unet_output_blocks_2_0_skip_connection",
              "lora_unet_middle_block_2_in_layers_2", "lora_te2_text_model_encoder_layers_2_mlp_fc2"):
        assert n in names, n
    with safe_open(str(LORA / "sd-peft.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 2, meta
    assert meta["text_encoder.r"] == 2 and meta["text_encoder.lora_alpha"] == 4, meta

    log("fused references")
    loras = {"sd": sd_loras, "sdxl": xl_loras}
    fused, summary, refs = {}, {}, {}
    for case, (model, _, _, ref_case) in CASES.items():
        fused[case], summary[case] = fuse_case(case, loras[model])
        if ref_case == case:
            refs.update(fused[case])
        else:
            err = assert_same(fused[case], fused[ref_case])
            summary[case][f"max_abs_diff_vs_{ref_case}"] = err
            log(f"  {case} and {ref_case} fuse to the same weights (max |diff| {err:.1e})")
    mf.save(refs, REF_FILE)
    meta = {
        "fuse": "pipe.load_lora_weights(file); pipe.fuse_lora(components=<networks>, lora_scale=scale); "
                "pipe.unload_lora_weights()",
        "pipelines": "from_pretrained(tiny-sd | tiny-sdxl (variant fp16), torch_dtype=float32)",
        "formula": "W + scale * lora_alpha / r * (B @ A); conv: B[:, :, 0, 0] @ A.flatten(1), reshaped",
        "reference_keys": "<reference_case>/<network folder>/<diffusers key> in reference/lora.safetensors (f32); "
                          "a PEFT case's reference is the kohya case of the same model (asserted equal)",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
        "cases": summary,
    }
    REF_JSON.write_text(json.dumps(meta, indent=2) + "\n")

    log("files:")
    total = 0
    for path in sorted(LORA.iterdir()) + [REF_FILE, REF_JSON]:
        total += path.stat().st_size
        log(f"  {path.stat().st_size:>10d}  {path.relative_to(mf.ROOT)}")
    log(f"  total {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
