"""Learned reverse-process variances (Improved DDPM, Nichol & Dhariwal 2021): the output split, Eq. 15
at its endpoints, the re-derivation on respaced chains, L_hybrid's stop-gradient, L_vlb, guidance,
and the network whose output width follows the variance option.

The sampling checks reuse the exact eps-predictor of Gaussian data of test_samplers: with it every
ancestral step is linear-Gaussian, so the chain's output moments are known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmkit.config import DiffusionConfig, RunConfig, SampleConfig, override
from ddpmkit.denoiser import Denoiser
from ddpmkit.diffusion import GaussianDiffusion, extract, gaussian_log_likelihood
from ddpmkit.errors import ConfigError
from ddpmkit.models import build_network
from ddpmkit.samplers import sample, variance_note
from ddpmkit.schedules import make_beta_schedule
from ddpmkit.vlb import vb_terms_bpd, vb_terms_from_output

from .test_samplers import AB, D, N, chain_moments, check_moments, gaussian_eps_model

BETAS = make_beta_schedule("linear", 1000)


def with_variance_output(eps_model, var_fn):
    """A learned-variance model: [exact eps, var_fn(t) broadcast like x_t] along dim 1."""

    def model(x_t, t, y=None):
        eps = eps_model(x_t, t, y)
        return torch.cat([eps, var_fn(t, x_t).expand_as(eps)], dim=1)

    return model


def constant(v: float):
    return lambda t, x: torch.full((len(t), *[1] * (x.dim() - 1)), v)


@pytest.mark.parametrize("steps", [None, 50])
@pytest.mark.parametrize("v,kind", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_learned_range_at_its_endpoints_is_the_fixed_variance_chain(steps, v, kind):
    """v = -1 gives beta~_t and v = +1 beta_t (Eq. 15), also on a respaced chain (its betas re-derived)."""
    diffusion = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")
    model = with_variance_output(gaussian_eps_model(diffusion), constant(v))
    g = torch.Generator().manual_seed(5)
    x = sample(model, diffusion, torch.randn(N, D, generator=g), SampleConfig(sampler="ddpm", steps=steps),
               generator=g)  # fmt: skip
    check_moments(x, *chain_moments(AB, steps, kind))


def test_learned_range_log_variance_equals_the_fixed_ones():
    small = GaussianDiffusion(BETAS)
    large = GaussianDiffusion(BETAS, variance="fixed_large")
    learned = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")
    t = torch.arange(1, 1000)
    shape = (len(t), 3)
    lo = learned.model_log_variance_from_output(-torch.ones(shape), t, shape)
    hi = learned.model_log_variance_from_output(torch.ones(shape), t, shape)
    torch.testing.assert_close(lo, extract(small.model_log_variance, t, shape).expand(shape))
    torch.testing.assert_close(hi, extract(large.model_log_variance, t, shape).expand(shape))
    mid = learned.model_log_variance_from_output(torch.zeros(shape), t, shape)
    assert torch.all(mid >= lo) and torch.all(mid <= hi)  # a geometric mean lies between


@pytest.mark.parametrize("steps", [None, 50, 10])
def test_learned_log_variance_is_re_derived_for_a_respaced_chain(steps):
    """A "learned" model that outputs log beta~_t of the chain it was trained on samples a respaced
    chain with that chain's beta~ (the same place between beta~ and beta), not the 1000-step value."""
    diffusion = GaussianDiffusion(BETAS, variance="learned", loss_type="hybrid")
    table = diffusion.posterior_log_variance_clipped.clone()
    model = with_variance_output(
        gaussian_eps_model(diffusion), lambda t, x: table[t].reshape(len(t), *[1] * (x.dim() - 1))
    )
    g = torch.Generator().manual_seed(6)
    x = sample(model, diffusion, torch.randn(N, D, generator=g), SampleConfig(sampler="ddpm", steps=steps),
               generator=g)  # fmt: skip
    check_moments(x, *chain_moments(AB, steps, "fixed_small"))


def test_the_wrong_respacing_is_caught():
    """Sanity check of the test above: taking the network's 1000-step log variance as the variance of
    a 10-step chain (no re-derivation) gives moments that the check rejects."""
    from ddpmkit.denoiser import sampling_timesteps
    from ddpmkit.samplers import ddpm_sample

    diffusion = GaussianDiffusion(BETAS, variance="learned", loss_type="hybrid")
    table = diffusion.posterior_log_variance_clipped.clone()
    model = with_variance_output(
        gaussian_eps_model(diffusion), lambda t, x: table[t].reshape(len(t), *[1] * (x.dim() - 1))
    )
    den = Denoiser(model, diffusion).respace(sampling_timesteps(diffusion, 10))
    den.diffusion.respaced = False  # the log variance used as it comes
    g = torch.Generator().manual_seed(6)
    x = ddpm_sample(den, torch.randn(N, D, generator=g), generator=g)
    with pytest.raises(AssertionError):
        check_moments(x, *chain_moments(AB, 10, "fixed_small"))


def _two_part_model(data_dim: int):
    """A model whose mean output and variance output have separate parameters."""
    mean_w = torch.nn.Parameter(torch.full((data_dim,), 0.3))
    var_w = torch.nn.Parameter(torch.full((data_dim,), 0.1))

    def model(x_t, t, y=None):
        return torch.cat([x_t * mean_w, torch.tanh(x_t * 0 + var_w).expand_as(x_t)], dim=1)

    return model, mean_w, var_w


@pytest.mark.parametrize("variance", ["learned_range", "learned"])
def test_no_gradient_reaches_the_mean_through_the_vlb_term(variance):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    hybrid = GaussianDiffusion(BETAS, variance=variance, loss_type="hybrid")
    model, mean_w, var_w = _two_part_model(2)
    hybrid.training_loss(model, x0, t, noise).mean().backward()
    g_mean_hybrid, g_var = mean_w.grad.clone(), var_w.grad.clone()
    mean_w.grad = var_w.grad = None
    # l2 alone on the mean half: the same model output, the plain simplified loss
    x_t = hybrid.q_sample(x0, t, noise)
    out, _ = hybrid.split_output(model(x_t, t))
    ((out - noise) ** 2).mean(1).mean().backward()
    torch.testing.assert_close(g_mean_hybrid, mean_w.grad, rtol=0, atol=0)  # bit for bit: nothing from L_vlb
    assert torch.all(g_var.abs() > 0)  # and the variance is trained by L_vlb


def test_the_vlb_loss_trains_the_mean_and_the_variance():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    t = torch.randint(1, 1000, (64,), generator=g)
    vlb = GaussianDiffusion(BETAS, variance="learned_range", loss_type="vlb", decoder="gaussian")
    model, mean_w, var_w = _two_part_model(2)
    vlb.training_loss(model, x0, t, noise).mean().backward()
    assert torch.all(mean_w.grad.abs() > 0) and torch.all(var_w.grad.abs() > 0)


def test_hybrid_loss_is_l2_plus_lambda_T_times_the_bound_term():
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(16, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    d = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid", vlb_weight=0.001,
                          decoder="gaussian")  # fmt: skip
    model = lambda x, tt: torch.cat([0.5 * x, 0.2 * torch.ones_like(x)], 1)  # noqa: E731
    loss = d.training_loss(model, x0, t, noise)
    x_t = d.q_sample(x0, t, noise)
    l2 = ((0.5 * x_t - noise) ** 2).flatten(1).mean(1)
    vb = vb_terms_from_output(d, 0.5 * x_t, 0.2 * torch.ones_like(x_t), x0, x_t, t)
    torch.testing.assert_close(loss, l2 + 0.001 * 1000 * vb)
    # and vb is Eq. 5's term of the same model through the evaluation path (no clip with this decoder)
    torch.testing.assert_close(vb, vb_terms_bpd(d, model, x0, x_t, t))


def test_the_gaussian_decoder_is_the_normal_log_density():
    """Points use a continuous decoder at t = 0: log N(x0; mean, exp(log_var))."""
    x = torch.tensor([[0.3, -0.2]])
    mean, log_var = torch.tensor([[0.1, 0.0]]), torch.tensor([[-2.0, -1.0]])
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x)
    torch.testing.assert_close(gaussian_log_likelihood(x, mean, log_var), expected)


def test_guidance_mixes_the_mean_and_keeps_the_conditional_variance():
    d = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")

    def model(x, t, y=None):
        eps = torch.full_like(x, 1.0 if y is None else 2.0)
        var = torch.full_like(x, -0.5 if y is None else 0.5)
        return torch.cat([eps, var], 1)

    den = Denoiser(model, d, guidance=3.0)
    x, t = torch.zeros(4, 2), torch.full((4,), 500)
    out, var = den.output(x, t, {"y": torch.zeros(4, dtype=torch.long)})
    torch.testing.assert_close(out, torch.full_like(x, 2.0 + 3.0 * (2.0 - 1.0)))  # Eq. 6 on the mean part
    torch.testing.assert_close(var, torch.full_like(x, 0.5))  # the conditional model's
    pred = den(x, t, {"y": torch.zeros(4, dtype=torch.long)})
    assert pred.log_variance is not None and pred.log_variance.shape == x.shape


def test_split_output_refuses_an_odd_width():
    d = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")
    with pytest.raises(ValueError, match="2x the data's channels"):
        d.split_output(torch.zeros(4, 3))
    fixed = GaussianDiffusion(BETAS)
    out = torch.zeros(4, 3)
    assert fixed.split_output(out) == (out, None)


@pytest.mark.parametrize(
    "shape,flags",
    [
        ((2,), {}),
        (
            (1, 8, 8),
            {
                "model.unet.base_channels": 8,
                "model.unet.channel_mult": (1,),
                "model.unet.attn_resolutions": (),
            },
        ),
    ],
)
def test_the_network_output_width_follows_the_variance(shape, flags):
    cfg = override(RunConfig(), flags)
    learned = override(cfg, {"diffusion.variance": "learned_range", "diffusion.loss": "hybrid"})
    x = torch.zeros(2, *shape)
    t = torch.zeros(2, dtype=torch.long)
    assert build_network(cfg, shape)(x, t).shape == x.shape
    assert build_network(learned, shape)(x, t).shape == (2, 2 * shape[0], *shape[1:])


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"variance": "learned_range"}, "needs|trained only through the variational bound"),
        ({"variance": "learned", "loss": "l1"}, "gives it no gradient"),
        ({"loss": "hybrid"}, "plain l2"),
        ({"loss": "hybrid", "variance": "learned_range", "vlb_weight": 0.0}, "vlb_weight"),
    ],
)
def test_bad_combinations_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        DiffusionConfig(**kw)


def test_vlb_with_a_fixed_variance_is_allowed():
    assert DiffusionConfig(loss="vlb").variance == "fixed_small"


def test_samplers_say_when_they_do_not_use_the_learned_variance():
    assert variance_note("ddpm", "learned_range") is None
    assert variance_note("ddim", "fixed_small") is None
    note = variance_note("dpm++2m", "learned_range")
    assert note.startswith("note: dpm++2m uses only the predicted x0 / eps") and "\n" not in note


def test_nll_under_a_learned_variance_at_v_minus_one_equals_fixed_small():
    """The bits/dim terms for t >= 1 with v = -1 equal the fixed-small model's (same mean)."""
    fixed = GaussianDiffusion(BETAS)
    learned = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")
    eps = lambda x, t: 0.1 * x  # noqa: E731
    g = torch.Generator().manual_seed(3)
    x0 = (torch.randint(0, 256, (8, 1, 4, 4), generator=g).float() / 127.5) - 1
    t = torch.randint(1, 1000, (8,), generator=g)
    x_t = fixed.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    a = vb_terms_bpd(fixed, eps, x0, x_t, t)
    b = vb_terms_bpd(learned, lambda x, tt: torch.cat([eps(x, tt), -torch.ones_like(x)], 1), x0, x_t, t)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(a.sum()))


def test_the_bound_term_at_an_interior_v_is_the_gaussian_kl_of_eq_15():
    """An independent float64 computation of KL(q(x_{t-1}|x_t,x0) || N(mean, Sigma)) with Sigma from
    Eq. 15 at v = 0.3, against vb_terms_bpd (bits/dim, t >= 1)."""
    d = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(6, 1, 2, 2, generator=g) * 1.6 - 0.8
    t = torch.tensor([1, 10, 100, 400, 700, 999])
    x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    model = lambda x, tt: torch.cat([0.2 * x, torch.full_like(x, 0.3)], 1)  # noqa: E731
    got = vb_terms_bpd(d, model, x0, x_t, t).double()
    b = torch.as_tensor(BETAS, dtype=torch.float64)
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    bt, abt, abp = b[t].view(-1, 1, 1, 1), ab[t].view(-1, 1, 1, 1), ab_prev[t].view(-1, 1, 1, 1)
    xt, x0d = x_t.double(), x0.double()
    post_var = bt * (1 - abp) / (1 - abt)  # Eq. 7
    coef1, coef2 = bt * abp.sqrt() / (1 - abt), (1 - abp) * (1 - bt).sqrt() / (1 - abt)
    true_mean = coef1 * x0d + coef2 * xt
    x0_pred = ((xt - (1 - abt).sqrt() * 0.2 * xt) / abt.sqrt()).clamp(-1, 1)
    mean = coef1 * x0_pred + coef2 * xt
    frac = (0.3 + 1) / 2
    log_var = frac * torch.log(bt) + (1 - frac) * torch.log(post_var)  # Eq. 15
    kl = 0.5 * (
        -1
        + log_var
        - torch.log(post_var)
        + post_var / log_var.exp()
        + (true_mean - mean) ** 2 / log_var.exp()
    )
    expected = kl.flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)  # float32 buffers vs float64


@pytest.mark.parametrize("which", ["ddpm", "repaint"])
def test_ancestral_and_repaint_follow_the_learned_variance_path_exactly(which):
    """With the same noise, a learned_range model at v = -1 walks the fixed_small chain step for step."""
    from ddpmkit.samplers import ddpm_sample
    from ddpmkit.samplers.repaint import repaint_sample

    fixed = GaussianDiffusion(BETAS)
    learned = GaussianDiffusion(BETAS, variance="learned_range", loss_type="hybrid")
    eps = gaussian_eps_model(fixed)
    runs = []
    for d, m in ((fixed, eps), (learned, with_variance_output(eps, constant(-1.0)))):
        den = Denoiser(m, d).respace(list(range(0, 1000, 50)))
        g = torch.Generator().manual_seed(7)
        x = torch.randn(256, D, generator=g)
        if which == "ddpm":
            runs.append(ddpm_sample(den, x, generator=g))
        else:
            keep = torch.tensor([1.0, 0.0])
            runs.append(repaint_sample(den, x, known=torch.ones(256, D), keep=keep, jump_length=2, resample=2,
                                       generator=g))  # fmt: skip
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-5)
    # and v = +1 (beta_t) takes a different path: the learned variance is what the sampler uses
    den = Denoiser(with_variance_output(eps, constant(1.0)), learned).respace(list(range(0, 1000, 50)))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, D, generator=g)
    if which == "ddpm":
        other = ddpm_sample(den, x, generator=g)
    else:
        other = repaint_sample(den, x, known=torch.ones(256, D), keep=torch.tensor([1.0, 0.0]), jump_length=2,
                               resample=2, generator=g)  # fmt: skip
    assert not torch.allclose(other, runs[1], atol=1e-3)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_learned_log_variance_off_the_range_stays_in_the_respaced_range(schedule):
    """At high t, log beta and log beta~ of the trained chain differ by ~1e-6: an output a little off
    that range must not become a huge variance on a respaced chain (its place is clamped to [0, 1])."""
    d = GaussianDiffusion(make_beta_schedule(schedule, 1000), variance="learned", loss_type="hybrid")
    r = d.respace(list(np.linspace(0, 999, 21).round()))
    t = torch.arange(r.num_timesteps)
    base = r.base_log_posterior_variance[t].reshape(-1, 1)
    lo, hi = r.posterior_log_variance_clipped[t].reshape(-1, 1), r.log_betas[t].reshape(-1, 1)
    for off in (0.01, -0.01, 0.0):
        got = r.model_log_variance_from_output(base + off, t, (len(t), 1))
        assert torch.all(got >= lo - 1e-5) and torch.all(got <= hi + 1e-5), (off, (got - lo).max())


# ----- through the command line: images (U-Net), classes, guidance, --nll, the notes and refusals ------
def _cli(capsys, *argv):
    from .test_cli import run_cli

    return run_cli(capsys, *argv)


def test_a_class_conditional_learned_variance_image_run_end_to_end(tmp_path, capsys):
    from .test_cli import TINY_IMAGE_FLAGS

    run = tmp_path / "lv"
    code, out, err = _cli(capsys, "train", *TINY_IMAGE_FLAGS, "--steps", "4", "--cond", "class", "--variance",
                          "learned_range", "--loss", "hybrid", "--train.t_sampler", "loss_second_moment",
                          "-o", str(run), "--no-report")  # fmt: skip
    assert code == 0, err
    code, out, err = _cli(capsys, "sample", str(run), "-n", "4", "--class", "3", "--guidance", "1",
                          "--sampler", "ddpm", "--steps", "5", "--out", str(tmp_path / "s.npz"),
                          "-q")  # fmt: skip
    assert code == 0 and "note:" not in err, err
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (
        4,
        8,
        8,
        1,
    )  # NHWC uint8, as `ddpm sample` writes images
    code, out, err = _cli(capsys, "sample", str(run), "-n", "4", "--sampler", "dpm++2m", "--steps", "5",
                          "--out", str(tmp_path / "o.npz"), "-q")  # fmt: skip
    assert code == 0 and "note: dpm++2m uses only the predicted x0 / eps" in err
    code, out, err = _cli(
        capsys, "eval", "--nll", str(run), "--subset", "4", "--t-stride", "5", "--json", "-q"
    )
    assert code == 0, err
    import json

    assert math.isfinite(json.loads(out)["bpd"])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--variance", "learned_range"], "use --loss hybrid"),
        (["--loss", "hybrid"], "plain l2"),
        (["--train.t_sampler", "importance"], "invalid choice"),
        (["--diffusion.vlb_weight", "-1", "--variance", "learned", "--loss", "hybrid"], "vlb_weight"),
    ],
)
def test_bad_combinations_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    from .test_train import TINY_FLAGS

    code, out, err = _cli(capsys, "train", *TINY_FLAGS, *argv, "-o", str(tmp_path / "r"))
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3  # argparse adds its usage lines; ours are one line
    assert not (tmp_path / "r").exists()


def test_vlb_with_uniform_t_says_so(tmp_path, capsys):
    from .test_train import TINY_FLAGS

    flags = [f for f in TINY_FLAGS if f != "-q"]
    code, out, err = _cli(capsys, "train", *flags, "--steps", "2", "--loss", "vlb", "-o", str(tmp_path / "r"),
                          "--no-report")  # fmt: skip
    assert code == 0, err
    assert "note: --loss vlb with uniform t is very noisy" in out + err
