#!/usr/bin/env python3
"""TAESD fixtures: a tiny seeded diffusers `AutoencoderTiny` and its outputs.

Writes (deterministically, offline):

  tests/fixtures/tiny-taesd/            config.json, diffusion_pytorch_model.safetensors (f32): the
                                        AutoencoderTiny architecture (encoder: a conv, then per
                                        level a stride-2 conv and blocks; decoder: tanh clamp, blocks,
                                        nearest 2x upsampling, a final conv with bias) at 8 channels,
                                        blocks (1, 2, 1, 1) and (1, 1, 2, 1), so every kind of layer
                                        and a level with two blocks is there
  tests/fixtures/reference/taesd.safetensors
                                        image -> encoder latents, latents -> decoded image (diffusers'
                                        `AutoencoderTiny.encode(...).latents` / `.decode(...).sample`)

Run after make_fixtures.py (it reuses its weight initialisation and determinism settings):
    tests/reference/.venv/bin/python tests/reference/make_taesd.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import torch  # noqa: E402
from diffusers import AutoencoderTiny  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

OUT = mf.FIX / "tiny-taesd"

CONFIG = dict(
    in_channels=3,
    out_channels=3,
    encoder_block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    act_fn="relu",
    upsample_fn="nearest",
    latent_channels=4,
    upsampling_scaling_factor=2,
    num_encoder_blocks=(1, 2, 1, 1),
    num_decoder_blocks=(1, 1, 2, 1),
    latent_magnitude=3,
    latent_shift=0.5,
    scaling_factor=1.0,
    shift_factor=0.0,
)


@torch.no_grad()
def main():
    model = AutoencoderTiny(**CONFIG).eval()
    mf.randomize(model, "taesd")
    model.save_pretrained(OUT, safe_serialization=True)
    # a photo-like image (64x48: not square, so height and width cannot be swapped unnoticed)
    image = mf.smooth_image(71)[..., :48].contiguous()
    latents = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(72)).half().float()
    encoded = model.encode(image).latents
    decoded = model.decode(latents).sample
    save_file(
        {"image": image, "encoded": encoded.contiguous(), "latents": latents, "decoded": decoded.contiguous()},
        mf.REF / "taesd.safetensors",
    )
    mf.log(f"tiny-taesd: {sum(p.numel() for p in model.parameters())} parameters; "
           f"encoded {tuple(encoded.shape)} std {encoded.std():.3f}, decoded {tuple(decoded.shape)} std {decoded.std():.3f}")


if __name__ == "__main__":
    main()
