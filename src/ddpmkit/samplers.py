"""Reverse-process samplers with one shared signature.

Notation (Song et al. 2021, DDIM): a step goes from timestep t to the previous visited timestep s
(s = -1 means "to x0"); alpha_bar_s = 1 at s = -1. Both samplers run on a respaced process
(`GaussianDiffusion.respace`) so that "all T steps" and "S of T steps" are the same code:

    ddpm_sample: ancestral sampling, x_s ~ N(mu_theta(x_t, t), sigma_t^2) (Ho et al. Alg. 2)
    ddim_sample: x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z, with
                 sigma = eta * sqrt((1 - ab_s)/(1 - ab_t)) * sqrt(1 - ab_t/ab_s) (DDIM Eqs. 12, 16)

Every sampler: `f(model, diffusion, x, *, steps=None, start_step=None, clip=None, generator=None,
callback=None, progress=False) -> x0 samples`. `x` lives at timestep `start_step` (default T-1: pure
noise); a smaller `start_step` with a noised input gives SDEdit-style partial denoising.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, Model, extract
from .errors import ConfigError
from .schedules import spaced_timesteps

SAMPLERS = ("ddpm", "ddim")
Callback = Callable[[dict], None]


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its own device), never the global RNG
    when a generator is given."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def sampling_process(
    diffusion: GaussianDiffusion, steps: int | None = None, start_step: int | None = None
) -> GaussianDiffusion:
    """The respaced process a sampler runs: a trailing grid of `steps` timesteps over
    [0, start_step] (default: all of them, start_step = T-1)."""
    T = diffusion.num_timesteps
    if steps is not None and not 1 <= int(steps) <= T:
        raise ConfigError(f"the number of sampling steps must be between 1 and T={T}, got {steps}")
    start = T - 1 if start_step is None else int(start_step)
    if not 0 <= start < T:
        raise ConfigError(f"start step must lie in 0..{T - 1}, got {start_step}")
    n = start + 1 if steps is None else min(int(steps), start + 1)
    return diffusion.respace(spaced_timesteps(start + 1, n))


def _ddpm_step(
    proc: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor, eta: float, generator
) -> torch.Tensor:
    """Alg. 2 line 4: x_{t-1} = mu + sigma z, with no noise at the last step."""
    if int(t[0]) == 0:
        return out["mean"]
    return out["mean"] + torch.exp(0.5 * out["log_variance"]) * randn_like(x, generator)


def _ddim_step(
    proc: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor, eta: float, generator
) -> torch.Tensor:
    """DDIM Eq. 12 with sigma from Eq. 16."""
    ab_t = extract(proc.alphas_cumprod, t, x.shape)
    ab_s = extract(proc.alphas_cumprod_prev, t, x.shape)
    sigma = eta * torch.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
    x_s = torch.sqrt(ab_s) * out["x0_pred"] + torch.sqrt((1 - ab_s - sigma**2).clamp(min=0)) * out["eps_pred"]
    if eta > 0 and int(t[0]) > 0:
        x_s = x_s + sigma * randn_like(x, generator)
    return x_s


def _sample_loop(
    step_fn,
    model: Model,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    *,
    steps: int | None,
    start_step: int | None,
    clip,
    eta: float,
    generator,
    callback: Callback | None,
    progress: bool,
) -> torch.Tensor:
    proc = sampling_process(diffusion, steps, start_step)
    n = proc.num_timesteps
    for i in tqdm(range(n - 1, -1, -1), desc="sampling", disable=not progress, leave=False):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = proc.p_mean_variance(model, x, t, clip=clip)
        x = step_fn(proc, out, x, t, eta, generator)
        if callback is not None:
            callback({"i": n - 1 - i, "t": int(proc.timestep_map[i]), "x_t": x, "x0_pred": out["x0_pred"]})
    return x


@torch.inference_mode()
def ddpm_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    *,
    steps: int | None = None,
    start_step: int | None = None,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral DDPM sampling over all T steps (steps=None) or a respaced grid of `steps`.

    Args:
        x: (N, *D) sample at timestep `start_step` (pure noise N(0, I) for a full run).
        clip: clamp range for the predicted x0 (e.g. (-1, 1) for images), or None.
        callback: called after every step with {"i", "t", "x_t", "x0_pred"}.
    Returns:
        (N, *D) samples at t = 0 (x0).
    """
    return _sample_loop(
        _ddpm_step,
        model,
        diffusion,
        x,
        steps=steps,
        start_step=start_step,
        clip=clip,
        eta=1.0,
        generator=generator,
        callback=callback,
        progress=progress,
    )


@torch.inference_mode()
def ddim_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    start_step: int | None = None,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM sampling (eta=0: deterministic; eta=1: DDPM posterior variance) on a grid of `steps`."""
    return _sample_loop(
        _ddim_step,
        model,
        diffusion,
        x,
        steps=steps,
        start_step=start_step,
        clip=clip,
        eta=eta,
        generator=generator,
        callback=callback,
        progress=progress,
    )


def sample(name: str, model: Model, diffusion: GaussianDiffusion, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Dispatch by sampler name ("ddpm" | "ddim"); `eta` is ignored by ddpm."""
    if name == "ddpm":
        kwargs.pop("eta", None)
        return ddpm_sample(model, diffusion, x, **kwargs)
    if name == "ddim":
        return ddim_sample(model, diffusion, x, **kwargs)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def sdedit(
    model: Model,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    start_step: int,
    *,
    sampler: str = "ddpm",
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """Partially noise an input to `start_step` with q(x_t | x0), then denoise it (Meng et al. 2022)."""
    t = torch.full((x0.shape[0],), int(start_step), dtype=torch.long, device=x0.device)
    x_t = diffusion.q_sample(x0, t, randn_like(x0, generator))
    return sample(sampler, model, diffusion, x_t, start_step=start_step, generator=generator, **kwargs)
