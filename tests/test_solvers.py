"""Few-step solvers (DPM-Solver++, UniPC, Euler/Heun) driven by the exact denoiser of Gaussian data.

For x0 ~ N(mu, s^2) per coordinate, E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu),
and the probability-flow ODE keeps z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) constant. So the
exact ODE solution from any start is known, and a solver's error is measured without Monte-Carlo
noise: for a solver of order p, doubling the steps on a fixed grid (logSNR-uniform) divides the
error by ~2^p once the steps are small. The SDE samplers are checked on their output moments.
"""

import math

import pytest
import torch

from ddpmkit.config import SAMPLERS, SampleConfig
from ddpmkit.denoiser import Denoiser, dynamic_threshold, sampling_timesteps
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.samplers import nfe, sample
from ddpmkit.schedules import alphas_cumprod_at, make_beta_schedule

MU, S = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.8])
ODE_ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpm++2m": 2, "dpm++3m": 3, "unipc": 3, "unipc-bh1": 3}
STOCHASTIC = {"ddpm": {}, "ddim": {"eta": 1.0}, "dpm++2m-sde": {}}


def exact_x0_model(diffusion: GaussianDiffusion):
    """The exact x0-predictor E[x0 | x_t] of the data, at any (fractional) timestep."""
    ac = diffusion.alphas_cumprod.double().numpy()

    def model(x, t):
        ab = torch.as_tensor(alphas_cumprod_at(ac, t.double().numpy())).float().view(-1, 1)
        return MU + ab.sqrt() * S**2 / (ab * S**2 + 1 - ab) * (x - ab.sqrt() * MU)

    return model


def level(diffusion, t):
    ab = float(alphas_cumprod_at(diffusion.alphas_cumprod.double().numpy(), [t])[0])
    return math.sqrt(ab), math.sqrt(1 - ab)


def on_marginal(diffusion, t, z):
    """The point of the data's marginal at timestep t with standardised coordinate z."""
    a, s = level(diffusion, t)
    return a * MU + (a * a * S**2 + s * s).sqrt() * z


@pytest.fixture(scope="module", params=["linear", "cosine"])
def diffusion(request):
    return GaussianDiffusion(make_beta_schedule(request.param, 1000), objective="x0")


def ode_error(diffusion, name, steps, grid="logsnr", n=500):
    """Mean |solver - exact| of the samples, from the same start on the data's marginal. The exact
    reference is the ODE solution at the grid's last timestep followed by the same final denoising
    step every solver takes there (x = x0-prediction), so only the integration error counts."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    ts = sampling_timesteps(diffusion, steps, None, grid)
    model = exact_x0_model(diffusion)
    out = sample(
        model, diffusion, on_marginal(diffusion, ts[0], z), SampleConfig(sampler=name, steps=steps, grid=grid)
    )
    ref = model(on_marginal(diffusion, ts[-1], z), torch.full((n,), ts[-1]))
    return (out - ref).abs().mean().item()


@pytest.mark.parametrize("name", ODE_ORDERS)
def test_ode_solvers_converge_at_their_order(diffusion, name):
    errors = [ode_error(diffusion, name, steps) for steps in (40, 80, 160)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    # Measured on both schedules: 0.97-1.00 (first order), 1.97-2.08 (second), 3.0-4.1 (third).
    assert min(orders) > ODE_ORDERS[name] - 0.25, (errors, orders)


@pytest.mark.parametrize("grid", ["uniform", "karras"])
@pytest.mark.parametrize("name", ODE_ORDERS)
def test_ode_solvers_converge_on_every_grid(diffusion, name, grid):
    errors = [ode_error(diffusion, name, steps, grid) for steps in (20, 80, 320)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.2 * errors[0], errors


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sde_samplers_reproduce_the_data_moments(diffusion, name):
    """From the exact marginal at T-1 with 500 steps: mean and variance of 20,000 samples per coordinate
    within 5 standard errors (s / sqrt(n) and s^2 sqrt(2 / n)); the measured discretisation bias at
    this step count is below 3.3 standard errors of the variance (ancestral sampling with the
    posterior variance slightly underestimates it)."""
    n, g = 20000, torch.Generator().manual_seed(1)
    options = SampleConfig(sampler=name, steps=500, **STOCHASTIC[name])
    x_T = on_marginal(diffusion, 999, torch.randn(n, 2, generator=g))
    out = sample(exact_x0_model(diffusion), diffusion, x_T, options, generator=g)
    assert ((out.mean(0) - MU).abs() < 5 * S / math.sqrt(n)).all()
    assert ((out.var(0) - S**2).abs() < 5 * S**2 * math.sqrt(2 / n)).all()


def test_first_order_sde_dpm_solver_is_ancestral_ddpm(diffusion):
    """SDE-DPM-Solver++(1) is DDPM with the posterior variance (Lu et al. 2022b): with the same noise,
    one step of each from the same state agrees."""
    from ddpmkit.samplers import ddpm_sample, dpmpp_sample

    den = Denoiser(exact_x0_model(diffusion), diffusion).respace([999, 500])
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    calls = []

    def first_step(info):  # stop after step 0 by recording its state
        calls.append(info["x_t"].clone())

    for fn, kw in ((ddpm_sample, {}), (dpmpp_sample, {"order": 1, "stochastic": True})):
        fn(den, x, generator=torch.Generator().manual_seed(3), callback=first_step, **kw)
    torch.testing.assert_close(calls[0], calls[2], rtol=1e-4, atol=1e-5)


class CountingModel:
    def __init__(self, diffusion):
        self.model, self.calls = exact_x0_model(diffusion), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("grid", ["uniform", "logsnr", "karras"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_model_calls_are_counted_exactly(name, grid):
    diffusion = GaussianDiffusion(make_beta_schedule("cosine", 100), objective="x0")
    for steps in (1, 2, 3, 5, 10, 100):
        model = CountingModel(diffusion)
        options = SampleConfig(sampler=name, steps=steps, grid=grid)
        sample(model, diffusion, torch.randn(4, 2), options, generator=torch.Generator().manual_seed(0))
        expected = 2 * steps - 1 if name == "heun" else steps
        start = getattr(SAMPLERS[name], "start", None)  # consistency: from sigma = 80, below T - 1
        if start is not None:
            expected = min(steps, start(diffusion.alphas_cumprod) + 1)
            assert model.calls == expected <= nfe(options, 100), (name, grid, steps)
            continue
        assert model.calls == nfe(options, 100) == expected, (name, grid, steps)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_reports_every_step_and_honours_the_hook(name):
    """The callback sees each step once with t_next < t (GIFs and trajectories need it), and the hook's
    replacement is the state the sampler carries on from (inpainting needs it)."""
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 50), objective="x0")
    seen = []

    def hook(info):
        seen.append((info["i"], info["t"], info["t_next"]))
        return torch.zeros_like(info["x_t"]) if info["t_next"] == -1 else None

    options = SampleConfig(sampler=name, steps=6, grid="logsnr")
    out = sample(exact_x0_model(diffusion), diffusion, torch.randn(8, 2), options, hook=hook)
    assert [s[0] for s in seen] == list(range(6)) and all(t > t_next for _, t, t_next in seen)
    assert seen[-1][2] == -1 and (out == 0).all()


def test_dynamic_threshold():
    x0 = torch.tensor([[0.2, -0.5, 0.9, 0.1], [3.0, -4.0, 0.5, 0.0]])
    out = dynamic_threshold(x0, 0.99, (-1.0, 1.0))
    torch.testing.assert_close(out[0], x0[0])  # in range: untouched (s = 1)
    s = torch.quantile(x0[1].abs(), 0.99)
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert out.abs().max() <= 1.0
    shifted = dynamic_threshold(x0 * 0.5 + 0.5, 0.99, (0.0, 1.0))  # a [0, 1] range, centred at 1/2
    torch.testing.assert_close(shifted, out * 0.5 + 0.5)


def test_threshold_needs_a_clip_range_and_a_percentile():
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 10))
    with pytest.raises(ConfigError, match="clip"):
        Denoiser(lambda x, t: x, diffusion, threshold=0.99)
    with pytest.raises(ConfigError, match="threshold"):
        SampleConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="grid"):
        SampleConfig(grid="cubic")
