#!/usr/bin/env python3
"""Peer benchmark: `edict bench` against diffusers + torch on the same UNet and VAE shapes, in one run.

Runs `edict bench --json` (our numbers), then the same measurements with diffusers' UNet2DConditionModel
and AutoencoderKL: a batch-2 UNet call (classifier-free guidance), a VAE encode and a VAE decode,
each as the median of --iters runs after one warm-up, synchronised before the clock stops. Prints
both and the ratio ours/peer of the times (below 1: we are faster), and the peak resident memory.

Weights: `--model DIR` loads the same diffusers folder on both sides (e.g. tests/fixtures/tiny-sd);
`--config sd15` builds SD1.5's architecture with random weights on both sides (different random
values; speed does not depend on them); `--config DIR` does the same with a folder's configs.

On a busy machine pass --threads 1: torch's OpenMP threads slow down badly when the cores are
oversubscribed (a tiny UNet call went from 0.13 s to 1-4 s with 2 threads on 2 loaded cores).

Requirements: python >= 3.10, torch >= 2.1, diffusers >= 0.30 (measured with torch 2.15.0 CPU and
diffusers 0.36.0), and a built `edict` binary (`cargo build --release`, or pass --edict PATH).

    python benches/peer_diffusers.py --edict target/release/edict --model tests/fixtures/tiny-sd --backend cpu --size 64
    python benches/peer_diffusers.py --edict target/release/edict --config sd15 --backend wgpu --device cuda --size 512
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)


def ours(args):
    cmd = [args.edict, "bench", "--json", "--backend", args.backend, "--precision", args.precision,
           "--size", str(args.size), "--iters", str(args.iters)]
    cmd += ["--model", args.model] if args.model else ["--config", args.config]
    cmd += ["--steps", str(args.steps), "--strength", str(args.strength)] if args.edit else ["--no-edit"]
    env = dict(os.environ, **({"RAYON_NUM_THREADS": str(args.threads)} if args.threads else {}))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return json.loads(run.stdout)


def networks(args, dtype):
    if args.model:
        unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae", torch_dtype=dtype)
    elif args.config == "sd15":
        torch.manual_seed(0)
        with torch.device(args.device):  # initialised where they run: seconds, not a minute, on a GPU
            unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
    else:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(args.config, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(args.config, subfolder="vae"))
    return unet.to(args.device, dtype).eval(), vae.to(args.device, dtype).eval()


def timed(args, f):
    """Median seconds of --iters runs after one warm-up; a reduction is read back each time."""
    def once():
        t = time.perf_counter()
        f().float().sum().item()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t
    once()
    return statistics.median(once() for _ in range(args.iters))


def peer(args):
    dtype = {"f32": torch.float32, "f16": torch.float16}[args.precision]
    unet, vae = networks(args, dtype)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    s, c = args.size, unet.config.in_channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, s // down, s // down, generator=gen).to(args.device, dtype)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen).to(args.device, dtype)
    img = torch.randn(1, 3, s, s, generator=gen).clamp(-1, 1).to(args.device, dtype)
    z = torch.randn(1, vae.config.latent_channels, s // down, s // down, generator=gen).to(args.device, dtype)
    t = torch.tensor([500], device=args.device)
    with torch.inference_mode():
        unet_s = timed(args, lambda: unet(x, t, encoder_hidden_states=ctx).sample)
        encode_s = timed(args, lambda: vae.encode(img).latent_dist.mean)
        decode_s = timed(args, lambda: vae.decode(z).sample)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    on = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    return dict(unet_batch2_s=unet_s, vae_encode_s=encode_s, vae_decode_s=decode_s, peak_rss_mib=peak,
                torch=torch.__version__, diffusers=__import__("diffusers").__version__, device=on)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers folder or Hugging Face id, loaded on both sides")
    src.add_argument("--config", help="sd15, or a diffusers folder: its architecture with random weights")
    p.add_argument("--edict", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "edict"))
    p.add_argument("--backend", default="wgpu", choices=["wgpu", "cpu"], help="our backend")
    p.add_argument("--device", default="cpu", help="torch device of the peer: cpu, cuda")
    p.add_argument("--precision", default="f32", choices=["f32", "f16"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads on both sides (torch.set_num_threads, "
                   "RAYON_NUM_THREADS for ours); default: each library's own (all cores)")
    p.add_argument("--peer-only", action="store_true", help="time diffusers alone; print its JSON")
    p.add_argument("--edit", action="store_true", help="also time our full EDICT edit (no peer for it)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=0.8)
    args = p.parse_args()
    if not args.peer_only and not os.path.isfile(args.edict):
        sys.exit(f"{args.edict}: no edict binary; build it (cargo build --release) or pass --edict PATH")

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peer_only:
        print(json.dumps({"peer": peer(args)}))
        return
    a = ours(args)
    b = peer(args)
    threads = torch.get_num_threads()
    ours_threads = f", {a['threads']} threads" if a.get("threads") else ""
    print(f"ours: edict on {a['backend']} ({a['precision']}{ours_threads}); peer: diffusers {__import__('diffusers').__version__}, "
          f"torch {torch.__version__} on {args.device} ({threads} threads); {args.size}×{args.size} pixels, "
          f"UNet input {a['unet_input']}")
    print(f"{'':18} {'ours':>10} {'peer':>10} {'ours/peer':>10}")
    for key, label in [("unet_batch2_s", "UNet batch 2 (s)"), ("vae_encode_s", "VAE encode (s)"),
                       ("vae_decode_s", "VAE decode (s)"), ("peak_rss_mib", "peak RSS (MiB)")]:
        print(f"{label:18} {a[key]:10.4f} {b[key]:10.4f} {a[key] / b[key]:10.2f}")
    print(f"UNet evaluations/s: ours {1 / a['unet_batch2_s']:.3f}, peer {1 / b['unet_batch2_s']:.3f}")
    if a.get("edit_s") is not None:
        print(f"our EDICT edit: {a['edit_s']:.2f} s ({a['edit_steps']} steps, strength {a['edit_strength']}, "
              f"{a['edit_unet_calls']} UNet calls)")
    print(json.dumps({"ours": a, "peer": b}))


if __name__ == "__main__":
    main()
