"""Noise schedules beta_1..beta_T and timestep grids for fast samplers.

Linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021, Eq. 17), quadratic and sigmoid (as in the
common DDPM notebooks / GeoDiff). Everything is computed in float64.

Grids (`time_grid`) are descending timesteps a sampler visits, fractional where the grid asks for
noise levels between the model's T discrete ones: there alpha_bar is read off the schedule by
linear interpolation of the log-SNR lambda_t = log(alpha_t / sigma_t) in t, and the network gets
the fractional t (its timestep embedding is continuous), as k-diffusion does for discrete models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .config import GRIDS, MAX_TIMESTEPS, SCHEDULES, check_choice
from .errors import ConfigError

BETA_START, BETA_END = 1e-4, 0.02  # Ho et al. 2020 endpoints for T = 1000
MAX_BETA = 0.999  # Nichol & Dhariwal 2021: clip to avoid singularities near t = T


def make_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas of a named schedule for any T >= 1, as a float64 array of shape (T,).

    Linear, quadratic and sigmoid endpoints are rescaled by 1000/T (improved-diffusion) so that the
    total noise sum(beta) stays ~constant: alpha_bar_T ends near 0 for small T too.
    """
    check_choice("schedule", name, SCHEDULES)
    T = num_timesteps
    try:
        ok = not isinstance(T, bool) and int(T) == T and 1 <= T <= MAX_TIMESTEPS
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError(f"the number of diffusion steps T must be an integer in 1..{MAX_TIMESTEPS}, "
                          f"got {num_timesteps}")  # fmt: skip
    T = int(num_timesteps)
    if name == "cosine":
        return betas_for_alpha_bar(T, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    scale = 1000.0 / T
    b0, b1 = BETA_START * scale, BETA_END * scale
    if name == "linear":
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif name == "quadratic":
        betas = np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2
    else:  # sigmoid
        betas = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T))) * (b1 - b0) + b0
    return check_betas(np.minimum(betas, MAX_BETA))


def schedule_betas(cfg) -> np.ndarray:
    """The betas of a DiffusionConfig: its named schedule at its T, or its explicit `betas` (custom)."""
    return (
        check_betas(np.asarray(cfg.betas)) if cfg.betas else make_beta_schedule(cfg.schedule, cfg.timesteps)
    )


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float]) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1]: beta_t = 1 - alpha_bar(t/T) / alpha_bar((t-1)/T)."""
    T = num_timesteps
    betas = [min(1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T), MAX_BETA) for i in range(T)]
    return check_betas(np.asarray(betas, dtype=np.float64))


def check_betas(betas: np.ndarray) -> np.ndarray:
    """Validate 0 < beta < 1 (with an exception, not an assert): a beta of 1 would make alpha_bar 0
    from there on, and the process's 1 / sqrt(alpha_bar) buffers infinite."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or len(betas) == 0 or not np.all((betas > 0) & (betas < 1)):
        raise ConfigError("betas must be a non-empty 1-D array with 0 < beta < 1")
    if len(betas) > MAX_TIMESTEPS:
        raise ConfigError(f"at most {MAX_TIMESTEPS} betas (T), got {len(betas)}")
    return betas


def spaced_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """Descending 'trailing' grid of S timesteps out of T that starts at t = T-1.

    E.g. T=1000, S=10 -> [999, 899, ..., 99] (Lin et al. 2024, "Common diffusion noise schedules
    and sample steps are flawed", Table 2): the first step always sees the noisiest t.
    """
    T, S = int(num_timesteps), int(num_steps)
    if S < 1 or S > T:
        raise ConfigError(f"the number of sampling steps must be between 1 and T={T}, got {num_steps}")
    grid = np.round(T - np.arange(S) * (T / S)).astype(np.int64) - 1  # T-1, ..., >= 0
    return sorted({int(t) for t in grid}, reverse=True)


# ----- sampling grids -------------------------------------------------------------------------------
KARRAS_RHO = 7.0  # Karras et al. 2022, Eq. 5: rho = 7 spends more steps at low noise


def log_snr(alphas_cumprod) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(alpha_bar / (1 - alpha_bar)), decreasing in t."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    return 0.5 * (np.log(ac) - np.log1p(-ac))


def alphas_cumprod_at(alphas_cumprod, timesteps) -> np.ndarray:
    """alpha_bar at fractional timesteps: lambda interpolated linearly between integer t, so that
    integer t give the schedule's own values and alpha_bar = sigmoid(2 lambda) in between."""
    lam = np.interp(
        np.asarray(timesteps, dtype=np.float64), np.arange(len(alphas_cumprod)), log_snr(alphas_cumprod)
    )
    return 1.0 / (1.0 + np.exp(-2.0 * lam))


def timesteps_at_log_snr(alphas_cumprod, lam) -> np.ndarray:
    """The inverse of `alphas_cumprod_at` in lambda: fractional t at log-SNR `lam` (clamped to 0..T-1)."""
    lam_t = log_snr(alphas_cumprod)  # decreasing: interpolate on -lambda
    return np.interp(-np.asarray(lam, dtype=np.float64), -lam_t, np.arange(len(lam_t), dtype=np.float64))


def time_grid(alphas_cumprod, steps: int, kind: str = "uniform", start: int | None = None) -> np.ndarray:
    """Descending timesteps (float64) of a `steps`-point sampling grid from `start` (default T-1).

    Every kind spaces steps + 1 points from `start` down to t = 0 and drops the last one: the final
    step jumps from the grid's last point straight to the data (x = predicted x0), so no model call
    is spent on the negligible step from t = 0 (sigma ~ 1e-2) to sigma = 0.
    uniform: equal steps in t, the trailing integer grid of `spaced_timesteps` (Lin et al. 2024).
    logsnr: equal steps in lambda (Lu et al. 2022, DPM-Solver Sec. 3.3).
    karras: sigma = exp(-lambda) (the VE noise level sigma_t / alpha_t) with equal steps in
        sigma^(1/rho) (Karras et al. 2022, Eq. 5), over the model's own sigma range
        (sigma(start) .. sigma(0)) rather than EDM's 0.002..80.
    """
    check_choice("sample.grid", kind, GRIDS)
    T = len(alphas_cumprod)
    start = T - 1 if start is None else int(start)
    if not 0 <= start < T:
        raise ConfigError(f"start step must lie in 0..{T - 1}, got {start}")
    n = int(steps)
    if n < 1:
        raise ConfigError(f"the number of sampling steps must be >= 1, got {steps}")
    if kind == "uniform" or start == 0:
        return np.asarray(spaced_timesteps(start + 1, min(n, start + 1)), dtype=np.float64)
    lam_hi, lam_lo = log_snr(alphas_cumprod)[[start, 0]]  # lambda at the noisiest and cleanest step
    ramp = np.linspace(0.0, 1.0, n + 1)[:-1]
    if kind == "logsnr":
        lam = lam_hi + ramp * (lam_lo - lam_hi)
    else:  # karras, in sigma = exp(-lambda)
        s_max, s_min = np.exp(-lam_hi) ** (1 / KARRAS_RHO), np.exp(-lam_lo) ** (1 / KARRAS_RHO)
        lam = -KARRAS_RHO * np.log(s_max + ramp * (s_min - s_max))  # Eq. 5
    grid = timesteps_at_log_snr(alphas_cumprod, lam)
    grid[0] = start
    return grid
