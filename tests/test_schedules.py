import numpy as np
import pytest

from ddpmkit.errors import ConfigError
from ddpmkit.schedules import (
    KARRAS_RHO,
    SCHEDULES,
    alphas_cumprod_at,
    log_snr,
    make_beta_schedule,
    spaced_timesteps,
    time_grid,
    timesteps_at_log_snr,
)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [10, 50, 100, 1000, 4000])
def test_schedule_ends_near_pure_noise(name, T):
    betas = make_beta_schedule(name, T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert np.all(betas > 0) and np.all(betas <= 0.999)
    ab = np.cumprod(1 - betas)
    assert np.all(np.diff(ab) < 0), "alpha_bar must strictly decrease"
    assert ab[-1] < 0.01, f"alpha_bar_T = {ab[-1]:.3g}: the last step is not close to pure noise"


def test_linear_matches_ho_et_al_at_T1000():
    betas = make_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.cumprod(1 - betas)[-1] == pytest.approx(4.04e-5, rel=0.02)  # Ho et al. 2020, Sec. 4


def test_quadratic_is_squared_linspace_of_roots():
    b = make_beta_schedule("quadratic", 1000)
    np.testing.assert_allclose(b, np.linspace(1e-4**0.5, 0.02**0.5, 1000) ** 2)


def test_cosine_follows_alpha_bar_formula():
    T, s = 1000, 0.008
    ab = np.cumprod(1 - make_beta_schedule("cosine", T))
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    expected = f(np.arange(1, T + 1)) / f(0)
    np.testing.assert_allclose(ab[:-50], expected[:-50], rtol=1e-9)  # the tail is where beta clips


def test_seed_notebook_schedule_would_not_reach_noise():
    """The rescaling 1000/T is what makes small T usable: unscaled 1e-4..0.02 at T=100 ends at ~0.36."""
    raw = np.linspace(1e-4, 0.02, 100)
    assert np.prod(1 - raw) > 0.3
    assert np.prod(1 - make_beta_schedule("linear", 100)) < 1e-3


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_bad_T(bad):
    with pytest.raises(ConfigError):
        make_beta_schedule("linear", bad)


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="choose one of"):
        make_beta_schedule("exponential", 100)


@pytest.mark.parametrize("T,S", [(1000, 10), (1000, 7), (1000, 1000), (10, 3), (1000, 1), (999, 333)])
def test_trailing_timesteps(T, S):
    ts = spaced_timesteps(T, S)
    assert ts[0] == T - 1 and len(ts) == S and ts == sorted(ts, reverse=True)
    assert ts[-1] >= 0 and len(set(ts)) == S


def test_spacing_rejects_S_above_T():
    with pytest.raises(ConfigError):
        spaced_timesteps(10, 11)


# ----- sampling grids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [2, 5, 10, 50])
def test_time_grids_span_the_model_range_as_documented(schedule, steps):
    """steps + 1 points from T-1 to 0, equally spaced in t, lambda or sigma^(1/rho), the last dropped."""
    ac = np.cumprod(1 - make_beta_schedule(schedule, 1000))
    lam = log_snr(ac)
    uniform = time_grid(ac, steps, "uniform")
    assert uniform.tolist() == spaced_timesteps(1000, steps)
    for kind in ("logsnr", "karras"):
        grid = time_grid(ac, steps, kind)
        assert len(grid) == steps and grid[0] == 999 and grid[-1] > 0 and np.all(np.diff(grid) < 0)
        lam_grid = np.append(np.interp(grid, np.arange(1000), lam), lam[0])  # + the dropped point t = 0
        if kind == "logsnr":  # equal steps in lambda
            np.testing.assert_allclose(np.diff(lam_grid), (lam[0] - lam[999]) / steps, rtol=1e-6)
        else:  # equal steps in sigma^(1/rho), sigma = e^-lambda (Karras et al. Eq. 5)
            root = np.exp(-lam_grid / KARRAS_RHO)
            np.testing.assert_allclose(np.diff(root), np.diff(root)[0], rtol=1e-6)


def test_a_grid_from_a_start_step_and_bad_grids():
    ac = np.cumprod(1 - make_beta_schedule("linear", 100))
    grid = time_grid(ac, 5, "logsnr", start=40)
    assert grid[0] == 40 and 0 < grid[-1] < 40 and len(grid) == 5
    assert time_grid(ac, 1, "karras").tolist() == [99]
    with pytest.raises(ConfigError, match="grid"):
        time_grid(ac, 5, "cubic")
    with pytest.raises(ConfigError, match="start step"):
        time_grid(ac, 5, "logsnr", start=100)


def test_fractional_timesteps_interpolate_log_snr():
    ac = np.cumprod(1 - make_beta_schedule("cosine", 1000))
    np.testing.assert_allclose(alphas_cumprod_at(ac, np.arange(1000)), ac, rtol=1e-12)
    mid = alphas_cumprod_at(ac, [10.5])[0]
    assert log_snr([mid])[0] == pytest.approx((log_snr(ac)[10] + log_snr(ac)[11]) / 2)
    np.testing.assert_allclose(timesteps_at_log_snr(ac, log_snr(ac)[[3, 500]]), [3, 500])
