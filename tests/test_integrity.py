"""Integrity of what a run writes: the SHA-256 of every weight file, damaged checkpoints skipped on
resume, the run lock, leftovers of killed writes, file modes, and log-friendly output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.checkpoint import list_checkpoints, run_lock
from ddpmkit.cli import main
from ddpmkit.config import override
from ddpmkit.errors import CheckpointError, OutputError
from ddpmkit.io import load_tensors, save_tensors
from ddpmkit.run import load_run
from ddpmkit.training import train

from .test_train import TINY_FLAGS


def _data_section(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _flip(path: Path, at: float = 0.5, n: int = 64) -> None:
    blob = bytearray(path.read_bytes())
    i = int(len(blob) * at)
    blob[i : i + n] = bytes(b ^ 0xFF for b in blob[i : i + n])
    path.write_bytes(bytes(blob))


def test_weight_files_record_the_sha256_of_their_header_and_data(tmp_path):
    path = tmp_path / "w.safetensors"
    digest = save_tensors(path, {"a": torch.arange(10.0), "b": torch.ones(3, 3)}, {"step": "7"})
    header, body = _data_section(path)
    head = {k: v for k, v in header.items() if k != "__metadata__"}
    head["__metadata__"] = {"step": "7"}  # the metadata without the digest itself, keys sorted
    canonical = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    assert header["__metadata__"]["sha256"] == digest == hashlib.sha256(canonical + body).hexdigest()
    assert header["__metadata__"]["step"] == "7"
    assert torch.equal(load_tensors(path)["a"], torch.arange(10.0))


def test_flipped_bytes_are_refused_by_name_unless_no_verify(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.randn(4096)})
    _flip(path, 0.6)
    with pytest.raises(CheckpointError, match=r"w.safetensors is damaged"):
        load_tensors(path)
    assert load_tensors(path, verify=False)["a"].shape == (4096,)  # loads what is there
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="cannot read"):
        load_tensors(path)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--steps", "20", "--train.checkpoint_every", "10", "-o", str(run),
                 "-q", "--no-report"]) == 0  # fmt: skip
    return run


def test_damaged_model_stops_sampling_with_one_line_naming_it(run_dir, tmp_path, capsys):
    _flip(run_dir / "model.safetensors", 0.5)
    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "-n", "10", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors is damaged" in err[0] and not out.exists()


def test_resume_skips_a_damaged_newest_checkpoint_and_matches_an_uninterrupted_run(
    run_dir, tmp_path, tiny_cfg, capsys
):
    newest = list_checkpoints(run_dir)[-1]
    assert newest.name == "step-00000020"
    (newest / "state.safetensors").write_bytes((newest / "state.safetensors").read_bytes()[:5000])
    assert main(["train", "--resume", str(run_dir), "--steps", "30", "-q", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint step-00000020" in out and "resuming from step 10" in out
    straight = tmp_path / "straight"
    assert main(["train", *TINY_FLAGS, "--steps", "30", "--train.checkpoint_every", "10", "-o", str(straight),
                 "-q", "--no-report"]) == 0  # fmt: skip
    a, b = load_run(run_dir).model.state_dict(), load_run(straight).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_run_on_a_locked_directory_fails_and_a_dead_holder_is_taken_over(run_dir, capsys):
    with run_lock(run_dir):
        assert main(["train", "--resume", str(run_dir), "--steps", "25", "-q", "--no-report"]) == 2
        assert "in use by another training run (pid" in capsys.readouterr().err
    holder = subprocess.Popen(  # takes the lock, then dies by SIGKILL holding it
        [sys.executable, "-c", "import sys, time; from ddpmkit.checkpoint import run_lock\n"
         f"with run_lock({str(run_dir)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputError, match="in use"), run_lock(run_dir):
        pass
    holder.kill()
    holder.wait()
    assert main(["train", "--resume", str(run_dir), "--steps", "25", "-q", "--no-report"]) == 0


def test_leftovers_of_killed_writes_are_removed_and_modes_are_usual(run_dir, capsys):
    tmp_ckpt = run_dir / "checkpoints" / ".tmp-abcd1234"  # the names mkdtemp / mkstemp give
    tmp_ckpt.mkdir()
    (tmp_ckpt / "state.safetensors").write_bytes(b"x" * 1000)
    partial = run_dir / ".model.safetensors.wxyz5678.tmp"
    partial.write_bytes(b"partial")
    assert main(["train", "--resume", str(run_dir), "--steps", "30", "-q", "--no-report"]) == 0
    assert not tmp_ckpt.exists() and not partial.exists()
    assert "removed .tmp-abcd1234" in capsys.readouterr().out
    mask = os.umask(0)
    os.umask(mask)
    for ckpt in list_checkpoints(run_dir):
        assert ckpt.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (run_dir / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_checkpoint_state_json_and_weights_record_each_others_digest(run_dir):
    from ddpmkit.checkpoint import json_digest
    from ddpmkit.io import file_digest, read_metadata

    ckpt = list_checkpoints(run_dir)[-1]
    meta = json.loads((ckpt / "state.json").read_text())
    header, body = _data_section(ckpt / "state.safetensors")
    assert meta.pop("sha256") == file_digest(header, body)
    assert read_metadata(ckpt / "state.safetensors")["state_json_sha256"] == json_digest(meta)


def test_output_for_logs_and_terminals(tmp_path):
    """Redirected: a line per tenth of training, not one per step; a few lines of config."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DDPMKIT_PROGRESS", None)
    run, loud = tmp_path / "r", [f for f in TINY_FLAGS if f != "-q"]
    p = subprocess.run([sys.executable, "-m", "ddpmkit.cli", "train", *loud, "--steps", "400",
                        "-o", str(run), "--no-report"], capture_output=True, text=True, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr
    bar_lines = [ln for ln in p.stderr.splitlines() if ln.startswith("training")]
    assert 10 <= len(bar_lines) <= 12 and "\r" not in p.stderr
    assert p.stdout.index("trained 400/400") and len(p.stdout.split("trained")[0].splitlines()) <= 5
    q = subprocess.run([sys.executable, "-m", "ddpmkit.cli", "train", "--resume", str(run), "--steps", "410",
                        "-q", "--no-report"], capture_output=True, text=True, env=env)  # fmt: skip
    assert q.returncode == 0 and q.stderr == "" and "{" not in q.stdout
    assert "resuming from step 400" in q.stdout


def test_forward_draws_the_datasets_own_schedule(tmp_path, capsys):
    assert main(["forward", "--dataset", "digits", "--out", str(tmp_path)]) == 0
    assert "cosine schedule, T = 1000" in capsys.readouterr().out
    assert main(["forward", "--dataset", "moons", "--out", str(tmp_path), "--overwrite"]) == 0
    assert "linear schedule" in capsys.readouterr().out


def test_train_refuses_a_shorter_resume_in_the_library_too(tmp_path, tiny_cfg):
    train(tiny_cfg, tmp_path, progress=False)
    with pytest.raises(Exception, match="would shorten"):
        train(override(tiny_cfg, {"train.steps": 5}), tmp_path, resume=True, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == tiny_cfg.train.steps
