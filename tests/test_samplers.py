"""Samplers driven by the exact noise predictor of Gaussian data.

For x0 ~ N(mu, s^2 I) the optimal eps-predictor is known in closed form:
    E[eps | x_t] = sqrt(1 - ab_t) (x_t - sqrt(ab_t) mu) / (ab_t s^2 + 1 - ab_t).
A correct sampler driven by it must return samples with mean mu and variance s^2, up to the
sampler's own discretisation error (small for the step counts used) and Monte-Carlo error
(standard error of a variance estimate: s^2 sqrt(2/N)).
"""

import math

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion, extract
from ddpmkit.errors import ConfigError
from ddpmkit.samplers import ddim_sample, ddpm_sample, sample, sampling_process, sdedit
from ddpmkit.schedules import make_beta_schedule, spaced_timesteps

MU, S, N, D = 1.5, 0.5, 20000, 2


def gaussian_eps_model(diffusion: GaussianDiffusion):
    def model(x_t, t):  # t are original timesteps
        ab = extract(diffusion.alphas_cumprod.double(), t, x_t.shape)
        return (torch.sqrt(1 - ab) * (x_t.double() - torch.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)).float()

    return model


def chain_moments(ab_all: np.ndarray, steps: int | None, kind: str, eta: float = 0.0) -> tuple[float, float]:
    """Exact mean/variance of the sampler's output: with the exact predictor, every step is linear
    in x_t plus Gaussian noise, x_s = A x_t + B + sigma z, so the moments follow in closed form.
    Computed from alpha_bar alone with the paper's formulas (Ho et al. Eqs. 6-7, DDIM Eqs. 12, 16)."""
    ts = spaced_timesteps(len(ab_all), steps or len(ab_all))
    m, v = 0.0, 1.0  # x_T ~ N(0, I)
    for k, t in enumerate(ts):
        ab = ab_all[t]
        ab_prev = ab_all[ts[k + 1]] if k + 1 < len(ts) else 1.0
        var_t = ab * S**2 + 1 - ab
        kx, ke = (
            math.sqrt(ab) * S**2 / var_t,
            math.sqrt(1 - ab) / var_t,
        )  # x0, eps = mu/0 + k (x - sqrt(ab) mu)
        last = k + 1 == len(ts)
        if kind == "ddim":
            sig2 = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            ce = math.sqrt(max(1 - ab_prev - sig2, 0.0))
            A = math.sqrt(ab_prev) * kx + ce * ke
            B = math.sqrt(ab_prev) * (MU - kx * math.sqrt(ab) * MU) - ce * ke * math.sqrt(ab) * MU
        else:
            beta = 1 - ab / ab_prev
            c1, c2 = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
            A, B = c1 * kx + c2, c1 * (MU - kx * math.sqrt(ab) * MU)
            sig2 = beta * (1 - ab_prev) / (1 - ab) if kind == "fixed_small" else beta
        m, v = A * m + B, A * A * v + (0.0 if last else sig2)
    return m, v


def check_moments(x: torch.Tensor, mean: float, var: float):
    """Sample moments within 5 standard errors of the expected ones (SE of a variance: var sqrt(2/n))."""
    x = x.double()
    n = x.shape[0] * x.shape[1]
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n), (float(x.mean()), mean)
    assert abs(float(x.var(0).mean()) - var) < 5 * var * math.sqrt(2 / n), (float(x.var(0).mean()), var)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_beta_schedule("linear", 1000))


AB = np.cumprod(1 - make_beta_schedule("linear", 1000))


@pytest.mark.parametrize("steps", [None, 100, 20])
def test_ddpm_matches_its_exact_moments(diffusion, steps):
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(
        gaussian_eps_model(diffusion), diffusion, torch.randn(N, D, generator=g), steps=steps, generator=g
    )
    check_moments(x, *chain_moments(AB, steps, "fixed_small"))


@pytest.mark.parametrize("eta,steps", [(0.0, 50), (0.0, 1000), (1.0, 100), (0.5, 10)])
def test_ddim_matches_its_exact_moments(diffusion, eta, steps):
    g = torch.Generator().manual_seed(1)
    x = ddim_sample(
        gaussian_eps_model(diffusion),
        diffusion,
        torch.randn(N, D, generator=g),
        steps=steps,
        eta=eta,
        generator=g,
    )
    check_moments(x, *chain_moments(AB, steps, "ddim", eta))


@pytest.mark.parametrize("steps", [None, 50])
def test_fixed_large_variance(steps):
    large = GaussianDiffusion(make_beta_schedule("linear", 1000), variance="fixed_large")
    g = torch.Generator().manual_seed(2)
    x = ddpm_sample(
        gaussian_eps_model(large), large, torch.randn(N, D, generator=g), steps=steps, generator=g
    )
    check_moments(x, *chain_moments(AB, steps, "fixed_large"))


@pytest.mark.parametrize(
    "kind,steps,eta", [("fixed_small", None, 0), ("ddim", 1000, 0.0), ("ddim", 1000, 1.0)]
)
def test_full_chains_reproduce_the_data(kind, steps, eta):
    """With all T steps the discretisation error is small: the data's mean and variance come back."""
    m, v = chain_moments(AB, steps, kind, eta)
    assert abs(m - MU) < 0.01 and abs(v / S**2 - 1) < 0.02


def test_a_wrong_sampler_is_caught(diffusion):
    """Sanity check of the test itself: dropping the noise of DDPM collapses the variance."""
    g = torch.Generator().manual_seed(3)
    x = ddim_sample(
        gaussian_eps_model(diffusion),
        diffusion,
        torch.randn(N, D, generator=g),
        steps=100,
        eta=0.0,
        generator=g,
    )
    with pytest.raises(AssertionError):
        check_moments(x * 0.9 + MU * 0.1, *chain_moments(AB, 100, "ddim"))


def test_ddim_eta0_is_deterministic_and_eta1_matches_ddpm_variance(diffusion):
    model = gaussian_eps_model(diffusion)
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(4))
    a = ddim_sample(model, diffusion, x, steps=20, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, diffusion, x, steps=20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    # with all steps, eta = 1 is sigma_t^2 = posterior variance (DDIM Eq. 16 vs Ho et al. Eq. 7)
    proc = sampling_process(diffusion, None)
    t = torch.arange(1, 1000)
    ab_t, ab_s = proc.alphas_cumprod[t].double(), proc.alphas_cumprod_prev[t].double()
    sigma2 = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    torch.testing.assert_close(sigma2.float(), proc.posterior_variance[t], rtol=1e-4, atol=1e-9)


def test_same_seed_same_samples(diffusion):
    model = gaussian_eps_model(diffusion)
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(5))
    a = ddpm_sample(model, diffusion, x, steps=30, generator=torch.Generator().manual_seed(7))
    b = ddpm_sample(model, diffusion, x, steps=30, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_callback_sees_every_step(diffusion):
    seen = []
    sample(
        "ddim",
        gaussian_eps_model(diffusion),
        diffusion,
        torch.randn(4, D),
        steps=10,
        callback=lambda d: seen.append((d["i"], d["t"], d["x_t"].shape, d["x0_pred"].shape)),
    )
    assert [s[0] for s in seen] == list(range(10))
    assert seen[0][1] == 999 and seen[-1][1] == 99
    assert all(s[2] == (4, D) and s[3] == (4, D) for s in seen)


def test_start_step_partial_denoising(diffusion):
    """SDEdit from a small t keeps the input close: q then p around the data distribution."""
    x0 = torch.full((N, D), MU) + S * torch.randn(N, D, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(9)
    out = sdedit(gaussian_eps_model(diffusion), diffusion, x0, start_step=100, generator=g)
    assert abs(float(out.double().mean()) - MU) < 0.02 and abs(float(out.double().var()) / S**2 - 1) < 0.05
    corr = float(torch.corrcoef(torch.stack([out[:, 0], x0[:, 0]]))[0, 1])
    assert corr > 0.5, corr  # the input's identity survives a small t ...
    far = sdedit(gaussian_eps_model(diffusion), diffusion, x0, start_step=999, generator=g)
    assert abs(float(torch.corrcoef(torch.stack([far[:, 0], x0[:, 0]]))[0, 1])) < 0.05  # ... not t = T


def test_clip_range(diffusion):
    x = ddpm_sample(gaussian_eps_model(diffusion), diffusion, torch.randn(64, D), steps=20, clip=(-1.0, 1.0))
    assert float(x.max()) <= 1.0 + 1e-5


@pytest.mark.parametrize("steps", [0, 1001])
def test_bad_step_counts(diffusion, steps):
    with pytest.raises(ConfigError):
        ddpm_sample(gaussian_eps_model(diffusion), diffusion, torch.randn(2, D), steps=steps)


def test_unknown_sampler(diffusion):
    with pytest.raises(ConfigError):
        sample("euler", gaussian_eps_model(diffusion), diffusion, torch.randn(2, D))
