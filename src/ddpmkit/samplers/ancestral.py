"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) on the denoiser's (respaced) process:
x_{t-1} = mu_theta(x_t, t) + sigma_t z, with mu the posterior mean at the predicted x0 (Eq. 7) and
sigma_t^2 the process's fixed variance (beta~_t or beta_t); no noise at the last step."""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond
from .base import Callback, Hook, end_step, randn_like, sampler, steps


@sampler(summary="ancestral DDPM (stochastic, Ho et al. 2020)")
@torch.inference_mode()
def ddpm_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Args: x: (N, *D) at the process's last step (pure noise N(0, I) for a full run).
    Returns: (N, *D) samples at t = 0."""
    proc = denoiser.diffusion
    for i, t in steps(denoiser, x, progress):
        pred = denoiser(x, t, cond)
        mean, _, log_variance = proc.p_mean_variance_from_x0(pred.x0, x, t)  # Eq. 11
        if i == denoiser.num_timesteps - 1:  # Alg. 2 line 4: z = 0 at the last step
            x = mean
        else:
            x = mean + torch.exp(0.5 * log_variance) * randn_like(x, generator)
        x = end_step(denoiser, i, x, pred.x0, callback, hook)
    return x
