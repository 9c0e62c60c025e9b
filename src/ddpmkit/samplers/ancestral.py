"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) on the denoiser's (respaced) process:
x_{t-1} = mu_theta(x_t, t) + sigma_t z, with mu the posterior mean at the predicted x0 (Eq. 7) and
sigma_t^2 the process's fixed variance (beta~_t or beta_t), or the network's learned one (Nichol &
Dhariwal 2021, re-derived for a respaced chain); no noise at the last step."""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond
from .base import Callback, Hook, end_step, randn_like, sampler, steps


@sampler(summary="ancestral DDPM (stochastic, Ho et al. 2020)", uses_variance=True)
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
    for i, t in steps(denoiser, x, progress):
        x, x0_pred = ancestral_step(denoiser, x, t, cond, generator)
        x = end_step(denoiser, i, x, x0_pred, callback, hook)
    return x


def ancestral_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Cond | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t -> (x_{t-1}, predicted x0) at process index t (all rows equal); no noise at t = 0."""
    pred = denoiser(x, t, cond)
    mean, _, log_variance = denoiser.diffusion.p_mean_variance_from_x0(pred.x0, x, t, pred.log_variance)
    if int(t[0]) == 0:  # Alg. 2 line 4: z = 0 at the last step
        return mean, pred.x0
    return mean + torch.exp(0.5 * log_variance) * randn_like(x, generator), pred.x0
