"""Reverse-process samplers and their registry.

Every sampler is a function with one signature that owns its loop:

    f(denoiser, x, *, cond=None, generator=None, callback=None, hook=None, progress=False, **options)
        -> x0 samples

It walks all steps of `denoiser.diffusion` (the respaced grid `sample` built), calls the denoiser as
often as it needs per step, and reports each step through `base.end_step`. Its own options (DDIM's
`eta`) are keyword arguments named like `SampleConfig` fields, and `sample` passes exactly those.
Adding a sampler is one new file here plus one line in the registry below.
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import torch

from ..config import SAMPLERS, SampleConfig
from ..denoiser import Denoiser, sampling_timesteps
from ..diffusion import Cond, GaussianDiffusion, Model
from .ancestral import ddpm_sample
from .base import Callback, Hook, randn_like
from .ddim import ddim_sample

# ----- the registry: name -> sampler function --------------------------------------------------------
SAMPLERS["ddpm"] = ddpm_sample
SAMPLERS["ddim"] = ddim_sample

__all__ = ["SAMPLERS", "sample", "sampler_options", "sdedit", "ddpm_sample", "ddim_sample", "randn_like"]

_COMMON = {"cond", "generator", "callback", "hook", "progress"}


def sampler_options(name: str, options: SampleConfig) -> dict:
    """The `SampleConfig` fields that sampler `name` takes as keyword arguments (e.g. ddim: eta)."""
    params = inspect.signature(SAMPLERS[name]).parameters
    return {
        f.name: getattr(options, f.name)
        for f in fields(options)
        if f.name in params and f.name not in _COMMON
    }


def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    options: SampleConfig | None = None,
    *,
    clip: tuple[float, float] | None = None,
    cond: Cond | None = None,
    start_step: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample with `options.sampler` on `options.steps` timesteps of `diffusion` (all T if None).

    Args:
        model: model(x_t, t, **cond) of `diffusion.objective`.
        x: (N, *D) at timestep `start_step` (default T-1: pure noise N(0, I)); a smaller start
            step with a noised input denoises part of the way (SDEdit).
        options: sampler, steps and the sampler's own options (eta); `num_samples`/`clip` are
            the caller's business (`clip` is the resolved range or None).
        cond: conditioning passed to the model on every call, e.g. {"y": labels}.
    Returns:
        (N, *D) samples at t = 0.
    """
    options = options or SampleConfig()
    fn = SAMPLERS[options.sampler]
    grid = sampling_timesteps(diffusion.num_timesteps, options.steps, start_step)
    denoiser = Denoiser(model, diffusion, clip=clip).respace(grid)
    return fn(
        denoiser,
        x,
        cond=cond,
        generator=generator,
        callback=callback,
        hook=hook,
        progress=progress,
        **sampler_options(options.sampler, options),
    )


def sdedit(
    model: Model,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    start_step: int,
    options: SampleConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """Partially noise an input to `start_step` with q(x_t | x0), then denoise it (Meng et al. 2022)."""
    t = torch.full((x0.shape[0],), int(start_step), dtype=torch.long, device=x0.device)
    x_t = diffusion.q_sample(x0, t, randn_like(x0, generator))
    return sample(model, diffusion, x_t, options, start_step=start_step, generator=generator, **kwargs)
