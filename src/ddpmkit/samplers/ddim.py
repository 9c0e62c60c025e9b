"""DDIM sampling (Song et al. 2021). Notation: a step goes from timestep t to the next visited
timestep s (alpha_bar_s = 1 after the last step):

    x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z                          (Eq. 12)
    sigma = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s)                   (Eq. 16)

eta = 0 is deterministic; eta = 1 on all T steps gives the DDPM posterior variance."""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond, extract
from .base import Callback, Hook, end_step, randn_like, sampler, steps


@sampler(summary="DDIM, deterministic at eta 0 (Song et al. 2021)")
@torch.inference_mode()
def ddim_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    eta: float = 0.0,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Args: x: (N, *D) at the process's last step; eta >= 0: the noise of Eq. 16.
    Returns: (N, *D) samples at t = 0."""
    proc = denoiser.diffusion
    for i, t in steps(denoiser, x, progress):
        pred = denoiser(x, t, cond)
        ab_t = extract(proc.alphas_cumprod, t, x.shape)
        ab_s = extract(proc.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))  # Eq. 16
        x = torch.sqrt(ab_s) * pred.x0 + torch.sqrt((1 - ab_s - sigma**2).clamp(min=0)) * pred.eps  # Eq. 12
        if eta > 0 and i < denoiser.num_timesteps - 1:
            x = x + sigma * randn_like(x, generator)
        x = end_step(denoiser, i, x, pred.x0, callback, hook)
    return x


@torch.inference_mode()
def ddim_invert(denoiser: Denoiser, x0: torch.Tensor, *, cond: Cond | None = None) -> torch.Tensor:
    """Run deterministic DDIM backwards, data -> the process's last step (Song et al. 2021, Sec. 4.3):
    x_t = sqrt(ab_t) x0_hat + sqrt(1 - ab_t) eps_hat, with eps_hat predicted at the previous state
    (the usual first-order approximation) and x0_hat recomputed from it at that state's level."""
    proc, x = denoiser.diffusion, x0
    for i in range(denoiser.num_timesteps):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        eps = denoiser(x, t, cond).eps
        ab_prev, ab_t = (extract(a, t, x.shape) for a in (proc.alphas_cumprod_prev, proc.alphas_cumprod))
        x0_hat = (x - torch.sqrt(1 - ab_prev) * eps) / torch.sqrt(ab_prev)  # Eq. 12 solved for x0
        x = torch.sqrt(ab_t) * x0_hat + torch.sqrt(1 - ab_t) * eps
    return x
