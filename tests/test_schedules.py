import numpy as np
import pytest

from ddpmkit.errors import ConfigError
from ddpmkit.schedules import SCHEDULES, make_beta_schedule, spaced_timesteps


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
