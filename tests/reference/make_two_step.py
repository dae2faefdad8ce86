#!/usr/bin/env python3
"""BDIA and O-BELM references: the authors' sampling loops, every network in float64.

Uses the tiny model that make_fixtures.py wrote to tests/fixtures/tiny-sd/ and the image latent and
prompt embeddings of tests/fixtures/reference/edict.safetensors; it rebuilds neither. Writes:

  tests/fixtures/reference/two_step.safetensors   per method and run: the inverted pair, the edited
                                                  and reconstructed latents; run 0's edit decoded
  tests/fixtures/reference/two_step.json          settings and measured round-trip errors

The loops are ports of zituitui/BELM (commit aa09c5e) samplers/BDIA.py and samplers/BELM.py:
`latent_to_intermediate` (inversion) and `intermediate_to_latent` (denoising), written with their
variable names and coefficient formulas. Differences, each on purpose:
  * alphas_cumprod in float64 (theirs are cast to float32) and this project's timesteps: the DDIM
    timesteps of `steps` with the EDICT authors' strength rule (make_fixtures.edict_timesteps);
  * the first inversion step evaluates eps(x_0) at the timestep of the level it steps to; theirs
    passes t = 1 there (the UNet's input only; the step's coefficients are the same);
  * BDIA.py's first inversion step adds its eps coefficient without multiplying it by the noise
    prediction (a bug; BELM.py has the product): the product is restored;
  * the denoising loop's first UNet call, whose result the authors discard when the second
    latent is given, is not made.

Run:  tests/reference/.venv/bin/python tests/reference/make_two_step.py      (see README.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

MODEL, REF, log, rel = mf.MODEL, mf.REF, mf.log, mf.rel
GAMMA = 0.96  # the BDIA authors' editing scripts (scripts/image_editing.py)
GUIDANCE = 3.0


def level(ac, t):
    """sqrt(alpha_bar), sqrt(1 - alpha_bar) of timestep t; None is the clean latent (alpha_bar = 1)."""
    a = torch.tensor(1.0, dtype=torch.float64) if t is None else ac[t]
    return a.sqrt(), (1 - a).sqrt()


def first_step(latent, timesteps, ac, eps):
    """Both files' i == 0 inversion step: DDIM from the clean latent to the smallest timestep."""
    n = len(timesteps)
    t = timesteps[n - 1]
    noise_pred = eps(latent, t)  # theirs: eps(latent, 1)
    alpha_i, sigma_i = level(ac, t)
    alpha_i_minus_1, sigma_i_minus_1 = level(ac, None)
    return (alpha_i / alpha_i_minus_1) * latent + (sigma_i - (alpha_i / alpha_i_minus_1) * sigma_i_minus_1) * noise_pred


def invert(method, latent, timesteps, ac, eps):
    """latent_to_intermediate: returns (xis[-1], xis[-2]) = (x_N, x_{N-1})."""
    n = len(timesteps)
    xis = [latent]
    for i in range(n):
        index = n - i - 1
        if i == 0:
            latent = first_step(latent, timesteps, ac, eps)
            xis.append(latent)
            continue
        noise_pred = eps(latent, timesteps[index + 1])
        alpha_i, sigma_i = level(ac, timesteps[index])
        alpha_i_minus_1, sigma_i_minus_1 = level(ac, timesteps[index + 1])
        alpha_i_minus_2, sigma_i_minus_2 = level(ac, None if i == 1 else timesteps[index + 2])
        if method == "bdia":
            coef_x_i_minus_2 = 1 / GAMMA
            coef_x_i_minus_1 = alpha_i / alpha_i_minus_1 - (1 / GAMMA) * (alpha_i_minus_2 / alpha_i_minus_1)
            coef_eps = (sigma_i - (alpha_i / alpha_i_minus_1) * sigma_i_minus_1) - (1 / GAMMA) * (
                sigma_i_minus_2 - (alpha_i_minus_2 / alpha_i_minus_1) * sigma_i_minus_1)
        else:
            h_i = sigma_i / alpha_i - sigma_i_minus_1 / alpha_i_minus_1
            h_i_minus_1 = sigma_i_minus_1 / alpha_i_minus_1 - sigma_i_minus_2 / alpha_i_minus_2
            coef_x_i_minus_2 = (alpha_i / alpha_i_minus_2) * (h_i ** 2) / (h_i_minus_1 ** 2)
            coef_x_i_minus_1 = (alpha_i / alpha_i_minus_1) * (h_i_minus_1 ** 2 - h_i ** 2) / (h_i_minus_1 ** 2)
            coef_eps = alpha_i * (h_i_minus_1 + h_i) * h_i / h_i_minus_1
        latent = coef_x_i_minus_2 * xis[-2] + coef_x_i_minus_1 * xis[-1] + coef_eps * noise_pred
        xis.append(latent)
    return xis[-1], xis[-2]


def denoise(method, intermediate, intermediate_second, timesteps, ac, eps):
    """intermediate_to_latent from (x_N, x_{N-1}): returns x_0."""
    n = len(timesteps)
    xis = [intermediate, intermediate_second]
    intermediate = intermediate_second
    for i in range(1, n):
        t = timesteps[i]
        noise_pred = eps(intermediate, t)
        alpha_s, sigma_s = level(ac, timesteps[i + 1] if i < n - 1 else None)
        alpha_t, sigma_t = level(ac, t)
        alpha_p, sigma_p = level(ac, timesteps[i - 1])
        if method == "bdia":
            coef_xt = alpha_s / alpha_t
            coef_eps = sigma_s - sigma_t * coef_xt
            coef_xt = coef_xt - GAMMA * alpha_p / alpha_t
            coef_eps_2 = sigma_p - sigma_t * alpha_p / alpha_t
            coef_eps = coef_eps - GAMMA * coef_eps_2
            intermediate = GAMMA * xis[-2] + coef_xt * xis[-1] + coef_eps * noise_pred
        else:
            t_p, t_t, t_s = sigma_p / alpha_p, sigma_t / alpha_t, sigma_s / alpha_s
            delta_1 = t_t - t_p
            delta_2 = t_s - t_t
            delta_3 = t_s - t_p
            coef_1 = delta_2 * delta_3 * alpha_s / delta_1
            coef_2 = (delta_2 / delta_1) ** 2 * (alpha_s / alpha_p)
            coef_3 = (delta_1 - delta_2) * delta_3 / (delta_1 ** 2) * (alpha_s / alpha_t)
            intermediate = coef_1 * noise_pred + coef_2 * xis[-2] + coef_3 * xis[-1]
        xis.append(intermediate)
    return xis[-1]


def main():
    e = load_file(str(REF / "edict.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(str(MODEL / "unet")).eval().double()
    vae = AutoencoderKL.from_pretrained(str(MODEL / "vae")).eval().double()
    ac, z0 = mf.alphas_cumprod_f64()[0], e["latent"]
    assert torch.equal(ac, e["alphas_cumprod"])
    eps_src = mf.Guided(unet, e["text_uncond"], e["text_source"], GUIDANCE)
    eps_tgt = mf.Guided(unet, e["text_uncond"], e["text_target"], GUIDANCE)
    out, meta = {}, {"gamma": GAMMA, "guidance": GUIDANCE, "source_prompt": "a photo of a cat",
                     "target_prompt": "a photo of a dog", "latent": "edict.safetensors:latent", "runs": []}
    for r, (steps, strength) in enumerate(((10, 0.8), (10, 0.7))):
        ts, _ = mf.edict_timesteps(steps, strength)
        for method in ("bdia", "belm"):
            calls = []
            counted = lambda eps: (lambda z, t: (calls.append(t), eps(z, t))[1])  # noqa: E731
            x_n, x_n1 = invert(method, z0.clone(), ts, ac, counted(eps_src))
            n_invert = len(calls)
            edit = denoise(method, x_n, x_n1, ts, ac, counted(eps_tgt))
            recon = denoise(method, x_n, x_n1, ts, ac, eps_src)
            pre = f"{method}_run{r}_"
            # the project's pair: x = the lower level, y = the top one
            out.update({pre + "inv_x": x_n1, pre + "inv_y": x_n, pre + "edit": edit, pre + "recon": recon})
            if r == 0:
                with torch.no_grad():
                    out[pre + "edit_image"] = vae.decode(edit / mf.SCALING_FACTOR).sample
            m = {"method": method, "run": r, "steps": steps, "strength": strength, "timesteps": ts,
                 "unet_calls_invert": n_invert, "unet_calls_denoise": len(calls) - n_invert,
                 "roundtrip_rel_err": rel(recon, z0), "edit_vs_latent_rel": rel(edit, z0)}
            meta["runs"].append(m)
            log(f"{pre}: {len(ts)} levels, {n_invert} + {len(calls) - n_invert} UNet calls, "
                f"round trip {m['roundtrip_rel_err']:.3e}, edit vs latent {m['edit_vs_latent_rel']:.3e}")
            assert m["roundtrip_rel_err"] < 1e-9, "the float64 round trip is not exact"
    for k, v in out.items():
        assert v.dtype == torch.float64, k
    mf.save(out, REF / "two_step.safetensors")
    (REF / "two_step.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
