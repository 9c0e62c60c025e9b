"""Noise schedules beta_1..beta_T and timestep grids for fast samplers.

Linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021, Eq. 17), quadratic and sigmoid (as in the
common DDPM notebooks / GeoDiff). Everything is computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .config import SCHEDULES, check_choice
from .errors import ConfigError

BETA_START, BETA_END = 1e-4, 0.02  # Ho et al. 2020 endpoints for T = 1000
MAX_BETA = 0.999  # Nichol & Dhariwal 2021: clip to avoid singularities near t = T


def make_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas of a named schedule for any T >= 1, as a float64 array of shape (T,).

    Linear, quadratic and sigmoid endpoints are rescaled by 1000/T (improved-diffusion) so that the
    total noise sum(beta) stays ~constant: alpha_bar_T ends near 0 for small T too.
    """
    check_choice("schedule", name, SCHEDULES)
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ConfigError(f"the number of diffusion steps T must be an integer >= 1, got {num_timesteps}")
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


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float]) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1]: beta_t = 1 - alpha_bar(t/T) / alpha_bar((t-1)/T)."""
    T = num_timesteps
    betas = [min(1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T), MAX_BETA) for i in range(T)]
    return check_betas(np.asarray(betas, dtype=np.float64))


def check_betas(betas: np.ndarray) -> np.ndarray:
    """Validate 0 < beta <= 1 (with an exception, not an assert)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or len(betas) == 0 or not np.all((betas > 0) & (betas <= 1)):
        raise ConfigError("betas must be a non-empty 1-D array with 0 < beta <= 1")
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
