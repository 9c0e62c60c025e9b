import numpy as np
import pytest

from ddpmkit.eval.points import distance_with_floor, sliced_wasserstein


def test_sw_of_a_shift_equals_the_projected_shift():
    """SW1(X, X + c) = E_theta |<c, theta>| = |c| * 2/pi in 2-D (mean |cos| over the circle)."""
    x = np.random.default_rng(0).normal(size=(5000, 2))
    c = np.array([3.0, 4.0])
    assert sliced_wasserstein(x, x + c, num_projections=4000) == pytest.approx(5 * 2 / np.pi, rel=0.02)


def test_sw_is_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(400, 2)) + 1
    assert sliced_wasserstein(a, a) == 0
    assert sliced_wasserstein(a, b) == pytest.approx(sliced_wasserstein(b, a))


def test_floor_shrinks_with_n_and_a_bad_model_scores_above_it():
    draw = lambda n, seed: np.random.default_rng(seed).normal(size=(n, 2))  # noqa: E731
    small = distance_with_floor(draw(200, 0), draw)
    large = distance_with_floor(draw(3200, 0), draw)
    assert large["swd_floor"] < 0.5 * small["swd_floor"]  # ~ 1/sqrt(n): 4x fewer -> 1/4
    assert 0.5 < large["swd_ratio"] < 2.0  # a perfect "model" sits at the floor
    wrong = distance_with_floor(draw(3200, 0) * 1.3, draw)
    assert wrong["swd_ratio"] > 3
