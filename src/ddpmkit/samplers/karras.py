"""Euler and Heun on the probability-flow ODE in Karras et al.'s form (2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Alg. 1), for a DDPM model.

The VP state x_t = alpha_t x0 + sigma_t eps is rescaled to x^ = x_t / alpha_t, whose noise level is
sigma^ = sigma_t / alpha_t = e^{-lambda}; then dx^/dsigma^ = (x^ - D(x^; sigma^)) / sigma^ (Eq. 3 with
s(t) = 1), D the denoiser's x0. By default they run on the Karras grid over the model's own sigma
range (`schedules.time_grid`). Euler is DDIM in this parametrisation (Karras et al., Sec. 3).
"""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond
from .base import Callback, Hook, end_step, noise_levels, sampler, steps


@sampler(summary="Euler / Heun on the Karras grid", grid="karras")
@torch.inference_mode()
def karras_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    heun: bool = False,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler (one model call per step), or with `heun` Heun's second order (two calls per step, one
    on the last: 2 steps - 1). Returns (N, *D) samples at sigma = 0."""
    alphas, sigmas, _ = noise_levels(denoiser)
    vsig = [s / a for a, s in zip(alphas, sigmas, strict=True)]  # sigma^ of every level, 0 at the data
    for i, t in steps(denoiser, x, progress):
        pred = denoiser(x, t, cond)
        if vsig[i + 1] == 0:  # the last step: x^ + (0 - sigma^) d = D
            x = pred.x0
        else:
            x_hat = x / alphas[i]
            d = (x_hat - pred.x0) / vsig[i]  # Eq. 3: dx^/dsigma^
            x_next = x_hat + (vsig[i + 1] - vsig[i]) * d  # Alg. 1 line 5: Euler step
            if heun:  # Alg. 1 lines 7-8: second-order correction with the slope at the end
                d_next = (x_next - denoiser(alphas[i + 1] * x_next, t - 1, cond).x0) / vsig[i + 1]
                x_next = x_hat + (vsig[i + 1] - vsig[i]) * (d + d_next) / 2
            x = alphas[i + 1] * x_next
        x = end_step(denoiser, i, x, pred.x0, callback, hook)
    return x
