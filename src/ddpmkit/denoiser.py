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

from .checks import check_guidance, check_interval
from .diffusion import Cond, GaussianDiffusion, Model
from .errors import ConfigError
from .schedules import time_grid

# classifier-free guidance w of a run whose config leaves it unset (s = 1 + w), chosen by measurement
# on MNIST and Fashion-MNIST (docs/steering.md)
DEFAULT_GUIDANCE = 0.5


def guidance_weight(*choices: float | None) -> float:
    """The first guidance weight that is set (e.g. the one asked for, then the run's saved one),
    else `DEFAULT_GUIDANCE`."""
    return check_guidance(next((float(w) for w in choices if w is not None), DEFAULT_GUIDANCE))


@dataclass(frozen=True)
class Prediction:
    """What the network says about x_t: the clean data x0 and the noise eps, both shaped like x_t,
    and the log variance of p(x_{t-1} | x_t) when the network learns it (else None: the process's
    fixed one). Ancestral samplers use it; ODE solvers need only x0 and eps."""

    x0: torch.Tensor
    eps: torch.Tensor
    log_variance: torch.Tensor | None = None


class Denoiser:
    """model(x_t, t, **cond) of any objective -> `Prediction(x0, eps)`.

    Args:
        model: the network, `model(x_t, t, **cond)`.
        diffusion: the process the sampler walks (a respaced one for S < T steps).
        clip: clamp range of the predicted x0 (e.g. (-1, 1) for images), or None.
        threshold: dynamic thresholding percentile in (0, 1) (Saharia et al. 2022, Sec. 2.3), or
            0 for off; needs `clip`, whose bound it replaces by a per-sample one >= that bound.
        guidance: classifier-free guidance weight w (Ho & Salimans 2022, Eq. 6): the output is
            (1 + w) out(x_t, y) - w out(x_t, null) (its mean part; a learned variance is the
            conditional model's, as GLIDE does), so w = 0 is the plain conditional model and
            s = 1 + w is the "scale" of other libraries. It applies only when `cond` holds
            labels "y" (without them the model sees the null label). Run-level functions
            (`run.generate`, `steer`) turn a run's unset guidance into `DEFAULT_GUIDANCE`.
        guidance_rescale: phi of Lin et al. 2024, Eq. 15-16: the guided output's per-sample std
            is pulled back towards the conditional one's (0 = off).
        guide: autoguidance (Karras et al. 2024, Eq. 1): a weaker network of the same process
            (smaller, trained for less) that guides instead of the null label, given the same
            conditioning: (1 + w) out(x_t, y) - w guide(x_t, y). It needs no labels, so it guides
            unconditional models too. None: classifier-free guidance.
        guidance_interval: (sigma_lo, sigma_hi): guide only where the noise-to-signal ratio
            sigma_t = sqrt((1 - alphas_cumprod_t) / alphas_cumprod_t) lies in (sigma_lo, sigma_hi]
            (Kynkaenniemi et al. 2024); elsewhere the plain model, one call. () = every step.
    """

    def __init__(
        self,
        model: Model,
        diffusion: GaussianDiffusion,
        *,
        clip: tuple[float, float] | None = None,
        threshold: float = 0.0,
        guidance: float = 0.0,
        guidance_rescale: float = 0.0,
        guide: Model | None = None,
        guidance_interval: tuple[float, ...] = (),
    ):
        if threshold and not 0.0 < threshold < 1.0:
            raise ConfigError(f"the dynamic threshold is a percentile in (0, 1), got {threshold}")
        if threshold and clip is None:
            raise ConfigError("dynamic thresholding needs a data range to clip to (clip = true)")
        self.model, self.diffusion, self.clip, self.threshold = model, diffusion, clip, threshold
        self.guidance = float(guidance)
        self.guidance_rescale = guidance_rescale
        self.guide, self.guidance_interval = guide, check_interval(guidance_interval)

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None) -> Prediction:
        """x_t: (N, *D); t: (N,) indices into this denoiser's process."""
        out, var_out = self.output(x_t, t, cond)
        log_var = None
        if var_out is not None:
            log_var = self.diffusion.model_log_variance_from_output(var_out, t, x_t.shape)
        if not self.threshold:
            return Prediction(*self.diffusion.predict_x0_eps(x_t, t, out, self.clip), log_var)
        x0 = dynamic_threshold(self.diffusion.predict_x0(x_t, t, out), self.threshold, self.clip)
        return Prediction(x0, self.diffusion.predict_eps_from_x0(x_t, t, x0), log_var)

    def output(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's output (eps, x0 or v), guided when guidance != 0 and `cond` holds labels or
        a guide network is given, and its variance output (None for a fixed variance), split by
        `GaussianDiffusion.split_output`.

        Mixing the outputs is the same as mixing eps (Eq. 6) for every objective: at fixed x_t, eps,
        x0 and v are affine in one another, and the weights 1 + w and -w sum to 1. The variance
        output is not mixed: it is the conditional model's (GLIDE, Nichol et al. 2022)."""
        split = self.diffusion.split_output
        out, var_out = split(self.diffusion.model_output(self.model, x_t, t, cond).float())
        if not self.guidance or (self.guide is None and not (cond and cond.get("y") is not None)):
            return out, var_out
        w = self.guidance_weights(t, out.dim())
        if w is None:  # no sample of the batch inside the guidance interval
            return out, var_out
        if self.guide is None:  # classifier-free: the same network, no y (the null label)
            ref, ref_cond = self.model, {k: v for k, v in cond.items() if k != "y"}
        else:
            ref, ref_cond = self.guide, cond
        out_u, _ = split(self.diffusion.model_output(ref, x_t, t, ref_cond).float())
        guided = out + w * (out - out_u)
        if self.guidance_rescale:  # Lin et al. 2024, Eq. 15-16
            dims = tuple(range(1, out.dim()))
            ratio = out.std(dims, keepdim=True) / guided.std(dims, keepdim=True).clamp(min=1e-12)
            rescaled = guided * ratio
            guided = self.guidance_rescale * rescaled + (1 - self.guidance_rescale) * guided
        return guided, var_out

    def guidance_weights(self, t: torch.Tensor, ndim: int) -> torch.Tensor | float | None:
        """The guidance weight of each sample at its step t: w, or 0 outside the guidance interval
        (shaped to broadcast over ndim dims); None when no sample of the batch is guided."""
        if not self.guidance_interval:
            return self.guidance
        abar = self.diffusion.alphas_cumprod.to(t.device)[t].double()
        sigma = ((1 - abar) / abar).sqrt()
        inside = (sigma > self.guidance_interval[0]) & (sigma <= self.guidance_interval[1])
        if not inside.any():
            return None
        return (self.guidance * inside.float()).view(-1, *[1] * (ndim - 1))

    def respace(self, timesteps: Sequence[float]) -> Denoiser:
        """The same network on a process that visits only `timesteps` (Nichol & Dhariwal 2021, Sec. 4)."""
        return Denoiser(
            self.model, self.diffusion.respace(timesteps), clip=self.clip, threshold=self.threshold,
            guidance=self.guidance, guidance_rescale=self.guidance_rescale, guide=self.guide,
            guidance_interval=self.guidance_interval,
        )  # fmt: skip

    def model_timestep(self, i: int) -> float:
        """The original timestep that step i of this process stands for (-1 below step 0: x0);
        an int on integer grids, a float on fractional (logSNR, Karras) ones."""
        return self.diffusion.timestep_map[i].item() if i >= 0 else -1


def dynamic_threshold(x0: torch.Tensor, percentile: float, clip: tuple[float, float]) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3), centred on the clip range:
    s = the `percentile` quantile of |x0 - centre| per sample, at least the range's half-width h;
    x0 is clamped to centre +- s and scaled back into the range by h / s."""
    centre, half = (clip[0] + clip[1]) / 2, (clip[1] - clip[0]) / 2
    dev = (x0 - centre).flatten(1)
    s = torch.quantile(dev.abs(), percentile, dim=1).clamp(min=half).view(-1, *[1] * (x0.dim() - 1))
    return centre + (x0 - centre).clamp(-s, s) * (half / s)


def sampling_timesteps(
    diffusion: GaussianDiffusion,
    steps: int | None = None,
    start_step: int | None = None,
    grid: str = "uniform",
) -> list[float]:
    """The descending grid a sampler visits: `steps` timesteps over [0, start_step] spaced as `grid`
    (`schedules.time_grid`; "uniform" is the trailing integer grid); default all T from T-1."""
    T = diffusion.num_timesteps
    if steps is not None and not 1 <= int(steps) <= T:
        raise ConfigError(f"the number of sampling steps must be between 1 and T={T}, got {steps}")
    start = T - 1 if start_step is None else int(start_step)
    if not 0 <= start < T:
        raise ConfigError(f"start step must lie in 0..{T - 1}, got {start_step}")
    n = start + 1 if steps is None else min(int(steps), start + 1)
    return time_grid(diffusion.alphas_cumprod.double().numpy(), n, grid, start).tolist()
