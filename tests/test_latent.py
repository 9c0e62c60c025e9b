"""Latent diffusion (data/latent.py, `ddpm train-autoencoder`, `ddpm train --latent`): the space
round trip and scale, a latent run's files, save/load/resume bit-exact, every sampler decoding to
images, the steering commands, and one line + exit code 2 on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.config import SAMPLERS
from ddpmkit.data import build_dataset
from ddpmkit.io import load_tensors
from ddpmkit.run import generate, load_run

from .test_cli import run_cli

AE = ["--dataset", "digits", "--data.image_size", "16", "--model.autoencoder.base_channels", "8",
      "--batch-size", "32", "--lr", "3e-3", "--train.warmup_steps", "10", "--train.threads", "1",
      "-q"]  # fmt: skip
LATENT = ["--model.unet.base_channels", "16", "--model.unet.channel_mult", "1,2", "-T", "50",
          "--batch-size", "32", "--train.threads", "1", "--sample.steps", "5", "--train.preview_every", "4",
          "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ae, lat = root / "ae", root / "lat"
    assert main(["train-autoencoder", *AE, "--steps", "200", "-o", str(ae)]) == 0
    assert main(["train", "--latent", str(ae), *LATENT, "--steps", "8", "--data.cond", "class",
                 "-o", str(lat)]) == 0  # fmt: skip
    return ae, lat


def test_latent_run_files_and_config(runs):
    ae, lat = runs
    for name in ("samples.png", "forward.png", "loss.png", "denoise.gif", "metrics.json",
                 "previews/step-00000004.png"):  # fmt: skip
        assert (lat / name).is_file(), name
    cfg = json.loads((lat / "config.json").read_text())
    ae_cfg = json.loads((ae / "config.json").read_text())
    assert cfg["data"]["space"] == "latent" and cfg["latent"]["autoencoder"] == str(ae)
    assert cfg["model"]["autoencoder"] == ae_cfg["model"]["autoencoder"]  # the architecture travels
    assert cfg["data"]["image_size"] == 16 and cfg["preset"] == "latent"


def test_the_run_is_self_contained_and_scaled(runs, tmp_path):
    """The autoencoder's weights are in the latent run's model file: the run loads and samples
    after its autoencoder run is gone; the scale makes the training latents unit-variance."""
    ae, lat = runs
    moved = tmp_path / "lat"
    moved.mkdir()
    for f in ("config.json", "model.safetensors"):
        (moved / f).write_bytes((lat / f).read_bytes())
    run = load_run(moved)
    assert run.space.name == "latent" and run.pixel_shape == (1, 16, 16) and run.data_shape == (4, 4, 4)
    x = build_dataset(run.cfg.data).x
    z = run.space.to_model(x)
    assert abs(float(z.std()) - 1.0) < 1e-4  # scale = 1 / std of these very latents
    # predicted x0 is clipped to the training latents' range (an eps model diverges without it)
    assert run.space.clip_range == (-float(z.abs().max()), float(z.abs().max()))
    ae_tensors = load_tensors(ae / "model.safetensors")
    run_tensors = load_tensors(moved / "model.safetensors")
    for k, v in ae_tensors.items():
        if k.startswith("ema."):
            assert torch.equal(run_tensors["space.ae." + k[4:]], v), k


def test_resume_is_bit_exact(runs, tmp_path):
    ae, _ = runs
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--latent", str(ae), *LATENT, "--steps", "6", "--train.checkpoint_every", "3",
                 "--no-report", "-o", str(a)]) == 0  # fmt: skip
    assert main(["train", "--latent", str(ae), *LATENT, "--steps", "3", "--train.checkpoint_every", "3",
                 "--no-report", "-o", str(b)]) == 0  # fmt: skip
    assert main(["train", "--resume", str(b), "--steps", "6", "--no-report", "-q"]) == 0
    wa, wb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_decodes_to_images(runs, sampler):
    run = load_run(runs[1])
    y = {"y": torch.tensor([0, 1, 2])}
    x, _ = generate(run, 3, seed=0, sampler=sampler, steps=4, cond=y, progress=False)
    assert x.shape == (3, *run.data_shape)
    u8 = run.space.to_data(x)
    assert u8.dtype == np.uint8 and u8.shape == (3, 16, 16, 1)


def test_sample_trajectory_gif_and_class_grid(runs, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, _, err = run_cli(capsys, "sample", str(runs[1]), "-n", "2", "--class", "all", "--steps", "4",
                           "--trajectory", "--gif", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert np.load(out)["arr_0"].shape == (20, 16, 16, 1)
    for suffix in ("_trajectory.png", "_denoise.gif", ".png"):
        assert (tmp_path / f"s{suffix}").is_file(), suffix


def test_edit_and_interpolate_take_images(runs, tmp_path, capsys):
    src = tmp_path / "src.npz"
    np.savez(src, build_dataset(load_run(runs[1]).cfg.data).x[:2].add(1).mul(127.5).round().byte()
             .permute(0, 2, 3, 1).numpy())  # fmt: skip
    code, _, err = run_cli(capsys, "edit", str(runs[1]), "--image", str(src), "--strength", "0.5",
                           "--steps", "4", "--out", str(tmp_path / "e.npz"))  # fmt: skip
    assert code == 0, err
    assert np.load(tmp_path / "e.npz")["arr_0"].shape == (2, 16, 16, 1)
    code, _, err = run_cli(capsys, "interpolate", str(runs[1]), "--frames", "3", "--steps", "4",
                           "--out", str(tmp_path / "i.png"))  # fmt: skip
    assert code == 0, err and (tmp_path / "i.png").is_file()


def test_inpaint_refuses_a_latent_run_with_the_reason(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "inpaint", str(runs[1]), "--image", str(tmp_path / "none.npz"),
                           "--out", str(tmp_path / "o.png"))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "latent" in err and "pixel" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--dataset", "mnist"], "was trained on digits"),
        (["--data.image_size", "8"], "takes images of shape (1, 16, 16)"),
        (["--data.channels", "3"], "takes images of shape (1, 16, 16)"),
    ],
)
def test_mismatched_data_is_one_line(runs, tmp_path, capsys, extra, needle, shared_data):
    code, _, err = run_cli(capsys, "train", "--latent", str(runs[0]), *LATENT, *extra, "--steps", "2",
                           "--data-dir", str(shared_data / "mnist"), "-o", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err and not (tmp_path / "x").exists()


def test_bad_autoencoder_runs_are_one_line(runs, tmp_path, capsys):
    cases = {
        str(runs[1]): "not one of `ddpm train-autoencoder`",  # a diffusion run
        str(tmp_path / "missing"): "",
        str(tmp_path): "",  # a directory without a config
    }
    for ae, needle in cases.items():
        code, _, err = run_cli(capsys, "train", "--latent", ae, *LATENT, "--steps", "2",
                               "-o", str(tmp_path / "x"))  # fmt: skip
        assert code == 2 and len(err.strip().splitlines()) == 1, (ae, err)
        assert needle in err and not (tmp_path / "x").exists()


def test_an_autoencoder_run_does_not_sample(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", str(runs[0]), "-n", "2", "--out", str(tmp_path / "s.npz"))
    assert code == 2 and "does not sample" in err and not (tmp_path / "s.npz").exists()


def test_nll_refuses_a_latent_run(runs, capsys):
    code, _, err = run_cli(capsys, "eval", "--nll", str(runs[1]))
    assert code == 2 and "decoder" in err


def test_fid_during_training_and_the_autoencoder_report_use_decoded_images(runs, tmp_path, capsys):
    from ddpmkit.eval.autoencoder import write_autoencoder_report
    from ddpmkit.eval.classifier import train_classifier

    cache = tmp_path / "cache"
    train_classifier("digits", cache_dir=cache, image_size=16, epochs=1, max_train_images=300, progress=False)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--latent", str(runs[0]), *LATENT, "--steps", "2",
                           "--train.eval_every", "2", "--train.eval_samples", "8", "--train.eval_steps", "2",
                           "--train.eval_cache_dir", str(cache), "--no-report", "-o", str(run))  # fmt: skip
    assert code == 0, err
    rows = (run / "eval_log.csv").read_text().splitlines()
    assert rows[0] == "step,fid" and rows[1].split(",")[0] == "2" and float(rows[1].split(",")[1]) > 0
    m = write_autoencoder_report(runs[0], progress=False, cache_dir=cache)
    assert m["recon_fid"] >= 0 and m["fid_floor"] > 0
    assert m["recon_fid_ratio"] == m["recon_fid"] / m["fid_floor"]


def test_misuse_of_the_two_halves_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    ae, lat = map(str, runs)
    out = str(tmp_path / "x")
    cases = [
        (["edit", ae, "--image", "x.npz", "--out", f"{out}.png"], "does not sample"),
        (["interpolate", ae, "--out", f"{out}.png"], "does not sample"),
        (["train", "--resume", ae, "--steps", "999"], "train-autoencoder --resume"),
        (["train-autoencoder", "--resume", lat, "--steps", "999"], "`ddpm train --resume`"),
        (["train-autoencoder", *AE, "--train.eval_every", "5", "-o", out], "eval_every"),
        (["train-autoencoder", "--dataset", "moons", "-o", out], "image dataset"),
        (["train", "--preset", "latent", "--dataset", "digits", "-o", out], "--latent AE_RUN"),
        (["train", "--latent", ae, *LATENT, "-o", ae], "the autoencoder run itself"),
    ]
    for argv, needle in cases:
        before = sorted(p.name for p in runs[0].iterdir()), (runs[0] / "model.safetensors").read_bytes()
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert needle in err, (argv, err)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.png").exists(), argv
        after = sorted(p.name for p in runs[0].iterdir()), (runs[0] / "model.safetensors").read_bytes()
        assert after == before, argv


def test_default_run_directories_of_the_two_halves_differ():
    from ddpmkit.api import default_run_dir
    from ddpmkit.config import RunConfig, override

    ae = override(RunConfig(), {"data.dataset": "mnist", "train.task": "autoencoder",
                                "model.kind": "autoencoder"})  # fmt: skip
    lat = override(RunConfig(), {"data.dataset": "mnist", "data.space": "latent", "latent.autoencoder": "a"})
    assert str(default_run_dir(ae)) == "runs/mnist-ae" and str(default_run_dir(lat)) == "runs/mnist-latent"
