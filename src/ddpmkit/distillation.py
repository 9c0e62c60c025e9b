"""The math of distillation into few steps, as plain tensor code (no model, data or I/O).

Notation: a state at noise level alpha_bar is z = sqrt(ab) x + sqrt(1 - ab) eps; `ab = 1` is the data.
sigma = sqrt(1 / ab - 1) is the noise level of z / sqrt(ab) = x + sigma eps (EDM's sigma).

- Progressive distillation (Salimans & Ho 2022, Alg. 2): one student step t -> s matches two DDIM
  steps of the teacher t -> t' -> s; the student regresses the x whose single DDIM step lands on the
  teacher's z_s (`progressive_target`), weighted by the truncated SNR, max(SNR, 1) (their Sec. 4).
- Consistency tuning (ECT, Geng et al. 2024): consistency training started from a diffusion model's
  weights, f(z_t, t) pulled towards the stop-gradient f(z_r, r) of the same noise at r < t, where r
  moves from the data (r = 0: the denoising loss) towards t over the curriculum (`consistency_r`), with
  the pseudo-Huber loss of improved consistency training (Song & Dhariwal 2024) weighted 1 / (t - r).
"""

from __future__ import annotations

import math

import torch

# ECT's defaults (Geng et al. 2024, Sec. 3.3): t ~ lognormal(P_mean, P_std) in sigma, and the
# mapping r = t (1 - n(t) / q^stage) with n(t) = 1 + k sigmoid(-b t)
P_MEAN, P_STD = -1.1, 2.0
SIGMA_MAX = 80.0  # the noise level consistency models train up to and sample from (Song et al. 2023)
ECT_Q, ECT_K, ECT_B = 2.0, 8.0, 1.0
HUBER_C_PER_DIM = 0.00054  # c = 0.00054 sqrt(d) (Song & Dhariwal 2024, Sec. 3.3)


SIGMA_DATA = 0.5  # sigma_d of EDM and consistency models (Karras et al. 2022; Song et al. 2023)


def consistency_skip(sigma, sigma_min: float, sigma_data: float = SIGMA_DATA):
    """c_skip(sigma) = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2) (Song et al. 2023, App. C), with
    sigma = sqrt(1 / alpha_bar - 1) the noise level of x_t / sqrt(alpha_bar): 1 exactly at sigma_min
    (an array or a tensor, elementwise)."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def consistency_x0(
    x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor, skip: torch.Tensor
) -> torch.Tensor:
    """The consistency function f(x_t, t) = c_skip x_t / sqrt(alpha_bar) + (1 - c_skip) x0_v, where
    x0_v = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v is the x0 of a v network (Salimans & Ho 2022):
    f(x, t_min) is x (in data scale) exactly, whatever the network says (Song et al. 2023, Eq. 5)."""
    x0_v = alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * v
    return skip * x_t / alpha_bar.sqrt() + (1.0 - skip) * x0_v


def ddim_step(z_t: torch.Tensor, x0: torch.Tensor, ab_t: torch.Tensor, ab_s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from alpha_bar ab_t to ab_s (Song et al. 2021, Eq. 12 with sigma = 0)."""
    eps = (z_t - ab_t.sqrt() * x0) / (1.0 - ab_t).sqrt()
    return ab_s.sqrt() * x0 + (1.0 - ab_s).sqrt() * eps


def progressive_target(
    z_t: torch.Tensor, z_s: torch.Tensor, ab_t: torch.Tensor, ab_s: torch.Tensor
) -> torch.Tensor:
    """The x whose one DDIM step from z_t reaches the teacher's z_s (Salimans & Ho 2022, Alg. 2):
    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t); at s = data, z_s."""
    ratio = ((1.0 - ab_s) / (1.0 - ab_t)).sqrt()  # sigma_s / sigma_t of the VP process
    return (z_s - ratio * z_t) / (ab_s.sqrt() - ratio * ab_t.sqrt())


def truncated_snr_weight(ab: torch.Tensor) -> torch.Tensor:
    """max(SNR, 1) on the x error (Salimans & Ho 2022, Sec. 4: 'truncated SNR' weighting)."""
    return (ab / (1.0 - ab)).clamp(min=1.0)


def lognormal_sigma(u: torch.Tensor) -> torch.Tensor:
    """The u-quantile (u in (0, 1)) of ECT's lognormal(P_MEAN, P_STD) over sigma."""
    return torch.exp(P_MEAN + P_STD * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0))


def consistency_r(sigma: torch.Tensor, stage: int, sigma_min: float) -> torch.Tensor:
    """ECT's r(t) at curriculum stage `stage` (0, 1, ...): t (1 - n(t) / q^stage), at least sigma_min.
    Stage 0 gives r = sigma_min, the data (the denoising loss); each stage halves t - r at large t."""
    n = 1.0 + ECT_K * torch.sigmoid(-ECT_B * sigma)
    return (sigma * (1.0 - n / ECT_Q**stage)).clamp(min=sigma_min)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per example (Song & Dhariwal 2024, Eq. 8), computed as
    d^2 / (sqrt(d^2 + c^2) + c), which does not cancel in float32 when d << c."""
    d2 = (a - b).flatten(1).pow(2).sum(1)
    return d2 / ((d2 + c * c).sqrt() + c)


def huber_c(dims: int, c: float = 0.0) -> float:
    """The pseudo-Huber c: `c`, or 0.00054 sqrt(d) for d-dimensional data when 0."""
    return c or HUBER_C_PER_DIM * math.sqrt(dims)


def top_step(alphas_cumprod: torch.Tensor, sigma_max: float = SIGMA_MAX) -> int:
    """The last timestep whose noise level sigma = sqrt(1 / alpha_bar - 1) is at most `sigma_max`: where
    consistency sampling starts (x there is N(0, I) to within alpha = 1 / sqrt(1 + sigma_max^2))."""
    sigma = (1.0 / alphas_cumprod.double() - 1.0).sqrt()
    return max(0, int((sigma <= sigma_max).sum()) - 1)


def timestep_at_sigma(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The fractional timestep whose noise level is `sigma`, interpolated linearly in log sigma between
    the chain's integer steps (clamped to 0..T-1); networks take fractional t (logSNR grids do too)."""
    log_s = 0.5 * torch.log(1.0 / alphas_cumprod.float() - 1.0)  # increasing in t
    x = torch.maximum(torch.minimum(sigma.float().log(), log_s[-1]), log_s[0])
    i = torch.searchsorted(log_s, x).clamp(1, len(log_s) - 1)
    lo, hi = log_s[i - 1], log_s[i]
    return (i - 1) + (x - lo) / (hi - lo)
