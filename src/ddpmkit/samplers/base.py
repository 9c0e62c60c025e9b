"""Small pieces every sampler shares: noise from an explicit generator, the step loop with its
progress bar, and the per-step callback / hook.

A sampler owns its loop and calls the denoiser as often as it needs. After each step it calls
`end_step`, which gives the optional `hook` the chance to replace x (inpainting pastes the known
pixels back there) and then reports the step to the read-only `callback`. Both get a dict:

    i               step number, 0 for the first (noisiest) step
    t               the model timestep the step started from
    t_next          the model timestep the step reached (-1: the final sample x0)
    alpha_bar_next  alpha_bar at t_next (1.0 at the final sample), to noise known data to that level
    x_t             the state after the step (at t_next)
    x0_pred         the x0 the denoiser predicted during the step
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ..denoiser import Denoiser
from ..progress import bar as progress_bar

Callback = Callable[[dict], None]
Hook = Callable[[dict], "torch.Tensor | None"]


def sampler(
    *,
    summary: str,
    grid: str = "uniform",
    nfe: Callable[[int], int] = lambda steps: steps,
    uses_variance: bool = False,
    start: Callable | None = None,
):
    """Mark a sampler function with a one-line summary (for --help), its default time grid, its
    number of model calls for `steps` steps, whether it samples with the reverse process's
    variance (ancestral samplers; ODE solvers and DDIM use only the predicted x0 / eps), and
    `start(alphas_cumprod) -> step` where it starts from noise when not at T - 1."""

    def mark(fn):
        fn.summary, fn.default_grid, fn.nfe, fn.uses_variance = summary, grid, nfe, uses_variance
        fn.start = start
        return fn

    return mark


def noise_levels(denoiser: Denoiser) -> tuple[list[float], list[float], list[float]]:
    """alpha_i, sigma_i and lambda_i = log(alpha_i / sigma_i) at the start of step i = 0..n-1,
    noisiest first, and at i = n the data (alpha = 1, sigma = 0, lambda = inf), in float64."""
    ab = denoiser.diffusion.alphas_cumprod.double().flip(0).tolist() + [1.0]
    alphas, sigmas = [math.sqrt(a) for a in ab], [math.sqrt(1.0 - a) for a in ab]
    lambdas = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alphas, sigmas, strict=True)]
    return alphas, sigmas, lambdas


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its own device), never the global RNG
    when a generator is given."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def steps(denoiser: Denoiser, x: torch.Tensor, progress: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """(i, t) for every step of the denoiser's process, noisiest first: t is an (N,) tensor of the
    process index the step starts from (T'-1, ..., 0)."""
    n = denoiser.num_timesteps
    for i in progress_bar(range(n), desc="sampling", disable=not progress, leave=False):
        yield i, torch.full((x.shape[0],), n - 1 - i, dtype=torch.long, device=x.device)


def end_step(
    denoiser: Denoiser,
    i: int,
    x: torch.Tensor,
    x0_pred: torch.Tensor,
    callback: Callback | None,
    hook: Hook | None,
) -> torch.Tensor:
    """Run the hook (which may return a replacement for x) and the callback after step i."""
    if callback is None and hook is None:
        return x
    j = denoiser.num_timesteps - 1 - i  # process index the step started from
    ab_next = float(denoiser.diffusion.alphas_cumprod_prev[j])
    info = {
        "i": i,
        "t": denoiser.model_timestep(j),
        "t_next": denoiser.model_timestep(j - 1),
        "alpha_bar_next": ab_next,
        "x_t": x,
        "x0_pred": x0_pred,
    }
    if hook is not None:
        replaced = hook(info)
        if replaced is not None:
            x = info["x_t"] = replaced
    if callback is not None:
        callback(info)
    return x
