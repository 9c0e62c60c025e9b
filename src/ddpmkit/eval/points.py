"""Distances between generated and real 2-D point sets, with their noise floor.

We use the sliced Wasserstein-1 distance (SW1, Rabin et al. 2011; Bonneel et al. 2015): the mean
over random directions of the 1-D Wasserstein-1 distance between the projected point sets, which
is exact in 1-D from sorted samples. Why SW1 rather than MMD: it is in the data's own units, is
never negative (so "x times the noise floor" is meaningful; unbiased MMD^2 estimates go negative
near 0), has no kernel bandwidth to choose, and costs O(n log n) per direction.

A distance between finite samples is never 0, even between two draws of the real data: that
value, the *noise floor*, is the best a perfect model can score at this sample size, so every
score is reported beside it (and as a ratio to it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def _directions(num: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(num, dim, generator=g, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, num_projections: int = 512, seed: int = 0) -> float:
    """SW1 between point sets a (n, D) and b (m, D): mean over directions of the 1-D W1 distance.

    Unequal sizes are handled by comparing quantile functions on a common grid of max(n, m) levels.
    """
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"point sets must be (n, D) and (m, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    d = _directions(num_projections, a.shape[1], seed)  # (P, D)
    pa, pb = (a @ d.T).sort(0).values, (b @ d.T).sort(0).values  # (n, P), (m, P)
    if len(a) != len(b):
        q = (torch.arange(max(len(a), len(b)), dtype=torch.float64) + 0.5) / max(len(a), len(b))
        pa, pb = torch.quantile(pa, q, dim=0), torch.quantile(pb, q, dim=0)
    return float((pa - pb).abs().mean())


def distance_with_floor(
    samples: np.ndarray, draw_real: Callable[[int, int], np.ndarray], *, repeats: int = 5, seed: int = 1000
) -> dict[str, float]:
    """SW1 of `samples` to fresh real draws, and the noise floor SW1(real, real'), same sizes.

    Args:
        samples: (n, D) generated points.
        draw_real: draw_real(n, seed) -> (n, D) independent real points.
        repeats: both figures are averaged over this many independent real draws.
    Returns:
        {"swd": ..., "swd_floor": ..., "swd_ratio": swd / floor, "n": n}
    """
    n = len(samples)
    score = [sliced_wasserstein(samples, draw_real(n, seed + i), seed=i) for i in range(repeats)]
    floor = [
        sliced_wasserstein(draw_real(n, seed + 100 + 2 * i), draw_real(n, seed + 101 + 2 * i), seed=i)
        for i in range(repeats)
    ]
    s, f = float(np.mean(score)), float(np.mean(floor))
    return {"swd": s, "swd_floor": f, "swd_ratio": s / f, "n": n}
