#!/usr/bin/env python3
"""End-to-end edit benchmark: our EDICT, BDIA and O-BELM edits against a PyTorch EDICT edit, in one run.

Ours: `edict bench --json` with each --method times one full edit (VAE encode, inversion under the
source prompt, denoising under the target, VAE decode) on SD 1.5's architecture with seeded random
weights (`--config sd15`). Peer: the EDICT authors' algorithm written here in PyTorch on diffusers'
UNet2DConditionModel and AutoencoderKL and transformers' CLIPTextModel, the same architecture with
random weights, in f32 (coupled latents included): encode, 2 guided UNet calls per step to invert and
2 to denoise, decode. Same image size, steps, strength and CPU threads on both sides; the two never run
at once. Prints seconds, UNet calls and each of ours over the PyTorch EDICT edit (below 1: faster).

Requirements: as benches/peer_diffusers.py (torch, diffusers, transformers), and a release `edict`.

    python benches/peer_edit.py --edict target/release/edict --size 256 --steps 50 --strength 0.8 --threads 2
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_diffusers import SD15_UNET, SD15_VAE  # noqa: E402

SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
METHODS = ("edict", "bdia", "belm")


def ours(args, method):
    cmd = [args.edict, "bench", "--json", "--backend", "cpu", "--config", "sd15", "--size", str(args.size),
           "--iters", "1", "--steps", str(args.steps), "--strength", str(args.strength), "--method", method]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    r = json.loads(run.stdout)
    return r["edit_s"], r["edit_unet_calls"]


def timesteps(steps, strength):
    """The EDICT authors' DDIM timesteps run, in denoising order (offset 0)."""
    stride = 1000 // steps
    return [stride * k for k in range(int(steps * strength) - 1, -1, -1)], stride


def peer(args):
    """One PyTorch EDICT edit, timed from the image to the edited image."""
    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**SD15_UNET).eval(), AutoencoderKL(**SD15_VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    g, p = 3.0, 0.93
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, args.size, args.size, generator=gen) * 2 - 1
    ids = [torch.randint(0, 49408, (1, 77), generator=gen) for _ in range(3)]  # "", source, target

    def coeffs(t, stride):
        ab_t, ab_prev = ac[t], ac[t - stride] if t >= stride else ac[0]
        return float((ab_prev / ab_t).sqrt()), float((1 - ab_prev).sqrt() - (ab_prev * (1 - ab_t) / ab_t).sqrt())

    with torch.inference_mode():
        start = time.perf_counter()
        uncond, src, tgt = (text(i).last_hidden_state for i in ids)

        def guided(cond):
            ctx = torch.cat([uncond, cond])

            def eps(z, t):
                e_u, e_c = unet(torch.cat([z, z]), t, encoder_hidden_states=ctx).sample.chunk(2)
                return e_u + g * (e_c - e_u)
            return eps

        ts, stride = timesteps(args.steps, args.strength)
        x = vae.encode(image).latent_dist.mean * 0.18215
        y = x.clone()
        eps, calls = guided(src), 0
        for i in reversed(range(len(ts))):  # inversion: undo mixing, then the two updates
            a, b = coeffs(ts[i], stride)
            y = (y - (1 - p) * x) / p
            x = (x - (1 - p) * y) / p
            if i % 2 == 0:
                y = (y - b * eps(x, ts[i])) / a
                x = (x - b * eps(y, ts[i])) / a
            else:
                x = (x - b * eps(y, ts[i])) / a
                y = (y - b * eps(x, ts[i])) / a
            calls += 2
        eps = guided(tgt)
        for i, t in enumerate(ts):  # denoising under the target
            a, b = coeffs(t, stride)
            if i % 2 == 0:
                x = a * x + b * eps(y, t)
                y = a * y + b * eps(x, t)
            else:
                y = a * y + b * eps(x, t)
                x = a * x + b * eps(y, t)
            x = p * x + (1 - p) * y
            y = p * y + (1 - p) * x
            calls += 2
        out = vae.decode(x / 0.18215).sample
        out.sum().item()
        return time.perf_counter() - start, calls


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--edict", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "edict"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=2, help="CPU threads on both sides")
    args = p.parse_args()
    if not os.path.isfile(args.edict):
        sys.exit(f"{args.edict}: no edict binary; build it (cargo build --release) or pass --edict PATH")
    torch.set_num_threads(args.threads)
    peer_s, peer_calls = peer(args)
    rows = {m: ours(args, m) for m in METHODS}
    print(f"SD 1.5 architecture, random weights, {args.size}×{args.size}, {args.steps} steps at strength "
          f"{args.strength}, CPU, {args.threads} threads, f32; torch {torch.__version__}")
    print(f"{'edit':22} {'seconds':>9} {'UNet calls':>11} {'/ PyTorch EDICT':>16}")
    print(f"{'PyTorch EDICT (peer)':22} {peer_s:9.1f} {peer_calls:11d} {1:16.2f}")
    for m, (s, calls) in rows.items():
        print(f"{'ours ' + m:22} {s:9.1f} {calls:11d} {s / peer_s:16.2f}")
    print(json.dumps({"peer_edict": {"seconds": peer_s, "unet_calls": peer_calls},
                      **{m: {"seconds": s, "unet_calls": c} for m, (s, c) in rows.items()}}))


if __name__ == "__main__":
    main()
