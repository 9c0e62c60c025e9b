"""Multistep consistency sampling (Song et al. 2023, Alg. 1), for consistency students.

Each step maps x_t to the data with the consistency function, x0 = f(x_t, t), and then, unless it
is the last, noises that x0 afresh to the next visited timestep s: x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) z.
One step is one model call; more steps trade calls for quality. Sampling starts where the training
stopped, at sigma = 80 (`distillation.top_step`), as Song et al. do, not at the chain's last step:
there x is N(0, I) all the same (alpha = 0.0125), and the network was trained there."""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond, extract
from ..distillation import top_step
from .base import Callback, Hook, end_step, randn_like, sampler, steps


@sampler(
    summary="multistep consistency sampling (Song et al. 2023, Alg. 1): consistency students", start=top_step
)
@torch.inference_mode()
def consistency_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Args: x: (N, *D) at the process's last step. Returns: (N, *D) samples at t = 0."""
    proc = denoiser.diffusion
    for i, t in steps(denoiser, x, progress):
        x0 = denoiser(x, t, cond).x0
        ab_s = extract(proc.alphas_cumprod_prev, t, x.shape)  # 1 after the last step
        x = (
            x0
            if i == denoiser.num_timesteps - 1
            else ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * randn_like(x, generator)
        )
        x = end_step(denoiser, i, x, x0, callback, hook)
    return x
