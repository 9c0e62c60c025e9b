"""The classes of failure of issue 29, one test per rule (each built from the probe's examples):
nothing lost, integrity that cannot be walked around, no silent wrong result, no hang, no traceback,
and the playground's reach limited to its --runs folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.config import RunConfig
from ddpmkit.errors import ConfigError, DdpmkitError

from .test_train import TINY_FLAGS


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 30-step points run with two checkpoints."""
    path = tmp_path_factory.mktemp("rel") / "run"
    flags = [
        *TINY_FLAGS,
        "--steps",
        "30",
        "--train.checkpoint_every",
        "15",
        "-o",
        str(path),
        "-q",
        "--no-report",
    ]
    assert main(["train", *flags]) == 0
    return path


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A fresh copy of the run to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    from .test_cli import TINY_IMAGE_FLAGS

    path = tmp_path_factory.mktemp("rel_img") / "run"
    assert (
        main(
            [
                "train",
                *TINY_IMAGE_FLAGS,
                "--cond",
                "class",
                "--steps",
                "2",
                "-o",
                str(path),
                "-q",
                "--no-report",
            ]
        )
        == 0
    )
    return path


def one_line_exit_2(capsys, argv: list[str], words: str = "") -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals (a value its type rejects)
        rc = e.code
    assert rc == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- 1. data loss: only files the toolkit wrote are replaced or removed -------------------------------
def test_a_planted_lock_link_is_not_followed(copy, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (copy / ".lock").unlink(missing_ok=True)
    (copy / ".lock").symlink_to(precious)
    one_line_exit_2(
        capsys, ["train", "--resume", str(copy), "--steps", "40", "-q", "--no-report"], "symbolic link"
    )
    assert precious.read_text() == "mine"


def test_a_lock_that_is_a_folder_or_foreign_is_refused(copy, capsys):
    (copy / ".lock").unlink(missing_ok=True)
    (copy / ".lock").mkdir()
    one_line_exit_2(capsys, ["train", "--resume", str(copy), "--steps", "40", "-q", "--no-report"], ".lock")
    (copy / ".lock").rmdir()
    (copy / ".lock").write_text("my notes, not a lock")
    one_line_exit_2(
        capsys, ["train", "--resume", str(copy), "--steps", "40", "-q", "--no-report"], "not a run lock"
    )
    assert (copy / ".lock").read_text() == "my notes, not a lock"


def test_overwrite_never_deletes_a_users_files_in_a_folder_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "previews").mkdir(parents=True)
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "previews" / "holiday.png").write_bytes(b"png")
    flags = [*TINY_FLAGS, "--steps", "2", "-o", str(mine), "--overwrite", "-q", "--no-report"]
    one_line_exit_2(capsys, ["train", *flags], "did not write")
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    assert (mine / "previews" / "holiday.png").read_bytes() == b"png"


def test_overwrite_still_replaces_a_run(run, tmp_path):
    dst = tmp_path / "again"
    shutil.copytree(run, dst)
    assert (
        main(["train", *TINY_FLAGS, "--steps", "3", "-o", str(dst), "--overwrite", "-q", "--no-report"]) == 0
    )
    assert not (dst / "checkpoints" / "step-00000030").exists()


def test_forward_never_replaces_pictures_unasked(tmp_path, capsys):
    out = tmp_path / "f"
    out.mkdir()
    (out / "forward.png").write_bytes(b"my picture")
    one_line_exit_2(capsys, ["forward", "--dataset", "moons", "-T", "50", "--out", str(out)], "--overwrite")
    assert (out / "forward.png").read_bytes() == b"my picture"
    assert main(["forward", "--dataset", "moons", "-T", "50", "--out", str(out), "--overwrite"]) == 0


def test_forward_refuses_a_runs_own_forward_png(copy, capsys):
    (copy / "forward.png").write_bytes(b"the run's")
    one_line_exit_2(
        capsys, ["forward", "--dataset", "moons", "-T", "50", "--out", str(copy), "--overwrite"], "run"
    )
    assert (copy / "forward.png").read_bytes() == b"the run's"


def test_a_resume_removes_only_its_own_leftovers(copy):
    mine = copy / ".notes.tmp"
    mine.write_text("keep me")
    ours = copy / ".model.safetensors.abcd1234.tmp"
    ours.write_bytes(b"half a write")
    assert main(["train", "--resume", str(copy), "--steps", "35", "-q", "--no-report"]) == 0
    assert mine.read_text() == "keep me" and not ours.exists()


# ----- 2. integrity: the digest covers header and data; state.json is bound to its tensors --------------
def _header(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _write(path: Path, header: dict, body: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)


def _swap_offsets(h: dict) -> None:
    a, b = [k for k, v in h.items() if k != "__metadata__" and v["shape"] == [32]][:2]
    h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]


@pytest.mark.parametrize(
    "edit",
    [
        _swap_offsets,
        lambda h: h["__metadata__"].update(step="999"),
        lambda h: h["__metadata__"].pop("sha256"),
        lambda h: next(v for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32").update(
            dtype="I32"
        ),
    ],
    ids=["swapped offsets", "edited step", "no digest", "dtype"],
)
def test_an_edited_header_does_not_load(copy, capsys, edit):
    model = copy / "model.safetensors"
    header, body = _header(model)
    edit(header)
    _write(model, header, body)
    one_line_exit_2(
        capsys, ["sample", str(copy), "-n", "4", "--out", str(copy.parent / "s.npz")], "model.safetensors"
    )
    assert main(["sample", str(copy), "-n", "4", "--out", str(copy.parent / "t.npz"), "--no-verify"]) in (
        0,
        2,
    )


def test_an_edited_state_json_falls_back_to_the_previous_checkpoint(copy, capsys):
    newest = copy / "checkpoints" / "step-00000030" / "state.json"
    state = json.loads(newest.read_text())
    state["step"] = 10  # would resume from the wrong place
    newest.write_text(json.dumps(state))
    assert main(["train", "--resume", str(copy), "--steps", "31", "-q", "--no-report"]) == 0
    said = capsys.readouterr()
    assert "skipping checkpoint step-00000030" in said.out + said.err
    assert "resuming from step 15" in said.out and logged_steps(copy)[-1] == 31


def logged_steps(run_dir: Path) -> list[int]:
    return [int(r.split(",")[0]) for r in (run_dir / "train_log.csv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("damage", ["missing key", "wrong type", "bad rng"])
def test_a_damaged_newest_checkpoint_of_any_kind_falls_back(copy, damage, capsys):
    from ddpmkit.io import load_tensors, save_tensors

    newest = copy / "checkpoints" / "step-00000030"
    if damage == "missing key":
        tensors = load_tensors(newest / "state.safetensors")
        tensors.pop("order.perm")
        save_tensors(newest / "state.safetensors", tensors)  # a fresh digest: the damage is structural
    elif damage == "wrong type":
        state = json.loads((newest / "state.json").read_text())
        state["epoch"] = "many"
        (newest / "state.json").write_text(json.dumps(state))
    else:
        tensors = load_tensors(newest / "state.safetensors")
        tensors["rng.gen"] = torch.zeros(3, dtype=torch.uint8)
        save_tensors(newest / "state.safetensors", tensors)
    assert main(["train", "--resume", str(copy), "--steps", "32", "-q", "--no-report"]) == 0
    said = capsys.readouterr()
    assert "skipping checkpoint step-00000030" in said.out + said.err
    assert "resuming from step 15" in said.out and logged_steps(copy)[-1] == 32


# ----- 3. silent wrong results: each value validated where it enters --------------------------------------
def test_nan_and_huge_guidance_are_refused_everywhere(image_run, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in.png")
    commands = {
        "sample": ["-n", "2", "--class", "1", "--out", str(tmp_path / "s.npz")],
        "inpaint": ["--image", str(tmp_path / "in.png"), "--mask", "left", "--out", str(tmp_path / "i.png")],
        "edit": ["--image", str(tmp_path / "in.png"), "--strength", "0.5", "--out", str(tmp_path / "e.png")],
        "interpolate": ["--out", str(tmp_path / "p.png")],
    }
    for command, flags in commands.items():
        for w in ("nan", "1e308", "-5", "inf"):
            one_line_exit_2(capsys, [command, str(image_run), *flags, "--guidance", w, "-q"], "guidance")
    assert not list(tmp_path.glob("[sipe].*"))  # nothing written
    from ddpmkit.denoiser import guidance_weight

    with pytest.raises(ConfigError):
        guidance_weight(float("nan"))


def test_a_resume_refuses_options_it_would_ignore(copy, capsys):
    for flag in (["--lr", "0.5"], ["--batch-size", "7"], ["--dataset", "circles"]):
        one_line_exit_2(capsys, ["train", "--resume", str(copy), *flag, "-q", "--no-report"], flag[0])
    assert (
        main(["train", "--resume", str(copy), "--steps", "33", "--max-minutes", "5", "-q", "--no-report"])
        == 0
    )
    assert RunConfig.from_json(copy / "config.json").train.max_minutes == 5


def test_zero_and_negative_values_are_refused_not_defaulted(copy, capsys, tmp_path):
    one_line_exit_2(capsys, ["forward", "--dataset", "moons", "-T", "0", "--out", str(tmp_path / "f")], "-T")
    one_line_exit_2(
        capsys, ["sample", str(copy), "--steps", "0", "--out", str(tmp_path / "s.npz")], "--steps"
    )
    one_line_exit_2(capsys, ["eval", "--nll", str(copy), "--subset", "-1"], "--subset")


def test_eval_refuses_float_and_negative_labels(tmp_path, capsys):
    arr = np.zeros((4, 8, 8, 1), np.uint8)
    np.savez(tmp_path / "f.npz", arr_0=arr, labels=np.array([0.5, 1.2, 2.9, 3.0]))
    one_line_exit_2(capsys, ["eval", str(tmp_path / "f.npz"), "--dataset", "digits"], "labels")
    np.savez(tmp_path / "n.npz", arr_0=arr, labels=np.array([0, 1, 2, -1]))
    one_line_exit_2(capsys, ["eval", str(tmp_path / "n.npz"), "--dataset", "digits"], "labels")
    np.savez(tmp_path / "w.npz", arr_0=arr, labels=np.array([0, 1]))
    one_line_exit_2(capsys, ["eval", str(tmp_path / "w.npz"), "--dataset", "digits"], "labels")
    np.savez(tmp_path / "o.npz", arr_0=arr, labels=np.array([0, "a", None, 3], dtype=object))
    one_line_exit_2(capsys, ["eval", str(tmp_path / "o.npz"), "--dataset", "digits"], "labels")


def test_the_api_validates_what_it_is_given(tiny_cfg):
    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.schedules import make_beta_schedule

    d = GaussianDiffusion(make_beta_schedule("linear", 10))
    x = torch.zeros(2, 2)
    with pytest.raises(ConfigError):
        d.q_sample(x, torch.tensor([-1, 0]), x)  # would wrap to T-1
    with pytest.raises(ConfigError):
        d.q_sample(x, torch.tensor([0.5, 1.0]), x)
    with pytest.raises(ConfigError):
        GaussianDiffusion(np.array([0.1, 1.0, 0.2]))  # alpha_bar 0: infinite buffers
    with pytest.raises(ConfigError):
        dataclasses.replace(tiny_cfg.train, seed=True)  # a bool is not an integer
    with pytest.raises(ConfigError):
        dataclasses.replace(tiny_cfg.data, dataset=None)  # not the string "None"
    with pytest.raises(ConfigError):
        dataclasses.replace(tiny_cfg.sample, steps="x")


def test_outputs_that_would_lose_pixels_or_cannot_be_written_are_refused_first(image_run, tmp_path, capsys):
    argv = ["inpaint", str(image_run), "--image", "x.png", "--mask", "left", "--out", str(tmp_path / "o.jpg")]
    one_line_exit_2(capsys, argv, "lossy")
    argv = ["edit", str(image_run), "--image", "x.png", "--strength", "0.5", "--out", str(tmp_path / "e.xyz")]
    one_line_exit_2(capsys, argv, "not an image format")


# ----- 4. hangs and unbounded work ---------------------------------------------------------------------
def test_special_files_as_config_are_refused_unread(tmp_path):
    """In a subprocess with a time limit: reading a FIFO or /dev/zero would block or never end."""
    import subprocess
    import sys

    os.mkfifo(tmp_path / "fifo.json")
    for config in (str(tmp_path / "fifo.json"), "/dev/zero"):
        cmd = [sys.executable, "-m", "ddpmkit.cli", "train", "--config", config, "--dry-run"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "regular file" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_huge_T_is_refused_before_work(capsys):
    one_line_exit_2(capsys, ["train", "--dataset", "moons", "-T", "100000000", "--dry-run"], "T")
    one_line_exit_2(capsys, ["forward", "--dataset", "moons", "-T", "100000000"], "T")


# ----- 5. tracebacks -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,words",
    [
        (["sample", "{run}", "--seed", "-1"], "--seed"),
        (["sample", "{run}", "--seed", str(2**64)], "--seed"),
        (["sample", "{run}", "--device", "foo"], "device"),
        (["sample", "{run}", "--device", "meta"], "device"),
        (["sample", "{run}", "--device", "cuda:0"], "cuda"),
        (["sample", "{run}", "--batch-size", "0"], "--batch-size"),
        (["sample", "{run}", "--batch-size", "-3"], "--batch-size"),
        (["sample", "{run}", "--out", "{tmp}/" + "x" * 5000 + ".npz"], "cannot write"),
        (["train", *TINY_FLAGS, "--lr", "1e308", "--dry-run"], "lr"),
        (["train", *TINY_FLAGS, "--seed", "-4", "--dry-run"], "seed"),
        (["train", "--dataset", "digits", "--image-size", "100000", "--dry-run"], "image_size"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line(run, tmp_path, capsys, argv, words):
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in argv]
    one_line_exit_2(capsys, argv, words)


def test_an_empty_class_list_is_one_line(image_run, tmp_path, capsys):
    for spec in ("", ",", " "):
        argv = ["sample", str(image_run), "--class", spec, "-n", "2", "--out", str(tmp_path / "s.npz")]
        one_line_exit_2(capsys, argv, "--class")


def test_damaged_json_and_logs_are_one_line(copy, tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    one_line_exit_2(capsys, ["train", "--config", str(tmp_path / "deep.json"), "--dry-run"], "")
    (tmp_path / "list.json").write_text("[1, 2]")
    one_line_exit_2(capsys, ["train", "--config", str(tmp_path / "list.json"), "--dry-run"], "")
    (copy / "train_log.csv").write_text("step,loss\nabc,def\n\x00\x01garbage\n12,0.5\n")
    assert main(["train", "--resume", str(copy), "--steps", "34", "-q", "--no-report"]) == 0


def test_bad_safetensors_headers_are_one_line(copy, capsys, tmp_path):
    model = copy / "model.safetensors"
    body = model.read_bytes()
    for blob in (
        b"\xff" * 8 + b"{}",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 7) + b'{"a": 1}',
        body[:100],
    ):
        model.write_bytes(blob)
        one_line_exit_2(capsys, ["sample", str(copy), "-n", "2", "--out", str(tmp_path / "s.npz")], "")


def test_api_calls_are_checked_before_torch(run):
    from ddpmkit.run import generate, load_run

    loaded = load_run(run)
    with pytest.raises(ConfigError):
        generate(loaded, -1)
    with pytest.raises(ConfigError):
        generate(loaded, 2, cond={"y": torch.tensor([99, 99])})
    with pytest.raises(ConfigError):
        generate(loaded, 2, seed=-1)


def test_a_decompression_bomb_is_refused_unread(tmp_path):
    from PIL import Image

    from ddpmkit.data.user_images import read_image

    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png")  # ~400 KB, 400 megapixels
    with pytest.raises(DdpmkitError):
        read_image(tmp_path / "bomb.png", (1, 8, 8))


def test_an_unwritable_classifier_cache_is_said_before_training(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    started = time.perf_counter()
    argv = ["train-classifier", "--dataset", "digits", "--cache-dir", str(tmp_path / "a-file" / "cache")]
    one_line_exit_2(capsys, argv, "cannot write")
    assert time.perf_counter() - started < 30  # said before the training, not after


# ----- 6. the playground's reach ---------------------------------------------------------------------------
def test_the_images_page_opens_only_runs_under_its_folder(run, tmp_path):
    from ddpmkit.playground.app import listed_run

    with pytest.raises(ConfigError) as outside:
        listed_run(tmp_path / "elsewhere", str(run))
    with pytest.raises(ConfigError) as missing:
        listed_run(tmp_path / "elsewhere", str(tmp_path / "no-such-run"))
    # the same words whether or not the path exists: nothing is revealed
    assert str(outside.value).split("'")[0] == str(missing.value).split("'")[0]
    assert listed_run(run.parent, str(run)) == run.resolve()
