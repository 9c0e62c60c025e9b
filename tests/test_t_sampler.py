"""Importance sampling of t (Improved DDPM, Sec. 3.3): warm-up, the 10-loss history, unbiasedness of
the reweighted loss, and its place in checkpoints (a resume draws the same t)."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit import checkpoint as ckpt
from ddpmkit import io as dio
from ddpmkit.config import override
from ddpmkit.errors import CheckpointError, ConfigError
from ddpmkit.training import train
from ddpmkit.training.t_sampler import LossSecondMomentSampler, UniformSampler, build_t_sampler

T = 20


def warmed(losses_at: torch.Tensor, seed: int = 0) -> LossSecondMomentSampler:
    """A sampler that has seen `history` noisy losses at every t (loss = L_t times a factor in [0.5, 1.5])."""
    s = LossSecondMomentSampler(len(losses_at))
    g = torch.Generator().manual_seed(seed)
    for _ in range(s.history):
        t = torch.arange(len(losses_at))
        s.update(t, losses_at * (0.5 + torch.rand(len(t), generator=g)))
    assert s.warmed_up
    return s


def test_uniform_until_every_t_has_its_history():
    s = LossSecondMomentSampler(T)
    g = torch.Generator().manual_seed(0)
    t, w = s.sample(64, g)
    assert w is None and t.min() >= 0 and t.max() < T
    for _ in range(s.history):
        s.update(torch.arange(T - 1), torch.ones(T - 1))  # all but the last t have their 10 losses
    s.update(torch.tensor([T - 1] * (s.history - 1)), torch.ones(s.history - 1))  # and it 9
    assert not s.warmed_up
    assert s.sample(8, g)[1] is None
    torch.testing.assert_close(s.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))


def test_history_keeps_the_last_ten_losses():
    s = LossSecondMomentSampler(3)
    for k in range(15):
        s.update(torch.tensor([1]), torch.tensor([float(k)]))
    assert int(s.counts[1]) == 10 and s.losses[1].tolist() == [float(k) for k in range(5, 15)]


def test_probabilities_follow_the_root_mean_square_loss_mixed_with_uniform():
    L = torch.linspace(1.0, 20.0, T, dtype=torch.float64)
    s = LossSecondMomentSampler(T)
    for _ in range(10):
        s.update(torch.arange(T), L)
    p = s.probabilities()
    expected = L / L.sum() * (1 - s.uniform_mix) + s.uniform_mix / T  # sqrt(E[L^2]) = L for a constant L
    torch.testing.assert_close(p, expected)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)


def test_the_importance_weighted_loss_is_unbiased():
    """E_p[L_t / (T p_t)] = (1/T) sum_t L_t: the Monte-Carlo mean of w L_t matches the uniform mean
    within 4 standard errors (of the weighted estimate, measured from the same draws)."""
    L = torch.exp(torch.linspace(0.0, 6.0, T, dtype=torch.float64))  # losses over 2.6 decades, like L_vlb's
    s = warmed(L)
    g = torch.Generator().manual_seed(1)
    t, w = s.sample(200_000, g)
    est = w * L[t]
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - float(L.mean())) < 4 * se, (float(est.mean()), float(L.mean()), se)
    # and it lowers the variance: the uniform estimate's standard deviation is larger
    assert float(est.std()) < 0.5 * float(L.std())


def test_the_unbiasedness_check_catches_missing_weights():
    """Sanity check of the test above: without the 1 / (T p_t) weights the mean is far off."""
    L = torch.exp(torch.linspace(0.0, 6.0, T, dtype=torch.float64))
    t, _ = warmed(L).sample(200_000, torch.Generator().manual_seed(1))
    unweighted = L[t]
    se = float(unweighted.std()) / math.sqrt(len(unweighted))
    assert abs(float(unweighted.mean()) - float(L.mean())) > 100 * se


def test_state_round_trip_and_bad_states():
    s = warmed(torch.ones(T))
    r = LossSecondMomentSampler(T)
    r.load_state(s.state())
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(s.sample(32, g1)[0], r.sample(32, g2)[0])
    with pytest.raises(CheckpointError, match="no t-sampler history"):
        r.load_state({})
    with pytest.raises(CheckpointError, match="needs"):
        LossSecondMomentSampler(T + 1).load_state(s.state())
    UniformSampler(T).load_state({})  # nothing to restore


def test_unknown_sampler():
    with pytest.raises(ConfigError):
        build_t_sampler("importance", T)


@pytest.fixture
def is_cfg(tiny_cfg):
    """A vlb + importance-sampling points run whose sampler warms up in a few steps (T = 10)."""
    return override(tiny_cfg, {"diffusion.timesteps": 10, "diffusion.loss": "vlb", "diffusion.variance":
                               "learned_range", "train.t_sampler": "loss_second_moment"})  # fmt: skip


def test_resume_with_the_sampler_history_is_bit_exact(tmp_path, is_cfg):
    full = train(is_cfg, tmp_path / "a", progress=False)
    train(override(is_cfg, {"train.steps": 8}), tmp_path / "b", progress=False)
    path = ckpt.list_checkpoints(tmp_path / "b")[-1]
    counts = dio.load_tensors(path / "state.safetensors")["t_sampler.counts"]
    assert counts.tolist() == [10] * 10  # warmed up: the resumed steps draw t from the history
    resumed = train(is_cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed["step"][0] == 9 and resumed["loss"] == full["loss"][8:]  # bit for bit
    wa, wb = dio.load_tensors(tmp_path / "a" / ckpt.MODEL), dio.load_tensors(tmp_path / "b" / ckpt.MODEL)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("variance", ["learned_range", "learned"])
def test_learned_variance_runs_train_load_and_sample(tmp_path, tiny_cfg, variance):
    from ddpmkit.run import generate, load_run

    cfg = override(tiny_cfg, {"diffusion.variance": variance, "diffusion.loss": "hybrid", "train.steps": 30})
    hist = train(cfg, tmp_path, progress=False)
    assert all(math.isfinite(v) for v in hist["loss"])
    run = load_run(tmp_path)
    assert run.diffusion.learns_variance
    x, _ = generate(run, 64, seed=0, sampler="ddpm", steps=10, progress=False)
    assert x.shape == (64, 2) and torch.isfinite(x).all()
