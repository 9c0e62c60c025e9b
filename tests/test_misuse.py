"""Bad inputs and misuse of the command line: each gets exit code 2 and one line on stderr, no
traceback, and leaves every file that existed before exactly as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ddpmkit.cli import main

from .conftest import SHARED_DATA
from .test_train import TINY_FLAGS


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 40-step points run."""
    run = tmp_path_factory.mktemp("misuse") / "run"
    assert main(["train", *TINY_FLAGS, "--steps", "40", "-o", str(run), "-q", "--no-report"]) == 0
    return run


def snapshot(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under the folders (and the files' modes)."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not p.name.startswith(".lock"):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


def _files(tmp: Path, run: Path) -> dict[str, str]:
    """The inputs the cases use, written into `tmp`; returns name -> path."""
    (tmp / "latin1.json").write_bytes(b'{"train": {"lr": "\xe9"}}')
    (tmp / "text.npz").write_text("hello, not an archive\n")
    (tmp / "huge.csv").write_text("x,y\n1e308,1\n2,3\n3,4\n")
    np.savez(tmp / "nan_points.npz", arr_0=np.full((50, 2), np.nan, np.float32))
    np.savez(tmp / "existing.npz", arr_0=np.zeros((3, 2), np.float32))
    os.mkfifo(tmp / "fifo.npz")
    broken = tmp / "broken_run"
    shutil.copytree(run, broken)
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["model"]["mlp"]["hidden"]
    (broken / "config.json").write_text(json.dumps(cfg))
    names = ("latin1.json", "text.npz", "huge.csv", "nan_points.npz", "existing.npz", "fifo.npz")
    return {k.split(".")[0]: str(tmp / k) for k in names} | {"broken": str(broken)}


CASES = {
    # data lost before
    "sample --out a .png": (["sample", "{run}", "--out", "{tmp}/s.png"], "names the samples .npz"),
    "sample --out the model": (["sample", "{run}", "--out", "{run}/model.safetensors"], "names the samples"),
    "sample into the run's files": (["sample", "{run}", "--out", "{run}/samples.npz"], "file of the run"),
    "sample into its checkpoints": (
        ["sample", "{run}", "--out", "{run}/checkpoints/x.npz"],
        "file of the run",
    ),
    "sample over a file": (["sample", "{run}", "--out", "{existing}"], "--overwrite"),
    "sample into a fifo": (["sample", "{run}", "--out", "{fifo}", "--overwrite"], "not a regular file"),
    "resume shortening a run": (["train", "--resume", "{run}", "--steps", "10", "-q"], "would shorten"),
    # tracebacks or unclear errors before
    "config not UTF-8": (["train", "--config", "{latin1}", "--dry-run"], "cannot read config"),
    "lr nan": (["train", "--lr", "nan", "--dry-run"], "lr: cannot read nan as a finite number"),
    "lr inf": (["train", "--lr", "inf", "--dry-run"], "a finite number"),
    "eta nan": (["sample", "{run}", "--sampler", "ddim", "--eta", "nan", "--out", "{tmp}/e.npz"], "eta"),
    "unknown schedule": (["train", "--schedule", "foo"], "invalid choice"),
    "unknown objective": (["train", "--objective", "foo"], "invalid choice"),
    "unknown sample.sampler": (["train", "--sample.sampler", "foo"], "invalid choice"),
    "unknown --sampler": (["sample", "{run}", "--sampler", "foo"], "invalid choice"),
    "config with keys removed": (["sample", "{broken}", "--out", "{tmp}/b.npz"], "lacks model.mlp.hidden"),
    "text file as .npz": (["eval", "{text}", "--dataset", "moons"], "not an .npz archive"),
    "CSV of 1e308": (["train", "--dataset", "{huge}", "-o", "{tmp}/h", "-q", "--steps", "2"], "beyond"),
    "eval of NaN points": (["eval", "{nan_points}", "--dataset", "moons"], "NaN or infinite"),
    "missing MNIST files": (
        ["train", "--dataset", "mnist", "--data-dir", "{tmp}/none", "--steps", "1", "-o", "{tmp}/m"],
        "--download",
    ),  # fmt: skip
    "download offline": (
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            "{tmp}/dl",
            "--download",
            "--data.mirror",
            "http://127.0.0.1:9/",
            "--steps",
            "1",
            "-o",
            "{tmp}/m2",
        ],
        "cannot download",
    ),  # fmt: skip
    "image size beyond memory (dry run)": (
        ["train", "--dataset", "digits", "--image-size", "100000", "--dry-run"],
        "data.image_size must lie in [1, 4096]",
    ),  # fmt: skip
    "batch beyond memory": (
        ["train", "--dataset", "digits", "--batch-size", "4000000", "--steps", "1", "-o", "{tmp}/big"],
        "more than the",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_changed(case, finished, tmp_path, capsys):
    argv, needle = CASES[case]
    files = {"run": str(finished), "tmp": str(tmp_path), **_files(tmp_path, finished)}
    argv = [a.format(**files) for a in argv]
    before = snapshot(finished, tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(lines) == 1 and needle in lines[0], (case, err)
    assert "Traceback" not in err
    assert snapshot(finished, tmp_path) == before, case


def test_the_shared_mnist_at_a_huge_image_size_is_refused_before_loading(shared_data, capsys):
    argv = ["train", "--preset", "mnist", "--data-dir", str(SHARED_DATA / "mnist"), "--image-size", "1024"]
    assert main([*argv, "--dry-run"]) == 2
    assert "more than the" in capsys.readouterr().err


def test_resume_of_a_finished_run_with_its_own_steps_changes_nothing(finished, capsys):
    before = snapshot(finished)
    assert main(["train", "--resume", str(finished), "-q", "--no-report"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert snapshot(finished) == before


def test_overwrite_replaces_samples_and_names_follow_the_npz(finished, tmp_path):
    out = tmp_path / "s.npz"
    args = ["sample", str(finished), "-n", "20", "--out", str(out), "-q"]
    assert main(args) == 0 and out.is_file() and (tmp_path / "s.png").is_file()
    assert main(args) == 2  # exists
    assert main([*args, "--overwrite"]) == 0
