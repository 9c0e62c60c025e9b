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

from ddpmkit.config import SAMPLERS, SampleConfig
from ddpmkit.denoiser import Denoiser, sampling_timesteps
from ddpmkit.diffusion import GaussianDiffusion, extract
from ddpmkit.errors import ConfigError
from ddpmkit.samplers import sample, sdedit
from ddpmkit.schedules import make_beta_schedule, spaced_timesteps

MU, S, N, D = 1.5, 0.5, 20000, 2
MU_BY_LABEL = torch.tensor([-1.0, 2.0], dtype=torch.float64)  # class-conditional Gaussians


def gaussian_eps_model(diffusion: GaussianDiffusion):
    """The exact eps-predictor of N(mu, S^2 I) data; mu = MU, or MU_BY_LABEL[y] given labels y."""

    def model(x_t, t, y=None):  # t are original timesteps
        ab = extract(diffusion.alphas_cumprod.double(), t, x_t.shape)
        mu = MU if y is None else MU_BY_LABEL[y].reshape(-1, *[1] * (x_t.ndim - 1))
        return (torch.sqrt(1 - ab) * (x_t.double() - torch.sqrt(ab) * mu) / (ab * S**2 + 1 - ab)).float()

    return model


def ddpm_sample(model, diffusion, x, *, steps=None, clip=None, generator=None, **kw):
    options = SampleConfig(sampler="ddpm", steps=steps)
    return sample(model, diffusion, x, options, clip=clip, generator=generator, **kw)


def ddim_sample(model, diffusion, x, *, steps=None, eta=0.0, generator=None, **kw):
    return sample(
        model, diffusion, x, SampleConfig(sampler="ddim", steps=steps, eta=eta), generator=generator, **kw
    )


def chain_moments(
    ab_all: np.ndarray, steps: int | None, kind: str, eta: float = 0.0, mu: float = MU
) -> tuple[float, float]:
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
            B = math.sqrt(ab_prev) * (mu - kx * math.sqrt(ab) * mu) - ce * ke * math.sqrt(ab) * mu
        else:
            beta = 1 - ab / ab_prev
            c1, c2 = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
            A, B = c1 * kx + c2, c1 * (mu - kx * math.sqrt(ab) * mu)
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
    proc = diffusion.respace(sampling_timesteps(diffusion))
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
    ddim_sample(
        gaussian_eps_model(diffusion),
        diffusion,
        torch.randn(4, D),
        steps=10,
        callback=lambda d: seen.append((d["i"], d["t"], d["x_t"].shape, d["x0_pred"].shape, d["t_next"])),
    )
    assert [s[0] for s in seen] == list(range(10))
    assert seen[0][1] == 999 and seen[-1][1] == 99
    assert [s[4] for s in seen] == [s[1] for s in seen[1:]] + [-1]  # each step reaches the next t
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
    with pytest.raises(ConfigError, match="choose one of ddpm, ddim"):
        SampleConfig(sampler="no-such-sampler")


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_class_labels_reach_the_model(diffusion, name):
    """cond={"y": labels} is passed to the model at every step: each class gets its own mean."""
    g = torch.Generator().manual_seed(10)
    y = torch.arange(N) % 2
    x = sample(gaussian_eps_model(diffusion), diffusion, torch.randn(N, D, generator=g),
               SampleConfig(sampler=name, steps=50), cond={"y": y}, generator=g)  # fmt: skip
    kind = "ddim" if name == "ddim" else "fixed_small"
    for label in (0, 1):
        m, v = chain_moments(AB, 50, kind, mu=float(MU_BY_LABEL[label]))
        check_moments(x[y == label], m, v)


def test_hook_replaces_the_state_and_the_callback_sees_it(diffusion):
    """The per-step hook may return a new x (inpainting pastes known values there)."""
    seen = []

    def hook(d):
        assert 0.0 < d["alpha_bar_next"] <= 1.0
        return torch.where(torch.arange(D) == 0, torch.tensor(7.0), d["x_t"])  # pin coordinate 0

    record = lambda d: seen.append((d["x_t"][:, 0].clone(), d["alpha_bar_next"]))  # noqa: E731
    x = ddpm_sample(
        gaussian_eps_model(diffusion), diffusion, torch.randn(64, D), steps=10, hook=hook, callback=record
    )
    assert torch.all(x[:, 0] == 7.0) and all(torch.all(v == 7.0) for v, _ in seen)
    assert seen[-1][1] == 1.0 and x[:, 1].std() > 0.1  # the final sample is x0; the rest still varies


def one_step_x0(denoiser, x, *, cond=None, generator=None, callback=None, hook=None, progress=False):
    """A sampler registered at run time: jump from x_T to the predicted x0 in one model call."""
    t = torch.full((x.shape[0],), denoiser.num_timesteps - 1, dtype=torch.long)
    return denoiser(x, t, cond).x0


def test_a_sampler_registered_at_runtime_is_validated_dispatched_and_offered(diffusion, monkeypatch):
    """Adding a sampler is one function plus one registry line."""
    monkeypatch.setitem(SAMPLERS, "one_step_x0", one_step_x0)
    from ddpmkit.cli import build_parser

    assert "one_step_x0" in build_parser().parse_args(["sample", "RUN", "--sampler", "one_step_x0"]).sampler
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(11))
    out = sample(gaussian_eps_model(diffusion), diffusion, x, SampleConfig(sampler="one_step_x0"))
    ab = float(diffusion.alphas_cumprod[-1])  # E[x0 | x_T] for Gaussian data, in closed form
    expected = MU + math.sqrt(ab) * S**2 / (ab * S**2 + 1 - ab) * (x.double() - math.sqrt(ab) * MU)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_the_denoiser_gives_the_same_x0_and_eps_for_every_objective(diffusion, objective):
    """An x0- or v-model of the same data predicts what the eps-model predicts (the adapter's job)."""
    eps_model = gaussian_eps_model(diffusion)
    other = GaussianDiffusion(make_beta_schedule("linear", 1000), objective=objective)

    def model(x_t, t):  # the exact x0 / v of the same Gaussian data, from the exact eps
        eps = eps_model(x_t, t).double()
        x0 = diffusion.predict_x0_from_eps(x_t.double(), t, eps)
        return (x0 if objective == "x0" else diffusion.velocity(x0, t, eps)).float()

    x_t = torch.randn(256, D, generator=torch.Generator().manual_seed(12))
    t = torch.randint(0, 1000, (256,), generator=torch.Generator().manual_seed(13))
    a, b = Denoiser(eps_model, diffusion)(x_t, t), Denoiser(model, other)(x_t, t)
    torch.testing.assert_close(b.x0, a.x0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(b.eps, a.eps, rtol=1e-3, atol=1e-3)
