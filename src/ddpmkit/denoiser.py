"""The denoiser adapter: a network of any objective (eps, x0, v) -> predictions of x0 and eps.

Samplers ask a `Denoiser` for x0 and eps at a timestep and never learn what the network predicts,
as k-diffusion's `DiscreteEpsDDPMDenoiser` or improved-diffusion's `_WrappedModel`; guidance wraps it
the same way. A denoiser runs on a (possibly respaced) process: `t` indexes that process's steps and
the network is called with the original timesteps (`GaussianDiffusion.timestep_map`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .diffusion import Cond, GaussianDiffusion, Model
from .errors import ConfigError
from .schedules import spaced_timesteps


@dataclass(frozen=True)
class Prediction:
    """What the network says about x_t: the clean data x0 and the noise eps, both shaped like x_t."""

    x0: torch.Tensor
    eps: torch.Tensor


class Denoiser:
    """model(x_t, t, **cond) of any objective -> `Prediction(x0, eps)`.

    Args:
        model: the network, `model(x_t, t, **cond)`.
        diffusion: the process the sampler walks (a respaced one for S < T steps).
        clip: clamp range of the predicted x0 (e.g. (-1, 1) for images), or None.
    """

    def __init__(
        self, model: Model, diffusion: GaussianDiffusion, *, clip: tuple[float, float] | None = None
    ):
        self.model, self.diffusion, self.clip = model, diffusion, clip

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None) -> Prediction:
        """x_t: (N, *D); t: (N,) indices into this denoiser's process."""
        out = self.diffusion.model_output(self.model, x_t, t, cond).float()
        return Prediction(*self.diffusion.predict_x0_eps(x_t, t, out, self.clip))

    def respace(self, timesteps: Sequence[int]) -> Denoiser:
        """The same network on a process that visits only `timesteps` (Nichol & Dhariwal 2021, Sec. 4)."""
        return Denoiser(self.model, self.diffusion.respace(timesteps), clip=self.clip)

    def model_timestep(self, i: int) -> int:
        """The original timestep that step i of this process stands for (-1 below step 0: x0)."""
        return int(self.diffusion.timestep_map[i]) if i >= 0 else -1


def sampling_timesteps(
    num_timesteps: int, steps: int | None = None, start_step: int | None = None
) -> list[int]:
    """The descending grid a sampler visits: `steps` timesteps spread over [0, start_step]
    (trailing spacing, `spaced_timesteps`); default all of them from start_step = T-1."""
    T = num_timesteps
    if steps is not None and not 1 <= int(steps) <= T:
        raise ConfigError(f"the number of sampling steps must be between 1 and T={T}, got {steps}")
    start = T - 1 if start_step is None else int(start_step)
    if not 0 <= start < T:
        raise ConfigError(f"start step must lie in 0..{T - 1}, got {start_step}")
    n = start + 1 if steps is None else min(int(steps), start + 1)
    return spaced_timesteps(start + 1, n)
