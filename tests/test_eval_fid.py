"""Tests for ddpmkit.image_metrics: Fréchet distance against closed forms, improved precision /
recall on distributions whose answer is known, and the classifier summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmkit.eval.fid import (
    class_histogram,
    confident_fraction,
    feature_statistics,
    frechet_distance,
    knn_radii,
    precision_recall,
)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def _random_cov(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = np.random.default_rng(0).normal(size=32), _random_cov(32, 1)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_rotated_commuting_covariances():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: Tr (S1 S2)^(1/2) = sum sqrt(a b)."""
    q = _rotation(16, 3)
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.01, 5, 16), rng.uniform(0.01, 5, 16)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=16)
    expected = np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_scipy_sqrtm_for_generic_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = _random_cov(24, 5), _random_cov(24, 6)
    mu1, mu2 = np.zeros(24), np.full(24, 0.5)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_of_singular_covariances_is_finite_and_nonnegative():
    v = np.random.default_rng(7).normal(size=(10, 3))
    s1, s2 = v @ v.T, np.zeros((10, 10))  # rank 3 and rank 0
    d = frechet_distance(np.zeros(10), s1, np.zeros(10), s2)
    assert d == pytest.approx(np.trace(s1), rel=1e-9)  # W2^2 to a point mass = total variance
    assert frechet_distance(np.zeros(10), s1, np.zeros(10), s1) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_statistics_match_numpy():
    f = np.random.default_rng(8).normal(size=(50, 6)) * [1, 2, 3, 4, 5, 6]
    mu, sigma = feature_statistics(torch.tensor(f, dtype=torch.float32))
    assert mu.dtype == torch.float64 and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu.numpy(), f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f, rowvar=False), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 6)))


def test_precision_recall_same_distribution_is_high_and_disjoint_is_zero():
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(real, fake + 100.0, k=3)
    assert p == 0.0 and r == 0.0


def test_precision_recall_orientation_under_mode_dropping():
    """Fakes from one half of the real distribution: all realistic (precision high), half the
    real data uncovered (recall ~ 0.5). Swapping the two would flip the figures."""
    rng = np.random.default_rng(10)
    real = rng.normal(size=(2000, 2))
    fake = rng.normal(size=(4000, 2))
    fake = fake[fake[:, 0] > 0][:1000]
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9
    assert 0.4 < r < 0.7


def test_knn_radii_are_chunk_independent_and_exclude_the_point_itself():
    x = torch.tensor(np.random.default_rng(11).normal(size=(257, 4)), dtype=torch.float64)
    full = knn_radii(x, 3, chunk=10_000)
    assert torch.allclose(full, knn_radii(x, 3, chunk=7))
    d = torch.cdist(x, x)
    assert torch.allclose(full, d.sort(1).values[:, 3])
    assert (full > 0).all()


def test_class_histogram_and_confident_fraction():
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.2, 0.7, 0.1], [0.1, 0.0, 0.9], [0.0, 0.05, 0.95]])
    assert class_histogram(probs, 3).tolist() == [1, 1, 2]
    assert confident_fraction(probs, 0.9) == pytest.approx(0.75)
    assert confident_fraction(probs, 0.99) == 0.0
    with pytest.raises(ValueError):
        class_histogram(probs, 4)
