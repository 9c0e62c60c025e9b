"""Run directories: those written by ddpmkit 0.1 (checked in under fixtures/v0_1, with samples and
weights that release computed) load, sample the same numbers and resume bit for bit; the public
API trains, loads and samples; class labels travel from the data to the model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ddpmkit
from ddpmkit import SampleConfig, generate, load_run
from ddpmkit.data import ImageSpace, PointSpace
from ddpmkit.errors import ConfigError
from ddpmkit.training import train as train_loop

from .conftest import tiny_points_config

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
CASES = [("ddpm", None, 0.0), ("ddpm", 10, 0.0), ("ddim", 10, 0.0), ("ddim", 7, 0.5)]
# The fixtures were computed on an AVX2 CPU, where these checks are bit for bit. Other kernels (AVX-512)
# sum in another order, so float32 results differ by rounding: measured on an AVX-512 machine, samples by
# at most 4e-6 of their largest value (points, 1000 ancestral steps) and weights after the resumed
# steps by 3e-7 of each tensor's largest value (2-3 float32 ulps). The bounds below leave 25-30x margin
# and still catch a change of the maths: stopping one step short moves some weight tensor by 7% (points)
# and 61% (digits) of its largest value.
BIT_EXACT = torch.backends.cpu.get_cpu_capability() == "AVX2"


def assert_same(got: torch.Tensor, want: torch.Tensor, rel: float, what: object) -> None:
    if BIT_EXACT or not want.is_floating_point():
        assert torch.equal(got, want), what
    else:
        bound = rel * want.abs().max().clamp_min(1e-12)
        assert (got - want).abs().max() <= bound, what


@pytest.mark.parametrize("name,space", [("points", PointSpace), ("digits", ImageSpace)])
def test_runs_of_release_0_1_sample_what_that_release_sampled(name, space):
    """Same seed, same samples, bit for bit: the redesign moved code, not numbers."""
    run = load_run(FIXTURES / name)
    assert isinstance(run.space, space) and run.step > 0
    expected = load_file(str(FIXTURES / "expected_samples.safetensors"))
    for sampler, steps, eta in CASES:
        options = SampleConfig(sampler=sampler, steps=steps, eta=eta)
        x, _ = generate(run, 24, options, seed=3, batch_size=16, progress=False)
        assert_same(x, expected[f"{name}.{sampler}.{steps}.{eta}"], 1e-4, (name, sampler, steps, eta))


@pytest.mark.parametrize("name,steps", [("points", 30), ("digits", 9)])
def test_runs_of_release_0_1_resume_bit_for_bit(tmp_path, name, steps):
    """Resuming the 0.1 checkpoint gives the weights 0.1 got by training without a break."""
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    cfg = ddpmkit.RunConfig.from_json(run_dir / "config.json").replace(**{"train.steps": steps})
    hist = train_loop(cfg, run_dir, resume=True, progress=False)
    assert hist["final_step"] == steps
    got = load_file(str(run_dir / "model.safetensors"))
    want = load_file(str(FIXTURES / f"{name}_step{steps}_model.safetensors"))
    assert sorted(got) == sorted(want)
    for k in want:
        assert_same(got[k], want[k], 1e-5, k)


def test_public_api_trains_loads_and_samples(tmp_path):
    cfg = tiny_points_config()
    run = ddpmkit.train(cfg, tmp_path / "run", progress=False)
    assert isinstance(run, ddpmkit.LoadedRun) and run.step == cfg.train.steps
    assert run.history["final_step"] == cfg.train.steps
    pts = ddpmkit.sample(run, 50, sampler="ddim", steps=5)
    assert pts.shape == (50, 2) and pts.dtype == np.float32
    again = ddpmkit.sample(tmp_path / "run", 50, sampler="ddim", steps=5)  # a run directory works too
    np.testing.assert_array_equal(pts, again)
    moved = ddpmkit.train("moons", tmp_path / "by_name", overrides={"train.steps": 3}, progress=False,
                          train={"batch_size": 16}, data={"num_points": 64})  # fmt: skip
    assert moved.cfg.preset == "moons" and moved.cfg.train.steps == 3 and moved.cfg.train.batch_size == 16


def test_class_labels_flow_from_the_data_to_the_model(tmp_path, shared_data):
    """A class-conditional U-Net trains on MNIST labels and samples differ by the label asked for."""
    cfg = ddpmkit.RunConfig.from_preset(
        "mnist",
        {"model.num_classes": 10, "model.unet.base_channels": 8, "model.unet.channel_mult": "1,2",
         "model.unet.attn_resolutions": "", "model.unet.num_groups": 4, "data.image_size": 8},
        data={"data_dir": str(shared_data / "mnist")},
        train={"steps": 3, "batch_size": 8, "preview_every": 0, "checkpoint_every": 0, "threads": 1},
        sample={"steps": 4},
    )  # fmt: skip
    run = ddpmkit.train(cfg, tmp_path / "cond", progress=False)
    assert run.model.labels is not None
    y3 = generate(run, 4, seed=0, cond={"y": torch.full((4,), 3)}, progress=False)[0]
    y7 = generate(run, 4, seed=0, cond={"y": torch.full((4,), 7)}, progress=False)[0]
    null = generate(run, 4, seed=0, progress=False)[0]  # no label: the null label
    assert not torch.equal(y3, y7) and not torch.equal(y3, null)


def test_labels_are_required_for_a_conditional_model_and_refused_by_an_unconditional_one(tmp_path):
    with pytest.raises(ConfigError, match="needs labels, and moons has none"):
        train_loop(tiny_points_config(**{"model.num_classes": 3}), tmp_path / "a", progress=False)
    run = ddpmkit.train(tiny_points_config(), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="this run is unconditional"):
        generate(run, 4, cond={"y": torch.zeros(4, dtype=torch.long)}, progress=False)
