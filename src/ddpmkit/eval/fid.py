"""Distances between sets of image features, as plain tensor math (no models, no files).

* Fréchet distance between two Gaussians fitted to features (FID; Heusel et al. 2017):
  d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), computed in float64 with the
  symmetric form Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), which has the same eigenvalues as (S1 S2)^(1/2)
  but needs only `eigh` of symmetric PSD matrices (no complex parts, no scipy).
* Improved precision and recall (Kynkäänniemi et al. 2019): each set's support is estimated as the
  union of balls around its points with radius the distance to their k-th nearest neighbour;
  precision = fraction of generated points inside the real support, recall = fraction of real
  points inside the generated support.
* Classifier summaries: predicted-class histogram and the fraction of confident predictions.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _f64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()


def feature_statistics(feats: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of features.

    Args:
        feats: (N, D) with N >= 2.

    Returns:
        mu: (D,) float64, sigma: (D, D) float64.
    """
    f = _f64(feats)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {tuple(f.shape)}")
    mu = f.mean(0)
    centered = f - mu  # (N, D)
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues become 0."""
    evals, evecs = torch.linalg.eigh(0.5 * (m + m.T))
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances (symmetric PSD; singular is fine).

    Returns:
        ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)), >= 0, in float64.
    """
    mu1, mu2, s1, s2 = _f64(mu1), _f64(mu2), _f64(sigma1), _f64(sigma2)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"statistics do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}, sigma "
            f"{tuple(s1.shape)}, {tuple(s2.shape)}"
        )
    root1 = _psd_sqrt(s1)
    # (S1 S2)^(1/2) is similar to (S1^(1/2) S2 S1^(1/2))^(1/2), so their traces agree
    m = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0).sqrt().sum()
    dist = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2.0 * tr_covmean
    return max(float(dist), 0.0)  # round-off can give -1e-12 for identical statistics


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64 via ||a||^2 + ||b||^2 - 2 a.b."""
    sq = a.square().sum(1, keepdim=True) + b.square().sum(1) - 2.0 * a @ b.T
    return sq.clamp(min=0).sqrt()


def knn_radii(feats: torch.Tensor, k: int, *, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded): (N,)."""
    out = []
    for start in range(0, len(feats), chunk):
        d = _pairwise_distances(feats[start : start + chunk], feats)  # (c, N)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def covered(
    points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Which `points` lie within radii[j] of some centers[j]: (N,) bool."""
    inside = []
    for start in range(0, len(points), chunk):
        d = _pairwise_distances(points[start : start + chunk], centers)  # (c, M)
        inside.append((d <= radii).any(dim=1))
    return torch.cat(inside)


def in_manifold(
    real_feats: ArrayLike, fake_feats: ArrayLike, *, k: int = 3, chunk: int = 1024
) -> torch.Tensor:
    """Which fake features fall inside the real data's k-NN manifold (the balls of precision,
    Kynkäänniemi et al. 2019): (M,) bool. Far from its data a softmax classifier is confidently
    wrong (uniform noise: 98% "confident"); this tells which of its outputs mean anything."""
    real = _f64(real_feats)
    return covered(_f64(fake_feats), real, knn_radii(real, k, chunk=chunk), chunk)


def precision_recall(
    real_feats: ArrayLike, fake_feats: ArrayLike, *, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 3).

    Args:
        real_feats: (N, D) features of real images.
        fake_feats: (M, D) features of generated images; use M = N, since the k-NN radii shrink
            as a set grows.
        k: neighbourhood size (the paper uses 3).
        chunk: rows of the distance matrix computed at a time (memory ~ chunk * max(N, M) * 8 bytes).

    Returns:
        (precision, recall), each in [0, 1].
    """
    real, fake = _f64(real_feats), _f64(fake_feats)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(real.shape)}, {tuple(fake.shape)}")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k = {k} needs more than k points in each set, got {len(real)} and {len(fake)}")
    precision = float(covered(fake, real, knn_radii(real, k, chunk=chunk), chunk).double().mean())
    recall = float(covered(real, fake, knn_radii(fake, k, chunk=chunk), chunk).double().mean())
    return precision, recall


def class_histogram(probs: ArrayLike, num_classes: int) -> torch.Tensor:
    """Counts of the predicted (argmax) class: (num_classes,) int64.

    Args:
        probs: (N, num_classes) class probabilities or logits.
    """
    p = torch.as_tensor(probs)
    if p.ndim != 2 or p.shape[1] != num_classes:
        raise ValueError(f"probs must be (N, {num_classes}), got {tuple(p.shape)}")
    return torch.bincount(p.argmax(1), minlength=num_classes)


def confident_fraction(probs: ArrayLike, threshold: float = 0.9, inside: ArrayLike | None = None) -> float:
    """Fraction of rows whose largest class probability is >= threshold (and, given `inside`, (N,)
    bool from `in_manifold`, that lie in the classifier's domain: only those count).

    Args:
        probs: (N, K) class probabilities (rows sum to 1).
    """
    p = torch.as_tensor(probs)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probs must be (N, K) with N >= 1, got {tuple(p.shape)}")
    confident = p.max(1).values >= threshold
    if inside is not None:
        confident &= torch.as_tensor(inside, dtype=torch.bool)
    return float(confident.double().mean())
