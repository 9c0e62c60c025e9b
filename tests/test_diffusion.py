"""The diffusion process against closed forms."""

import math

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, extract, normal_kl
from ddpmkit.errors import ConfigError
from ddpmkit.schedules import make_beta_schedule


def make(T=100, **kw):
    return GaussianDiffusion(make_beta_schedule("linear", T), **kw)


def test_extract_broadcasts_for_points_and_images():
    a = torch.arange(10.0)
    t = torch.tensor([1, 7])
    assert extract(a, t, (2, 2)).shape == (2, 1)
    out = extract(a, t, (2, 3, 8, 8))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [1.0, 7.0]


@pytest.mark.parametrize("t", [0, 10, 50, 99])
def test_q_sample_moments(t):
    """x_t | x0 ~ N(sqrt(ab) x0, 1 - ab): sample mean/variance within 5 standard errors."""
    d = make()
    n = 200_000
    g = torch.Generator().manual_seed(t)
    x0 = torch.full((n, 1), 0.7)
    x_t = d.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g)).double()
    ab = float(d.alphas_cumprod[t])
    var = 1 - ab
    assert abs(x_t.mean() - math.sqrt(ab) * 0.7) < 5 * math.sqrt(var / n)
    assert abs(x_t.var() - var) < 5 * var * math.sqrt(2 / n)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x0) from Bayes' rule on the Gaussians q(x_{t-1}|x0) and q(x_t|x_{t-1})."""
    d = make(T=200)
    b = make_beta_schedule("linear", 200)
    ab = np.cumprod(1 - b)
    x0, x_t = torch.tensor([[0.3], [-1.2]]), torch.tensor([[1.1], [0.4]])
    for t in [1, 5, 100, 199]:
        prec = 1 / (1 - ab[t - 1]) + (1 - b[t]) / b[t]
        mean = (
            math.sqrt(ab[t - 1]) * x0.double() / (1 - ab[t - 1]) + math.sqrt(1 - b[t]) * x_t.double() / b[t]
        ) / prec
        m, v, logv = d.q_posterior_mean_variance(x0, x_t, torch.full((2,), t))
        np.testing.assert_allclose(m.numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v.flatten().numpy(), 1 / prec, rtol=1e-5)
        np.testing.assert_allclose(logv.flatten().numpy(), math.log(1 / prec), rtol=1e-5)


def test_posterior_at_t0_is_x0_with_clipped_log_variance():
    d = make()
    x0, x_t = torch.randn(4, 2), torch.randn(4, 2)
    m, v, logv = d.q_posterior_mean_variance(x0, x_t, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(m, x0)
    assert float(v.max()) == 0 and torch.isfinite(logv).all()
    assert float(logv[0]) == pytest.approx(float(d.posterior_log_variance_clipped[1]))


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_parameterisations_recover_x0(objective):
    """Given the true target, predict_x0 returns x0 exactly (eps, x0 and v objectives)."""
    d = make(objective=objective)
    x0, eps = torch.randn(6, 3).double(), torch.randn(6, 3).double()
    t = torch.tensor([0, 1, 10, 50, 90, 99])
    x_t = d.q_sample(x0, t, eps)
    target = d.training_target(x0, t, eps)
    torch.testing.assert_close(d.predict_x0(x_t, t, target).double(), x0, atol=1e-4, rtol=1e-4)


def test_training_loss_is_zero_for_the_true_noise():
    d = make()
    x0 = torch.randn(8, 2)
    t = torch.randint(0, 100, (8,))
    eps = torch.randn(8, 2)
    x_t = d.q_sample(x0, t, eps)

    def oracle(x, tt):  # the eps that produced x from x0
        return (x - extract(d.sqrt_alphas_cumprod, tt, x.shape) * x0) / extract(
            d.sqrt_one_minus_alphas_cumprod, tt, x.shape
        )

    loss = d.training_loss(oracle, x0, t, eps)
    assert loss.shape == (8,) and float(loss.max()) < 1e-8
    torch.testing.assert_close(oracle(x_t, t), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", ["l2", "l1", "huber"])
def test_losses(loss):
    d = make(loss_type=loss)
    x0, eps = torch.zeros(3, 2), torch.zeros(3, 2)
    const = lambda x, t: torch.full_like(x, 2.0)  # noqa: E731 (error 2 everywhere)
    out = d.training_loss(const, x0, torch.tensor([1, 2, 3]), eps)
    expected = {"l2": 4.0, "l1": 2.0, "huber": 1.5}[loss]  # huber(2, delta=1) = 2 - 0.5
    torch.testing.assert_close(out, torch.full((3,), expected))


def test_variance_options():
    small, large = make(variance="fixed_small"), make(variance="fixed_large")
    torch.testing.assert_close(small.model_variance[1:], small.posterior_variance[1:])
    torch.testing.assert_close(large.model_variance[1:], large.betas[1:])


@pytest.mark.parametrize(
    "kw", [{"objective": "score"}, {"loss_type": "l3"}, {"variance": "learned_sigma"},
           {"variance": "learned"}, {"loss_type": "hybrid"}, {"decoder": "bernoulli"}],
)  # fmt: skip
def test_unknown_options(kw):
    with pytest.raises(ConfigError):
        make(**kw)


def test_respace_preserves_marginals():
    d = make(T=1000)
    keep = [0, 99, 499, 999]
    r = d.respace(keep)
    torch.testing.assert_close(r.alphas_cumprod, d.alphas_cumprod[keep])
    assert r.timestep_map.tolist() == keep


def test_normal_kl_closed_form():
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    expected = math.log(2.0) + (1 + 1) / (2 * 4) - 0.5
    assert float(kl) == pytest.approx(expected)


def test_discretized_likelihood_sums_to_one():
    """The 256 bins of the decoder are a probability distribution."""
    x = torch.linspace(-1, 1, 256)
    for mean, log_scale in [(0.0, -2.0), (0.9, -4.0), (-0.3, 0.5)]:
        logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-4)


def _x0_error_model(d, x0, delta, objective):
    """A model whose prediction, in the objective's own terms, implies x0_hat = x0 + delta exactly."""

    def model(x_t, t):
        x0_hat = x0 + delta
        eps_hat = d.predict_eps_from_x0(x_t, t, x0_hat)
        if objective == "eps":
            return eps_hat
        if objective == "x0":
            return x0_hat
        return (
            extract(d.sqrt_alphas_cumprod, t, x_t.shape) * eps_hat
            - extract(d.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * x0_hat
        )

    return model


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["plain", "min_snr", "p2"])
def test_loss_weighting_is_a_weighting_of_the_x0_error(objective, weighting):
    """An error delta on x0 costs SNR |delta|^2 on eps, (SNR + 1) |delta|^2 on v (Salimans & Ho 2022);
    min_snr / p2 turn every objective into min(SNR, gamma) / SNR (1 + SNR)^-gamma times |delta|^2."""
    gamma = 5.0 if weighting == "min_snr" else 1.0
    d = make(T=1000, objective=objective, weighting=weighting, weighting_gamma=gamma)
    t = torch.tensor([5, 50, 200, 400, 600, 800, 950])
    x0, eps = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    delta = torch.full((7, 2), 0.1, dtype=torch.float64)
    loss = d.training_loss(_x0_error_model(d, x0, delta, objective), x0, t, eps)
    snr = (d.alphas_cumprod / (1 - d.alphas_cumprod)).double()[t]
    own = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[objective]
    wanted = {"plain": own, "min_snr": snr.clamp(max=gamma), "p2": snr / (1 + snr) ** gamma}[weighting]
    torch.testing.assert_close(loss.double(), wanted * 0.01, rtol=2e-3, atol=0)


def test_min_snr_weights_cap_the_low_noise_steps():
    d = make(T=1000, objective="eps", weighting="min_snr", weighting_gamma=5.0)
    snr = d.alphas_cumprod / (1 - d.alphas_cumprod)
    torch.testing.assert_close(d.loss_weight, torch.clamp(5.0 / snr, max=1.0))
    assert d.loss_weight[0] < 1e-3 and d.loss_weight[-1] == 1.0  # t = 0 has SNR ~ 1e4
    torch.testing.assert_close(d.respace([0, 500, 999]).loss_weight, d.loss_weight[[0, 500, 999]])
