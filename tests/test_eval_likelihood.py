"""Tests for ddpmkit.likelihood: the bits/dim bound (Ho et al. Eq. 5) against closed forms with an
oracle model, its ordering for worse models, the strided estimate, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpmkit.data import ImageSpace, PointSpace
from ddpmkit.data.images import to_model_range
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.eval.likelihood import _bpd_timesteps, nll_bits_per_dim
from ddpmkit.run import LoadedRun
from ddpmkit.schedules import make_beta_schedule


class EpsModel(nn.Module):
    """eps = scale * the true noise of x_t given the known x0 (scale 1: an oracle; 0: predicts 0;
    -1: the sign error)."""

    def __init__(self, x0: torch.Tensor, diffusion: GaussianDiffusion, scale: float = 1.0):
        super().__init__()
        self.x0, self.ab, self.scale = x0, diffusion.alphas_cumprod, scale

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab[t].view(-1, 1, 1, 1)
        return self.scale * (x_t - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def _run(model: nn.Module, diffusion: GaussianDiffusion, shape=(1, 4, 4)) -> LoadedRun:
    return LoadedRun(
        cfg=None,
        model=model,
        diffusion=diffusion,
        space=ImageSpace(),
        data_shape=shape,
        step=0,
    )


@pytest.fixture
def tiny_bpd_case():
    T = 10
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T))
    u8 = torch.randint(1, 255, (6, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return diffusion, u8, to_model_range(u8)


def test_oracle_bpd_is_decoder_plus_prior_in_closed_form(tiny_bpd_case):
    """With the true eps the KL terms vanish; the decoder mass of an interior bin under
    N(x0, beta~_1) is 2 Phi(1/(255 sigma)) - 1 and the prior KL is Gaussian (Ho et al. Eq. 5)."""
    diffusion, u8, x0 = tiny_bpd_case
    out = nll_bits_per_dim(_run(EpsModel(x0, diffusion), diffusion), u8, batch_size=64, progress=False)
    assert abs(out["kl_bpd"]) < 1e-4
    assert out["bpd"] == pytest.approx(out["decoder_bpd"] + out["prior_bpd"], abs=1e-4)
    b = make_beta_schedule("linear", 10)
    ab = np.cumprod(1 - b)
    sigma = math.sqrt(b[1] * (1 - ab[0]) / (1 - ab[1]))  # beta~ at index 1 (the clipped log-variance)
    mass = math.erf(1 / (255 * sigma) / math.sqrt(2))  # 2 Phi(z) - 1
    assert out["decoder_bpd"] == pytest.approx(-math.log2(mass), rel=1e-3)
    x = x0.double().numpy()
    prior = 0.5 * (-1 - np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * x**2)
    assert out["prior_bpd"] == pytest.approx(prior.mean() / math.log(2), rel=1e-4)
    assert out["bpd"] > 0 and out["exact"] and len(out["per_timestep"]["t"]) == 10


def test_wrong_models_score_worse_than_the_oracle(tiny_bpd_case):
    diffusion, u8, x0 = tiny_bpd_case
    bpd = {
        s: nll_bits_per_dim(_run(EpsModel(x0, diffusion, s), diffusion), u8, progress=False)["bpd"]
        for s in (1.0, 0.5, 0.0, -1.0)
    }
    assert bpd[1.0] < bpd[0.5] < bpd[0.0] < bpd[-1.0]
    assert all(math.isfinite(v) for v in bpd.values())


def test_strided_timesteps_cover_every_block():
    g = torch.Generator().manual_seed(0)
    for T, s in ((10, 1), (10, 3), (1000, 7), (5, 10)):
        ts, w = _bpd_timesteps(T, s, g)
        assert ts[0] == 0 and sum(w) == T and len(ts) == len(w)
        starts = [0, *range(1, T, s)]
        assert all(a <= t < a + n for t, a, n in zip(ts, starts, w, strict=True))  # t inside its block


def test_strided_bound_is_an_unbiased_estimate_of_the_exact_one():
    """T = 1000, one t per block of 20 drawn at random: the mean over seeds matches the exact sum."""
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 1000))
    u8 = torch.randint(1, 255, (8, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    run = _run(EpsModel(to_model_range(u8), diffusion, 0.5), diffusion)
    exact = nll_bits_per_dim(run, u8, progress=False)
    strided = [nll_bits_per_dim(run, u8, progress=False, t_stride=20, seed=k) for k in range(20)]
    assert not strided[0]["exact"] and len(strided[0]["per_timestep"]["t"]) == 1 + 50
    assert np.mean([r["bpd"] for r in strided]) == pytest.approx(exact["bpd"], rel=0.15)


def test_nll_rejects_bad_inputs(tiny_bpd_case):
    diffusion, u8, x0 = tiny_bpd_case
    run = _run(EpsModel(x0, diffusion), diffusion)
    with pytest.raises(ConfigError, match="model takes"):
        nll_bits_per_dim(run, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), progress=False)
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        nll_bits_per_dim(run, torch.full((2, 1, 4, 4), 3.0), progress=False)
    points = LoadedRun(
        cfg=None,
        model=run.model,
        diffusion=diffusion,
        space=PointSpace(torch.zeros(2), torch.ones(2)),
        data_shape=(2,),
        step=0,
    )
    with pytest.raises(ConfigError, match="8-bit images"):
        nll_bits_per_dim(points, torch.zeros(2, 2), progress=False)
