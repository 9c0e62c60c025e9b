"""Reverse-process samplers and their registry.

Every sampler is a function with one signature that owns its loop:

    f(denoiser, x, *, cond=None, generator=None, callback=None, hook=None, progress=False, **options)
        -> x0 samples

It walks all steps of `denoiser.diffusion` (the respaced grid `sample` built), calls the denoiser as
often as it needs per step, and reports each step through `base.end_step`. Its own options (DDIM's
`eta`) are keyword arguments named like `SampleConfig` fields, and `sample` passes exactly those.
Each is marked (`base.sampler`) with its default time grid and its model calls per steps (`nfe`).
Adding a sampler is one new file here plus one line in the registry below.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import fields

import torch

from ..config import LEARNED_VARIANCES, SAMPLERS, SampleConfig
from ..denoiser import Denoiser, sampling_timesteps
from ..diffusion import Cond, GaussianDiffusion, Model
from .ancestral import ddpm_sample
from .base import Callback, Hook, randn_like
from .consistency import consistency_sample
from .ddim import ddim_sample
from .dpm_solver import dpmpp_sample
from .karras import karras_sample
from .unipc import unipc_sample


def _variant(fn, summary: str, nfe=None, **options):
    """`fn` with some options fixed, keeping its default grid (and NFE count, unless given)."""
    f = functools.partial(fn, **options)
    f.summary, f.default_grid, f.nfe = summary, fn.default_grid, nfe or fn.nfe
    f.uses_variance, f.start = fn.uses_variance, getattr(fn, "start", None)
    return f


# ----- the registry: name -> sampler function --------------------------------------------------------
SAMPLERS["ddpm"] = ddpm_sample
SAMPLERS["ddim"] = ddim_sample
SAMPLERS["dpm++2m"] = _variant(dpmpp_sample, "DPM-Solver++(2M), second order (Lu et al. 2022)", order=2)
SAMPLERS["dpm++3m"] = _variant(dpmpp_sample, "DPM-Solver++(3M), third order", order=3)
SAMPLERS["dpm++2m-sde"] = _variant(dpmpp_sample, "SDE-DPM-Solver++(2M), stochastic", order=2, stochastic=True)
SAMPLERS["unipc"] = _variant(
    unipc_sample, "UniPC-2 with B(h) = e^-h - 1 (bh2; Zhao et al. 2023)", variant="bh2"
)
SAMPLERS["unipc-bh1"] = _variant(unipc_sample, "UniPC-2 with B(h) = h (bh1)", variant="bh1")
SAMPLERS["euler"] = _variant(karras_sample, "Euler on the Karras grid (first order; = DDIM)", heun=False)
SAMPLERS["heun"] = _variant(
    karras_sample, "Heun on the Karras grid (2nd order, 2 calls a step)", lambda s: 2 * s - 1, heun=True
)
SAMPLERS["consistency"] = consistency_sample

__all__ = [
    "SAMPLERS",
    "sample",
    "sampler_options",
    "sampler_grid",
    "nfe",
    "describe",
    "describe_options",
    "variance_note",
    "sdedit",
    "ddpm_sample",
    "ddim_sample",
    "dpmpp_sample",
    "unipc_sample",
    "karras_sample",
    "consistency_sample",
    "randn_like",
]

_COMMON = {"cond", "generator", "callback", "hook", "progress"}


def sampler_options(name: str, options: SampleConfig) -> dict:
    """The `SampleConfig` fields that sampler `name` takes as keyword arguments (e.g. ddim: eta)."""
    params = inspect.signature(SAMPLERS[name]).parameters
    return {
        f.name: getattr(options, f.name)
        for f in fields(options)
        if f.name in params and f.name not in _COMMON
    }


def sampler_grid(options: SampleConfig) -> str:
    """The time grid `options` sample on: `options.grid`, or the sampler's own default."""
    return options.grid or getattr(SAMPLERS[options.sampler], "default_grid", "uniform")


def describe() -> str:
    """One line per registered sampler: name, summary, default grid (for --help and docs)."""
    return "\n".join(
        f"{name}: {getattr(fn, 'summary', '')} [{getattr(fn, 'default_grid', 'uniform')} grid]"
        for name, fn in SAMPLERS.items()
    )


def describe_options(options: SampleConfig, num_timesteps: int, guided: bool = False) -> str:
    """E.g. "dpm++2m-sde, 20 steps on the uniform grid, 20 model calls per sample"; `guided`: with
    classifier-free guidance, which doubles the calls."""
    calls = nfe(options, num_timesteps) * (2 if guided else 1)
    how = f" (guided: 2 per evaluation{_interval(options)})" if guided else ""
    return (
        f"{options.sampler}, {_num_steps(options, num_timesteps)} steps on the {sampler_grid(options)} grid, "
        f"{calls} model calls per sample{how}"
    )


def _interval(options: SampleConfig) -> str:
    """How a guidance interval changes the count of guided calls (it depends on the grid's noise levels)."""
    if not options.guidance_interval:
        return ""
    lo, hi = options.guidance_interval
    return f" with sigma in ({lo:g}, {hi:g}], else 1: at most this many"


def variance_note(sampler: str, variance: str) -> str | None:
    """A note when a run's learned variance is not what `sampler` samples with (ODE solvers and
    DDIM take the mean's x0 / eps prediction alone), else None."""
    if variance not in LEARNED_VARIANCES or getattr(SAMPLERS[sampler], "uses_variance", False):
        return None
    return (f"note: {sampler} uses only the predicted x0 / eps of this {variance}-variance model; "
            "the learned variance is used by the ancestral sampler (ddpm), RePaint and --nll")  # fmt: skip


def nfe(options: SampleConfig, num_timesteps: int) -> int:
    """Model calls per sample of `options` on a model with T = `num_timesteps` (all T if steps is None)."""
    return getattr(SAMPLERS[options.sampler], "nfe", lambda n: n)(_num_steps(options, num_timesteps))


def _num_steps(options: SampleConfig, num_timesteps: int) -> int:
    return min(options.steps or num_timesteps, num_timesteps)


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
    guide: Model | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample with `options.sampler` on `options.steps` timesteps of `diffusion` (all T if None).

    Args:
        model: model(x_t, t, **cond) of `diffusion.objective`.
        x: (N, *D) at timestep `start_step` (default T-1: pure noise N(0, I)); a smaller start
            step with a noised input denoises part of the way (SDEdit).
        options: sampler, steps, time grid, dynamic threshold and the sampler's own options
            (eta); `num_samples`/`clip` are the caller's business (`clip` is the resolved range).
        cond: conditioning passed to the model on every call, e.g. {"y": labels}.
        guide: the network that guides `model` (autoguidance, `Denoiser`) instead of the null label.
    Returns:
        (N, *D) samples at t = 0.
    """
    options = options or SampleConfig()
    fn = SAMPLERS[options.sampler]
    if start_step is None and getattr(fn, "start", None) is not None:  # noise at the sampler's own top step
        start_step = fn.start(diffusion.alphas_cumprod)
    grid = sampling_timesteps(diffusion, options.steps, start_step, sampler_grid(options))
    denoiser = Denoiser(
        model, diffusion, clip=clip, threshold=options.threshold, guidance=options.guidance or 0.0,
        guidance_rescale=options.guidance_rescale, guide=guide, guidance_interval=options.guidance_interval,
    ).respace(grid)  # fmt: skip
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
