"""Autoguidance (a weaker run guides, Karras et al. 2024) and the guidance interval
(Kynkaenniemi et al. 2024): the mixing is exact, the interval's bounds are where it says, and a guide
that cannot be mixed with a run is refused before any sampling."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit.autoguide import load_guide
from ddpmkit.checks import check_interval
from ddpmkit.cli import main
from ddpmkit.config import SampleConfig
from ddpmkit.denoiser import Denoiser
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.models.mlp import MLP
from ddpmkit.run import generate, load_run
from ddpmkit.schedules import make_beta_schedule
from ddpmkit.steer import edit, inpaint, interpolate

from .conftest import tiny_points_config


def _mlp(seed: int, num_classes: int = 3) -> MLP:
    torch.manual_seed(seed)
    model = MLP(hidden=32, depth=1, emb_dim=16, num_classes=num_classes)
    if num_classes:
        torch.nn.init.normal_(model.labels.table.weight)  # labels must change the output
    return model.eval()


class Counting(torch.nn.Module):
    """A network that counts its calls."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t, **cond):
        self.calls += 1
        return self.model(x, t, **cond)


DIFF = GaussianDiffusion(make_beta_schedule("linear", 50), objective="v")


# ----- the mixing ------------------------------------------------------------------------------------------
@torch.no_grad()
def test_autoguidance_mixes_the_guide_at_the_same_conditioning():
    model, guide = _mlp(0), _mlp(1)
    x, t, y = torch.randn(8, 2), torch.full((8,), 30), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    w = 1.5  # Karras et al. 2024, Eq. 1 with their w = 1 + ours
    out, _ = Denoiser(model, DIFF, guidance=w, guide=guide).output(x, t, {"y": y})
    torch.testing.assert_close(out, (1 + w) * model(x, t, y=y) - w * guide(x, t, y=y))
    out, _ = Denoiser(model, DIFF, guidance=w, guide=guide).output(x, t, None)  # no labels: still guided
    torch.testing.assert_close(out, (1 + w) * model(x, t) - w * guide(x, t))
    same, _ = Denoiser(model, DIFF, guidance=w, guide=model).output(x, t, {"y": y})
    torch.testing.assert_close(same, model(x, t, y=y))  # a guide equal to the model changes nothing


@torch.no_grad()
def test_the_guidance_interval_guides_exactly_the_steps_inside_it():
    model, guide = _mlp(0), Counting(_mlp(1))
    t = torch.arange(50)
    sigma = ((1 - DIFF.alphas_cumprod) / DIFF.alphas_cumprod).sqrt()
    lo, hi = sigma[10].item(), sigma[30].item()  # (lo, hi]: steps 11..30 guided, 10 not, 30 yes
    x, w = torch.randn(50, 2), 2.0
    out, _ = Denoiser(model, DIFF, guidance=w, guide=guide, guidance_interval=(lo, hi)).output(x, t)
    plain, guided = model(x, t), (1 + w) * model(x, t) - w * guide.model(x, t)
    inside = (t > 10) & (t <= 30)
    torch.testing.assert_close(out[inside], guided[inside])
    torch.testing.assert_close(out[~inside], plain[~inside])
    calls = guide.calls
    Denoiser(model, DIFF, guidance=w, guide=guide, guidance_interval=(lo, hi)).output(x[:5], t[:5])
    assert guide.calls == calls  # no sample inside: the guide is not called at all


@torch.no_grad()
def test_the_interval_applies_to_classifier_free_guidance_too():
    model = _mlp(0)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    sigma_49 = math.sqrt((1 - DIFF.alphas_cumprod[49].item()) / DIFF.alphas_cumprod[49].item())
    high_only = Denoiser(model, DIFF, guidance=3.0, guidance_interval=(sigma_49 / 2, 1e9))
    t = torch.full((4,), 49)
    torch.testing.assert_close(high_only.output(x, t, {"y": y})[0], 4 * model(x, t, y=y) - 3 * model(x, t))
    t = torch.zeros(4, dtype=torch.long)  # sigma_0 is far below sigma_49 / 2: unguided
    torch.testing.assert_close(high_only.output(x, t, {"y": y})[0], model(x, t, y=y))
    respaced = high_only.respace([49, 25, 0])
    assert respaced.guidance_interval == high_only.guidance_interval and respaced.guide is None


@pytest.mark.parametrize("bad", [(1.0,), (2.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (0.0, 1.0, 2.0)])
def test_bad_intervals_are_refused(bad):
    with pytest.raises(ConfigError, match="sigma_lo < sigma_hi"):
        check_interval(bad)
    with pytest.raises(ConfigError, match="sample.guidance_interval"):
        SampleConfig(guidance_interval=bad)


def test_an_interval_from_json_is_a_tuple_of_finite_numbers():
    assert SampleConfig(guidance_interval=[0.5, 3]).guidance_interval == (0.5, 3.0)
    with pytest.raises(ConfigError, match="cannot read"):
        SampleConfig(guidance_interval=[0.5, math.inf])  # config.json holds no infinity


# ----- runs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny point runs: a model, a weaker guide of it, and guides that cannot mix with it."""
    root = tmp_path_factory.mktemp("autoguide")
    made = {
        "model": tiny_points_config(**{"train.steps": 30}),
        "guide": tiny_points_config(**{"train.steps": 5, "model.hidden": 16}),
        "x0": tiny_points_config(**{"diffusion.objective": "x0"}),
        "T40": tiny_points_config(**{"diffusion.timesteps": 40}),
        "circles": tiny_points_config(**{"data.dataset": "circles"}),
    }
    for name, cfg in made.items():
        ddpmkit.train(cfg, root / name, progress=False)
    return root


def test_a_weaker_run_guides_and_changes_the_samples(runs):
    run = load_run(runs / "model")
    opts = SampleConfig(sampler="ddim", steps=10, guidance=1.0)
    plain, _ = generate(run, 64, SampleConfig(sampler="ddim", steps=10), seed=3, progress=False)
    guided, _ = generate(
        run, 64, dataclasses.replace(opts, guide=str(runs / "guide")), seed=3, progress=False
    )
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided)
    again, _ = generate(run, 64, opts, guide=str(runs / "guide"), seed=3, progress=False)
    assert torch.equal(again, guided)  # the same seed and guide: the same samples
    no_w, _ = generate(run, 64, opts, guide=str(runs / "guide"), guidance=0.0, seed=3, progress=False)
    assert torch.equal(no_w, plain)  # w = 0: the guide is not used


@pytest.mark.parametrize(
    "other, match", [("x0", "another process"), ("T40", "another process"), ("circles", "another data space")]
)
def test_a_guide_that_cannot_mix_is_refused(runs, other, match):
    with pytest.raises(ConfigError, match=match):
        load_guide(load_run(runs / "model"), runs / other)


def test_cli_autoguidance_and_interval(runs, tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = [
        "sample",
        str(runs / "model"),
        "-n",
        "16",
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--out",
        str(out),
    ]
    assert main([*argv, "--guide", str(runs / "guide"), "--guidance", "1", "--guidance-interval", "0.5,1e6",
                 "-q"]) == 0  # fmt: skip
    assert "guided: 2 per evaluation with sigma in (0.5, 1e+06]" in capsys.readouterr().out
    assert np.load(out)["arr_0"].shape == (16, 2)
    for flags, match in [
        (["--guidance-interval", "5,1"], "0 <= LO < HI"),
        (["--guide", str(runs / "x0"), "--guidance", "1"], "another process"),
        (["--guide", str(tmp_path / "none"), "--guidance", "1"], "none"),
        (["--guidance", "1"], "class-conditional run"),
    ]:
        with pytest.raises(SystemExit) as exit_:  # argparse's usage errors and ddpm's own: exit 2
            raise SystemExit(main([*argv, *flags, "--overwrite", "-q"]))
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


def test_sdedit_takes_the_guide_too(runs):
    run = load_run(runs / "model")
    x0 = run.space.to_model(np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32))
    opts = SampleConfig(sampler="ddim", steps=10, guidance=1.0)
    plain = edit(run, x0, 0.6, opts, seed=1)
    guided = edit(run, x0, 0.6, dataclasses.replace(opts, guide=str(runs / "guide")), seed=1)
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided)


def test_inpaint_and_interpolate_take_the_guide(runs):
    run = load_run(runs / "model")
    weak, same = str(runs / "guide"), str(runs / "model")
    plain = interpolate(run, 4, steps=10)  # an unconditional run: unguided without a guide
    guided = interpolate(run, 4, steps=10, guidance=1.0, guide=weak)
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided)
    # guided by itself: (1 + w) D - w D = D, the unguided frames up to float rounding
    torch.testing.assert_close(interpolate(run, 4, steps=10, guidance=1.0, guide=same), plain)
    known = run.space.to_model(np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32))
    fill = torch.tensor([False, True]).expand(16, 2)  # draw the second coordinate given the first
    kw = dict(steps=10, resample=1, seed=2)
    a = inpaint(run, known, fill, **kw)
    b = inpaint(run, known, fill, guidance=1.0, guide=weak, **kw)
    assert torch.equal(a[:, 0], known[:, 0]) and torch.equal(b[:, 0], known[:, 0])  # known values kept
    assert not torch.allclose(a[:, 1], b[:, 1])
    with pytest.raises(ConfigError, match="another process"):
        interpolate(run, 4, steps=10, guidance=1.0, guide=str(runs / "x0"))
