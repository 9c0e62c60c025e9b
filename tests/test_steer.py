"""Class conditioning, classifier-free guidance, RePaint inpainting, SDEdit and interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.config import override
from ddpmkit.data import DATASAURUS, build_dataset
from ddpmkit.denoiser import Denoiser
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.models.mlp import MLP
from ddpmkit.run import generate, load_run
from ddpmkit.samplers.repaint import jump_schedule, repaint_nfe, repaint_sample
from ddpmkit.schedules import make_beta_schedule
from ddpmkit.steer import class_index, data_labels, edit, inpaint, interpolate, slerp
from ddpmkit.training import train
from ddpmkit.training.step import build_state, global_batch

from .conftest import tiny_points_config

COND_IMAGE_FLAGS = ["--dataset", "digits", "--cond", "class", "-T", "20", "--model.base_channels", "8",
                    "--model.channel_mult", "1,2", "--model.attn_resolutions", "4", "--batch-size", "16",
                    "--sample.steps", "5", "--sample.sampler", "ddim", "--no-report", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def cond_images(tmp_path_factory):
    run = tmp_path_factory.mktemp("steer") / "digits"
    assert main(["train", *COND_IMAGE_FLAGS, "--steps", "3", "-o", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def uncond_images(tmp_path_factory):
    run = tmp_path_factory.mktemp("steer") / "uncond"
    flags = [f for f in COND_IMAGE_FLAGS if f not in ("--cond", "class")]
    assert main(["train", *flags, "--steps", "2", "-o", str(run)]) == 0
    return run


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


# ----- conditioning and guidance -----------------------------------------------------------------------
def _cond_mlp() -> MLP:
    torch.manual_seed(0)
    model = MLP(hidden=32, depth=1, emb_dim=16, num_classes=3)
    torch.nn.init.normal_(model.labels.table.weight)  # labels must change the output
    return model.eval()


def test_guidance_zero_is_the_conditional_model_and_no_label_the_null_one():
    model, diff = _cond_mlp(), GaussianDiffusion(make_beta_schedule("linear", 50), objective="v")
    x, t, y = torch.randn(8, 2), torch.full((8,), 30), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        cond_out, null_out = model(x, t, y=y), model(x, t)
        assert torch.equal(Denoiser(model, diff, guidance=0.0).output(x, t, {"y": y})[0], cond_out)
        assert torch.equal(Denoiser(model, diff, guidance=3.0).output(x, t, None)[0], null_out)
        assert torch.equal(null_out, model(x, t, y=torch.full((8,), 3)))  # y=None is row num_classes
        w = 2.5  # Eq. 6: (1 + w) out(y) - w out(null)
        guided, _ = Denoiser(model, diff, guidance=w).output(x, t, {"y": y})
        torch.testing.assert_close(guided, (1 + w) * cond_out - w * null_out)


def test_guidance_rescale_matches_the_conditional_std():
    model, diff = _cond_mlp(), GaussianDiffusion(make_beta_schedule("linear", 50), objective="v")
    x, t, y = torch.randn(8, 2), torch.full((8,), 30), torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        out, _ = Denoiser(model, diff, guidance=4.0, guidance_rescale=1.0).output(x, t, {"y": y})
        torch.testing.assert_close(out.std(1), model(x, t, y=y).std(1))


def test_labels_are_dropped_at_the_configured_rate():
    p, B, steps = 0.2, 512, 20
    cfg = override(tiny_points_config(), {"data.dataset": "datasaurus", "data.cond": "class",
                                          "train.cond_drop": p, "train.batch_size": B})  # fmt: skip
    state = build_state(cfg, build_dataset(cfg.data), torch.device("cpu"))
    assert state.cfg.model.num_classes == 13 and state.cfg.data.class_names == DATASAURUS
    drops = sum(int(global_batch(state).drop.sum()) for _ in range(steps))
    n = B * steps
    assert abs(drops / n - p) < 5 * math.sqrt(p * (1 - p) / n)  # binomial: 5 standard errors


def test_unconditional_runs_draw_no_label_dropping():
    cfg = tiny_points_config()
    state = build_state(cfg, build_dataset(cfg.data), torch.device("cpu"))
    assert global_batch(state).drop is None and state.y_all is None


def test_a_dataset_without_labels_refuses_cond_class(tmp_path):
    with pytest.raises(Exception, match="needs labels"):
        train(override(tiny_points_config(), {"data.cond": "class"}), tmp_path, progress=False)


def test_datasaurus_is_13_balanced_labelled_shapes():
    d = build_dataset(
        override(tiny_points_config(), {"data.dataset": "datasaurus", "data.num_points": 13000}).data
    )
    counts = torch.bincount(d.labels, minlength=13).float()
    assert d.class_names == DATASAURUS and len(counts) == 13
    assert (counts - 1000).abs().max() < 5 * math.sqrt(1000)  # multinomial counts, 5 SE


def test_conditional_resume_is_bit_exact(tmp_path):
    cfg = override(tiny_points_config(), {"data.dataset": "datasaurus", "data.cond": "class"})
    full = train(cfg, tmp_path / "a", progress=False)
    train(override(cfg, {"train.steps": 8}), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed["loss"] == full["loss"][8:]
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )


def test_class_names_and_indices(cond_images):
    run = load_run(cond_images)
    assert run.cfg.data.class_names == tuple(str(i) for i in range(10))
    assert class_index(run, "7") == 7 and class_index(run, 3) == 3


def test_a_conditional_run_records_its_class_counts(cond_images):
    run = load_run(cond_images)
    data = build_dataset(run.cfg.data)
    assert run.cfg.data.class_counts == tuple(torch.bincount(data.labels, minlength=10).tolist())
    assert sum(run.cfg.data.class_counts) == len(data.labels) and min(run.cfg.data.class_counts) > 0


@pytest.mark.parametrize("n", [1, 7, 1000, 1001])
def test_data_labels_follow_the_class_counts_within_one_sample(cond_images, n):
    run = load_run(cond_images)
    counts = (5, 0, 20, 1, 1, 1, 2, 30, 3, 7)  # uneven, one class empty
    run.cfg = override(run.cfg, {"data.class_counts": counts})
    y = data_labels(run, n, seed=3)
    got, share = np.bincount(y.numpy(), minlength=10), np.array(counts) / sum(counts) * n
    assert len(y) == n and got.sum() == n and np.all(np.abs(got - share) < 1) and got[1] == 0
    assert torch.equal(y, data_labels(run, n, seed=3))  # the seed fixes the order
    if n >= 100:
        assert not torch.equal(y, data_labels(run, n, seed=4)) and not torch.equal(y, y.sort().values)


def test_data_labels_need_recorded_counts_and_a_conditional_run(cond_images, uncond_images):
    run = load_run(cond_images)
    run.cfg = override(run.cfg, {"data.class_counts": ()})  # a run trained before the counts were kept
    with pytest.raises(ConfigError, match="no data.class_counts"):
        data_labels(run, 10)
    with pytest.raises(ConfigError, match="unconditional"):
        data_labels(load_run(uncond_images), 10)
    with pytest.raises(ConfigError, match="2 counts for 10 class_names"):
        override(run.cfg, {"data.class_counts": (1, 2)})


def test_cli_class_data_draws_the_data_mix_with_labels_in_the_npz(cond_images, tmp_path):
    out = tmp_path / "mix.npz"
    flags = ["--class", "data", "-n", "40", "--guidance", "1", "--out", str(out), "-q"]
    assert main(["sample", str(cond_images), *flags]) == 0
    with np.load(out) as f:
        arr, labels, names = f["arr_0"], f["labels"], f["class_names"]
    counts = np.array(load_run(cond_images).cfg.data.class_counts)
    assert arr.shape[0] == 40 and labels.shape == (40,) and list(names) == [str(i) for i in range(10)]
    assert np.all(np.abs(np.bincount(labels, minlength=10) - counts / counts.sum() * 40) < 1)
    assert (tmp_path / "mix.png").is_file()
    assert load_run(cond_images).cfg.sample.guidance is None  # no saved weight: the default guides
    assert main(["sample", str(cond_images), "--class", "data", "-n", "9", "--out", str(out), "--overwrite",
                 "-q"]) == 0  # fmt: skip


# ----- RePaint ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,jump,r", [(20, 5, 3), (100, 10, 5), (7, 10, 10), (30, 4, 1)])
def test_jump_schedule_walks_from_noise_to_data_in_unit_steps(n, jump, r):
    walk = jump_schedule(n, jump, r)
    assert walk[0] == n and walk[-1] == 0 and min(walk) == 0 and max(walk) == n
    assert all(abs(a - b) == 1 for a, b in zip(walk, walk[1:], strict=False))
    ups = sum(b > a for a, b in zip(walk, walk[1:], strict=False))
    assert repaint_nfe(n, jump, r) == n + ups  # every step up is walked down again
    if r == 1:
        assert walk == list(range(n, -1, -1))


def test_repaint_keeps_the_known_pixels_exactly(cond_images):
    run = load_run(cond_images)
    known = torch.rand(3, *run.data_shape) * 2 - 1
    fill = torch.zeros(1, 1, *run.data_shape[1:], dtype=torch.bool)
    fill[..., :, :4] = True
    out = inpaint(run, known, fill, steps=10, jump_length=3, resample=2, seed=1)
    assert torch.equal(out[..., :, 4:], known[..., :, 4:])
    assert not torch.equal(out[..., :, :4], known[..., :, :4])


def test_repaint_without_a_known_region_is_ancestral_sampling_when_not_resampling():
    model, diff = _cond_mlp(), GaussianDiffusion(make_beta_schedule("linear", 20), objective="v")
    from ddpmkit.samplers import ddpm_sample

    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    den = Denoiser(model, diff)
    a = repaint_sample(den, x, known=torch.zeros_like(x), keep=torch.zeros(1, 2), resample=1,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    # the ancestral sampler draws one noise per step; RePaint also draws the (unused) known-part noise
    g = torch.Generator().manual_seed(1)
    ref = x.clone()
    for i in range(20):
        t = torch.full((16,), 19 - i)
        pred = den(ref, t)
        mean, _, logv = diff.p_mean_variance_from_x0(pred.x0, ref, t)
        ref = mean if i == 19 else mean + torch.exp(0.5 * logv) * torch.randn(ref.shape, generator=g)
        if i < 19:
            torch.randn(ref.shape, generator=g)  # the known part's noise
    torch.testing.assert_close(a, ref)
    assert ddpm_sample is not None


# ----- SDEdit and interpolation ---------------------------------------------------------------------
def test_sdedit_strength_zero_returns_the_input_and_one_a_fresh_sample(cond_images):
    run = load_run(cond_images)
    x0 = torch.rand(4, *run.data_shape) * 2 - 1
    assert torch.equal(edit(run, x0, 0.0), x0)
    fresh, _ = generate(run, 4, seed=5, progress=False)
    assert torch.equal(edit(run, x0, 1.0, seed=5), fresh)
    half = edit(run, x0, 0.5, seed=5)
    assert half.shape == x0.shape and not torch.equal(half, x0)


def test_slerp_keeps_the_ends_and_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 500, generator=g), torch.randn(3, 500, generator=g)
    z = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(z[0], a)
    torch.testing.assert_close(z[-1], b)
    # two independent Gaussians are nearly orthogonal with equal norms: the path keeps the norm
    assert ((z.norm(dim=-1) / a.norm(dim=-1)) - 1).abs().max() < 0.15


def test_interpolation_frames_start_and_end_at_the_seeds_samples(cond_images):
    run = load_run(cond_images)
    frames = interpolate(run, 4, seeds=(3, 4))
    ends = [generate(run, 1, run.cfg.sample.__class__(sampler="ddim", steps=5), seed=s, progress=False)[0]
            for s in (3, 4)]  # fmt: skip
    torch.testing.assert_close(frames[0], ends[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], ends[1][0], atol=1e-5, rtol=0)


# ----- the command line ----------------------------------------------------------------------------------
def test_cli_class_grid_sweep_inpaint_edit_interpolate(cond_images, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", str(cond_images), "--class", "all", "-n", "2", "--out", str(out), "-q"]) == 0
    with np.load(out) as z:
        assert z["arr_0"].shape == (20, 8, 8, 1) and z["labels"].tolist() == sorted(list(range(10)) * 2)
    assert main(["sample", str(cond_images), "--class", "3,5", "--guidance", "0,2", "-n", "2",
                 "--out", str(tmp_path / "w.npz"), "-q"]) == 0  # fmt: skip
    assert (tmp_path / "w.png").is_file()
    digit = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    img = _png(tmp_path / "in.png", digit)
    assert (
        main(
            [
                "inpaint",
                str(cond_images),
                "--image",
                img,
                "--mask",
                "left",
                "--steps",
                "6",
                "--resample",
                "2",
                "--jump-length",
                "2",
                "--class",
                "4",
                "--out",
                str(tmp_path / "o.png"),
                "-q",
            ]
        )
        == 0
    )
    done = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(done[:, 4:], digit[:, 4:])  # the known half, pixel for pixel
    assert (tmp_path / "o_compare.png").is_file()
    edited = str(tmp_path / "e.png")
    assert main(["edit", str(cond_images), "--image", img, "--strength", "0.4", "--out", edited, "-q"]) == 0
    assert (
        main(["interpolate", str(cond_images), "--frames", "3", "--out", str(tmp_path / "i.png"), "-q"]) == 0
    )
    assert np.load(tmp_path / "i.npz")["arr_0"].shape == (3, 8, 8, 1)


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_cli_bad_steering_inputs_get_one_line_and_exit_2(cond_images, uncond_images, tmp_path, capsys):
    run, out = str(cond_images), str(tmp_path / "x.npz")
    _one_line_error(capsys, ["sample", run, "--class", "seven", "--out", out, "-q"], "unknown class 'seven'")
    _one_line_error(
        capsys,
        ["sample", run, "--class", "1", "--out", str(tmp_path / "s.png"), "-q"],
        "names the samples .npz",
    )
    _one_line_error(capsys, ["sample", run, "--class", "12", "--out", out, "-q"], "out of range")
    _one_line_error(capsys, ["sample", str(uncond_images), "--guidance", "2", "--out", out, "-q"],
                    "class-conditional run")  # fmt: skip
    _one_line_error(
        capsys, ["sample", str(uncond_images), "--class", "1", "--out", out, "-q"], "unconditional"
    )
    _one_line_error(
        capsys, ["sample", str(uncond_images), "--class", "data", "--out", out, "-q"], "unconditional"
    )
    _one_line_error(capsys, ["sample", run, "--class", "data", "--guidance", "0,1", "--out", out, "-q"],
                    "one --guidance")  # fmt: skip
    _one_line_error(
        capsys, ["sample", run, "--class", "1", "--guidance", "nan", "--out", out, "-q"], "finite"
    )
    good = _png(tmp_path / "g.png", np.zeros((8, 8), np.uint8))
    big = _png(tmp_path / "big.png", np.zeros((9, 8), np.uint8))
    rgb = _png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    gray_mask = _png(tmp_path / "m.png", (np.arange(64, dtype=np.uint8) * 3).reshape(8, 8))
    small_mask = _png(tmp_path / "m4.png", np.zeros((4, 4), np.uint8))
    o = str(tmp_path / "o.png")
    _one_line_error(capsys, ["inpaint", run, "--image", big, "--mask", "left", "--out", o], "8x9 pixels")
    _one_line_error(capsys, ["inpaint", run, "--image", rgb, "--mask", "left", "--out", o], "mode RGB")
    _one_line_error(capsys, ["inpaint", run, "--image", good, "--mask", gray_mask, "--out", o], "binary")
    _one_line_error(capsys, ["inpaint", run, "--image", good, "--mask", small_mask, "--out", o], "4x4 pixels")
    _one_line_error(capsys, ["inpaint", run, "--image", good, "--mask", "diagonal", "--out", o], "neither")
    _one_line_error(capsys, ["edit", run, "--image", good, "--strength", "1.5", "--out", o], "strength")
    _one_line_error(capsys, ["interpolate", str(uncond_images), "--guidance", "1", "--out", o], "or --guide")
    _one_line_error(
        capsys, ["edit", str(uncond_images), "--image", good, "--class", "2", "--out", o], "unconditional"
    )


def test_cli_steering_works_on_unconditional_runs(uncond_images, tmp_path):
    img = _png(tmp_path / "in.png", (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8))
    run, out = str(uncond_images), str(tmp_path / "o.png")
    assert main(["edit", run, "--image", img, "--strength", "0.5", "--out", out, "-q"]) == 0
    assert main(["inpaint", run, "--image", img, "--mask", "center", "--steps", "4", "--resample", "1",
                 "--out", out, "-q", "--overwrite"]) == 0  # fmt: skip
    assert main(["interpolate", run, "--images", f"{img},{img}", "--frames", "2", "--out", out, "-q",
                 "--overwrite"]) == 0  # fmt: skip
    inpaint_flags = ["inpaint", "--mask", "center", "--steps", "4", "--resample", "1"]
    for cmd in (["edit", "--strength", "0.5"], inpaint_flags):
        # autoguidance needs no class (a run guiding itself is a valid, if useless, weak run)
        assert main([cmd[0], run, "--image", img, *cmd[1:], "--guide", run, "--guidance", "1", "--out", out,
                     "-q", "--overwrite"]) == 0  # fmt: skip
    assert main(["interpolate", run, "--frames", "2", "--guide", run, "--guidance", "1", "--out", out, "-q",
                 "--overwrite"]) == 0  # fmt: skip


def test_class_accuracy_counts_the_requested_class_per_class():
    from ddpmkit.eval.images import class_accuracy

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    acc = class_accuracy(probs, np.array([0, 0, 1, 1]), ("a", "b"))
    assert acc == {"a": 0.5, "b": 0.5}
