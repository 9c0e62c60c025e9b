"""The `ddpm` command line: a train + sample smoke run, and one clear line + exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.config import SAMPLERS

from .test_train import TINY_FLAGS


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY_FLAGS, "--steps", "300", "--lr", "3e-3", "-o", str(run)]) == 0
    return run


def test_train_writes_a_complete_run_dir(trained):
    for name in (
        "config.json",
        "model.safetensors",
        "loss.png",
        "forward.png",
        "samples.png",
        "denoise.gif",
        "metrics.json",
        "train_log.csv",
    ):
        assert (trained / name).is_file(), name
    m = json.loads((trained / "metrics.json").read_text())
    assert m["swd"] > 0 and m["swd_floor"] > 0 and m["swd_ratio"] == pytest.approx(m["swd"] / m["swd_floor"])
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["data"]["dataset"] == "moons" and cfg["diffusion"]["timesteps"] == 50


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--sampler", "ddim", "--steps", "10", "--eta", "0.5"],
        ["--sampler", "ddpm", "--steps", "7", "--gif"],
    ],
)
def test_sample_npz(trained, tmp_path, capsys, extra):
    out = tmp_path / "s.npz"
    code, _, err = run_cli(capsys, "sample", str(trained), "-n", "64", "--out", str(out), "-q", *extra)
    assert code == 0, err
    arr = np.load(out)["arr_0"]
    assert arr.shape == (64, 2) and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert out.with_suffix(".png").is_file()


def test_same_seed_same_samples(trained, tmp_path, capsys):
    arrs = []
    for name in ("a", "b"):
        run_cli(
            capsys, "sample", str(trained), "-n", "32", "--seed", "3", "--out", str(tmp_path / f"{name}.npz")
        )
        arrs.append(np.load(tmp_path / f"{name}.npz")["arr_0"])
    np.testing.assert_array_equal(*arrs)


def test_samples_come_back_in_data_coordinates(trained, tmp_path, capsys):
    run_cli(capsys, "sample", str(trained), "-n", "500", "--out", str(tmp_path / "s.npz"), "-q")
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert 0 < arr[:, 0].mean() < 1 and 0 < arr[:, 1].mean() < 0.5  # moons live around (0.5, 0.25)


def test_dry_run_prints_resolved_config(capsys):
    code, out, _ = run_cli(capsys, "train", "--dry-run", "--lr", "0.01", "--model.hidden", "64")
    assert code == 0 and '"lr": 0.01' in out and '"hidden": 64' in out and '"preset": "dino"' in out


def test_preset_then_flags_precedence(capsys):
    code, out, _ = run_cli(capsys, "train", "--dry-run", "--preset", "moons", "--steps", "77")
    cfg = json.loads(out[out.index("{") :])
    assert code == 0 and cfg["data"]["dataset"] == "moons" and cfg["train"]["steps"] == 77


def test_train_on_csv(tmp_path, capsys):
    csv = tmp_path / "pts.csv"
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 2)) * [1.0, 0.2] + [3.0, -1.0]
    csv.write_text("x,y\n" + "\n".join(f"{a},{b}" for a, b in pts))
    flags = [f if f != "moons" else str(csv) for f in TINY_FLAGS]
    code, _, err = run_cli(capsys, "train", *flags, "--steps", "5", "-o", str(tmp_path / "run"))
    assert code == 0, err
    assert (tmp_path / "run" / "samples.png").is_file()


def bad_csvs(tmp_path):
    cases = {
        "empty.csv": "",
        "header_only.csv": "x,y\n",
        "text.csv": "x,y\n1,2\na,b\n",
        "nan.csv": "1,2\nnan,3\n",
        "three_cols.csv": "1,2,3\n4,5,6\n",
        "inf.csv": "1,2\n3,inf\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    return list(cases)


@pytest.mark.parametrize(
    "name",
    ["empty.csv", "header_only.csv", "text.csv", "nan.csv", "three_cols.csv", "inf.csv", "missing.csv"],
)
def test_bad_csv(tmp_path, capsys, name):
    bad_csvs(tmp_path)
    code, _, err = run_cli(
        capsys, "train", "--dataset", str(tmp_path / name), "--steps", "1", "-o", str(tmp_path / "run")
    )
    assert code == 2 and err.count("\n") == 1 and "error" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--dataset", "dragon"], "unknown dataset"),
        (["train", "--schedule", "exp"], "invalid choice"),
        (["train", "--objective", "score"], "invalid choice"),
        (["train", "--diffusion.schedule", "exp"], "invalid choice"),
        (["train", "-T", "0"], "T must lie in 1..100000"),
        (["train", "--sample.steps", "2000"], "exceeds T"),
        (["train", "--lr", "-1"], "train.lr must be > 0"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--train.batch_size", "abc"], "cannot read"),
        (["train", "--resume", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_train_options(capsys, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "run"))
    assert code == 2 and needle in err and "Traceback" not in err


def test_sample_errors(trained, tmp_path, capsys):
    folder = tmp_path / "d.npz"
    folder.mkdir()
    cases = [
        (["sample", "/nonexistent/run"], "does not exist"),
        (["sample", str(tmp_path)], "no config.json"),
        (["sample", str(trained), "--steps", "51"], "exceeds"),
        (["sample", str(trained), "--steps", "0"], "argument --steps: must lie in 1.."),
        (["sample", str(trained), "-n", "0"], "argument -n: must lie in 1.."),
        (["sample", str(trained), "--out", str(tmp_path / "no" / "dir" / "s.npz")], "does not exist"),
        (["sample", str(trained), "--out", str(tmp_path)], "names the samples .npz"),
        (["sample", str(trained), "--out", str(folder)], "is a folder"),
        (["sample", str(trained), "--sampler", "plms"], "invalid choice"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)
        assert err.strip().count("\n") == 0 or "usage" in err, err


def test_run_dir_without_checkpoint(tmp_path, capsys, trained):
    (tmp_path / "config.json").write_text((trained / "config.json").read_text())
    code, _, err = run_cli(capsys, "sample", str(tmp_path))
    assert code == 2 and "no checkpoint" in err


def test_train_into_an_earlier_run_needs_overwrite(trained, capsys):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "1", "-o", str(trained))
    assert code == 2 and "already holds a training run" in err and "--overwrite" in err
    assert out == ""  # refused before the config is printed
    code, _, err = run_cli(capsys, "train", "--resume", str(trained), "--overwrite")
    assert code == 2 and "pass one of them" in err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "1", "-o", str(blocker / "run"))
    assert code == 2 and "cannot write" in err


def test_missing_data_is_said_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--preset", "mnist", "--data-dir", str(tmp_path / "nope"),
                             "-o", str(run))  # fmt: skip
    assert code == 2 and "mnist" in err and err.count("\n") == 1
    assert out == "" and not run.exists()  # no summary, no run directory, no .lock


def test_overwrite_with_missing_data_keeps_the_earlier_run(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = sorted(p.name for p in run.iterdir())
    code, _, err = run_cli(capsys, "train", "--dataset", str(tmp_path / "missing.csv"), "--overwrite",
                           "-o", str(run))  # fmt: skip
    assert code == 2, err
    assert sorted(p.name for p in run.iterdir()) == before and (run / "model.safetensors").is_file()


def test_time_budget_says_so_instead_of_the_step_total(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "100000", "--max-minutes", "0.02",
                             "--no-report", "-o", str(tmp_path / "run"))  # fmt: skip
    assert code == 0, err
    assert "(time budget of 0.02 min)" in out and "/100000" not in out


def test_every_option_of_every_command_has_a_help_text():
    import argparse

    from ddpmkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"ddpm {name}: {action.option_strings or action.dest} has no help"


def test_every_command_is_one_registered_module():
    """A command is a module with add_parser and run, plus its line in COMMANDS (the order of --help)."""
    import argparse
    import subprocess
    import sys

    from ddpmkit.cli import COMMANDS, build_parser

    for module in COMMANDS.values():
        for function in ("add_parser", "run"):
            assert callable(getattr(module, function, None)), f"{module.__name__} has no {function}"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    p = subprocess.run([sys.executable, "-m", "ddpmkit.cli", "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert all(name in p.stdout for name in COMMANDS)


def test_forward_command(tmp_path, capsys):
    code, _, err = run_cli(capsys, "forward", "--dataset", "moons", "-T", "100", "--out", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "forward.png").is_file() and (tmp_path / "schedules.png").is_file()


TINY_IMAGE_FLAGS = [
    "--dataset",
    "digits",
    "-T",
    "20",
    "--model.base_channels",
    "8",
    "--model.channel_mult",
    "1,2",
    "--model.attn_resolutions",
    "4",
    "--model.num_res_blocks",
    "1",
    "--batch-size",
    "16",
    "--train.threads",
    "1",
    "--sample.steps",
    "5",
    "--train.preview_every",
    "2",
    "-q",
]


@pytest.fixture(scope="module")
def trained_images(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "img"
    assert main(["train", *TINY_IMAGE_FLAGS, "--steps", "4", "-o", str(run)]) == 0
    return run


def test_image_run_dir(trained_images):
    for name in (
        "samples.png",
        "forward.png",
        "loss.png",
        "denoise.gif",
        "metrics.json",
        "previews/step-00000002.png",
    ):
        assert (trained_images / name).is_file(), name
    cfg = json.loads((trained_images / "config.json").read_text())
    assert cfg["preset"] == "digits" and cfg["model"]["kind"] == "unet"


def test_sample_images(trained_images, tmp_path, capsys):
    out = tmp_path / "img.npz"
    code, _, err = run_cli(
        capsys,
        "sample",
        str(trained_images),
        "-n",
        "6",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--gif",
        "--trajectory",
        "--out",
        str(out),
        "-q",
    )
    assert code == 0, err
    arr = np.load(out)["arr_0"]
    assert arr.shape == (6, 8, 8, 1) and arr.dtype == np.uint8
    for suffix in (".png", "_denoise.gif", "_trajectory.png"):
        assert (tmp_path / f"img{suffix}" if suffix == ".png" else tmp_path / f"img{suffix}").is_file()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_writes_the_gif_and_trajectory(trained_images, tmp_path, capsys, sampler):
    out = tmp_path / "s.npz"
    flags = ["-n", "3", "--sampler", sampler, "--steps", "3", "--gif", "--trajectory", "--threshold", "0.995"]
    code, msg, err = run_cli(capsys, "sample", str(trained_images), *flags, "--out", str(out), "-q")
    assert code == 0, err
    calls = 5 if sampler == "heun" else 3
    assert f"({sampler}, 3 steps" in msg and f"{calls} model calls per sample" in msg
    for name in ("s.png", "s_denoise.gif", "s_trajectory.png"):
        assert (tmp_path / name).is_file(), name


def test_threshold_on_points_is_one_line(trained, tmp_path, capsys):
    out = str(tmp_path / "p.npz")
    code, _, err = run_cli(capsys, "sample", str(trained), "--threshold", "0.99", "--out", out)
    assert code == 2 and "clip range" in err and len(err.strip().splitlines()) == 1


def test_incompatible_checkpoint(trained_images, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_images, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["base_channels"] = 16
    (run / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "sample", str(run), "-n", "2")
    assert code == 2 and "does not match" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "does not exist"),
        (["--dataset", "digits", "--image-size", "2", "--model.channel_mult", "1,2,2"], "image"),
        (["--dataset", "folder:/nonexistent/imgs"], "not"),
    ],
)
def test_bad_image_inputs(tmp_path, capsys, argv, needle):
    code, _, err = run_cli(capsys, "train", *argv, "--steps", "1", "-o", str(tmp_path / "run"), "-q")
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_empty_image_folder_and_corrupt_gz(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{tmp_path / 'empty'}",
        "--steps",
        "1",
        "-o",
        str(tmp_path / "run"),
    )
    assert code == 2 and "no images" in err.lower(), err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"\x1f\x8b\x08\x00garbage")
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(bad),
        "--steps",
        "1",
        "-o",
        str(tmp_path / "run"),
    )
    assert code == 2 and "gzip" in err.lower(), err


def test_eval_points(trained, tmp_path, capsys):
    out = tmp_path / "s.npz"
    run_cli(capsys, "sample", str(trained), "-n", "300", "--out", str(out), "-q")
    code, stdout, err = run_cli(capsys, "eval", str(out), "--dataset", "moons", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["n"] == 300 and r["swd"] > 0 and r["swd_floor"] > 0


def test_eval_nll(trained_images, capsys):
    code, stdout, err = run_cli(capsys, "eval", "--nll", str(trained_images), "--subset", "4", "--json", "-q")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["n"] == 4 and r["bpd"] > 0 and r["exact"]


def test_eval_errors(tmp_path, capsys, trained):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    imgs = tmp_path / "imgs.npz"
    np.savez(imgs, arr_0=np.zeros((8, 8, 8, 1), np.uint8))
    cases = [
        (["eval", str(tmp_path / "missing.npz")], "does not exist"),
        (["eval", str(bad)], "npz"),
        (
            ["eval", str(imgs), "--dataset", "digits", "--cache-dir", str(tmp_path / "cache")],
            "train-classifier",
        ),
        (["eval", "--nll", str(trained)], "image models"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and needle in err and "Traceback" not in err, (argv, err)


def test_fid_during_training_keeps_best(tmp_path, capsys):
    from ddpmkit.eval.classifier import train_classifier

    cache = tmp_path / "cache"
    train_classifier("digits", cache_dir=cache, epochs=1, max_train_images=300, progress=False)
    run = tmp_path / "run"
    code, out, err = run_cli(
        capsys,
        "train",
        *TINY_IMAGE_FLAGS,
        "--steps",
        "4",
        "--train.eval_every",
        "2",
        "--train.eval_samples",
        "16",
        "--train.eval_steps",
        "3",
        "--train.eval_cache_dir",
        str(cache),
        "--no-report",
        "-o",
        str(run),
    )
    assert code == 0, err
    rows = (run / "eval_log.csv").read_text().splitlines()
    assert rows[0] == "step,fid" and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    best = json.loads((run / "best.json").read_text())
    assert best["fid"] == pytest.approx(min(float(r.split(",")[1]) for r in rows[1:]), rel=1e-5)
    code, _, err = run_cli(
        capsys,
        "sample",
        str(run),
        "--best",
        "-n",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "b.npz"),
        "-q",
    )
    assert code == 0, err


def test_fid_during_training_needs_a_classifier(tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "train",
        *TINY_IMAGE_FLAGS,
        "--steps",
        "2",
        "--train.eval_every",
        "1",
        "--train.eval_cache_dir",
        str(tmp_path / "none"),
        "-o",
        str(tmp_path / "run"),
    )
    assert code == 2 and "train-classifier" in err, err


def test_sample_starts_from_the_runs_saved_sample_options(trained, tmp_path, capsys):
    """`ddpm sample RUN` uses the sampler/steps/eta in RUN/config.json; flags override them."""
    import json
    import shutil

    import numpy as np

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["sample"].update(sampler="ddim", steps=7, eta=0.0, grid=None)
    (run / "config.json").write_text(json.dumps(cfg))
    code, out, _ = run_cli(capsys, "sample", str(run), "-n", "20", "--out", str(tmp_path / "a.npz"), "-q")
    assert code == 0 and "(ddim, 7 steps" in out
    code, out, _ = run_cli(capsys, "sample", str(trained), "-n", "20", "--sampler", "ddim", "--steps", "7",
                           "--out", str(tmp_path / "b.npz"), "-q")  # fmt: skip
    assert code == 0 and "(ddim, 7 steps" in out
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])
    code, out, _ = run_cli(capsys, "sample", str(run), "-n", "5", "--sampler", "ddpm", "--steps", "all",
                           "--out", str(tmp_path / "c.npz"), "-q")  # fmt: skip
    assert code == 0 and "(ddpm, 50 steps" in out


def _rgb_folder(root: Path, n: int, *, corrupt: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    if corrupt:
        (root / "broken.png").write_bytes(b"not a png at all" * 8)
    return root


@pytest.mark.parametrize(
    "case,flags,needle",
    [
        ("too small", [], "found 3 image(s); training needs at least 8"),
        ("strict", ["--data.strict", "true"], "broken.png"),
        ("background", ["--data.background", "not-a-colour"], "background must be a colour"),
        ("resize", ["--data.resize", "stretch"], "unknown data.resize 'stretch'; choose one of crop, pad"),
        ("channels", ["--data.channels", "2"], "channels"),
    ],
)
def test_bad_folder_inputs_are_one_line_and_exit_2_and_write_nothing(tmp_path, capsys, case, flags, needle):
    folder = _rgb_folder(tmp_path / "imgs", 3 if case == "too small" else 12, corrupt=case == "strict")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--dataset", f"folder:{folder}", *flags, "--steps", "1",
                           "-o", str(out), "-q")  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len([line for line in lines if "error" in line]) == 1, err
    assert not out.exists()  # checked before the run directory is made


def test_eval_against_a_folder_without_its_classifier_says_how_to_train_it(tmp_path, capsys):
    folder = _rgb_folder(tmp_path / "imgs", 12)
    samples = tmp_path / "s.npz"
    np.savez(samples, arr_0=np.zeros((8, 16, 16, 3), np.uint8))
    code, _, err = run_cli(capsys, "eval", str(samples), "--dataset", f"folder:{folder}",
                           "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    assert code == 2 and "ddpm train-classifier --dataset folder:" in err and "Traceback" not in err, err


def test_colour_folder_end_to_end_every_picture_is_rgb(tmp_path, capsys):
    """RGB everywhere: a class-conditional run on a colour folder; sample grids per class with
    guidance, the trajectory panel and GIF, inpaint, edit and interpolate all write colour images."""
    folder = tmp_path / "imgs"
    for k, colour in enumerate(((220, 40, 40), (40, 40, 220))):
        (folder / f"c{k}").mkdir(parents=True)
        for i in range(6):
            img = np.full((16, 16, 3), 255, np.uint8)
            img[2 + i : 10 + i, 4:12] = colour
            Image.fromarray(img).save(folder / f"c{k}" / f"{i}.png")
    run = tmp_path / "run"
    flags = [a if a != "digits" else f"folder:{folder}" for a in TINY_IMAGE_FLAGS]
    assert main(["train", *flags, "--cond", "class", "--steps", "3", "-o", str(run), "--no-report"]) == 0
    o = tmp_path / "out"
    o.mkdir()
    commands = [
        ["sample", str(run), "--class", "all", "-n", "2", "--guidance", "0,1", "--steps", "3", "--out",
         str(o / "s.npz"), "--trajectory", "--gif"],
        ["inpaint", str(run), "--image", str(folder / "c0" / "0.png"), "--mask", "left", "--steps", "4",
         "--class", "c0", "--out", str(o / "inpaint.png")],
        ["edit", str(run), "--image", str(folder / "c1" / "1.png"), "--strength", "0.5", "--steps", "3",
         "--class", "c1", "--out", str(o / "edit.png")],
        ["interpolate", str(run), "--seeds", "1,2", "--frames", "3", "--steps", "3", "--class", "c0",
         "--out", str(o / "interp.png")],
    ]  # fmt: skip
    for argv in commands:
        code, _, err = run_cli(capsys, *argv, "-q")
        assert code == 0, (argv[0], err)
    pictures = sorted(o.glob("*.png")) + sorted(o.glob("*.gif"))
    assert {p.suffix for p in pictures} == {".png", ".gif"} and len(pictures) >= 5, pictures
    for p in pictures:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        # colour, not gray: some pixel's channels differ (a grayscale picture has R = G = B everywhere)
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 30).any(), p.name
    assert np.load(o / "s.npz")["arr_0"].shape[1:] == (16, 16, 3)
