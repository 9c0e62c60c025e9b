"""A fuzzing harness for the `ddpm` contract: Hypothesis draws command lines over every option of every
command (valid and hostile values: numbers out of range, NaN, huge names, special files, damaged
files, a run's own files) and a corpus of damaged run directories is run through the commands that
read them. Each case must end in exit 0, or in exit 2 with one error line and nothing written; never a
traceback, a hang, another exit code, or a change to a file outside the case's own output folder.

The short profile runs in CI; `DDPMKIT_FUZZ=long pytest tests/test_fuzz.py` runs the long one by hand
(`DDPMKIT_FUZZ_EXAMPLES=N` to size it), and prints its tally.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ddpmkit.cli import build_parser, main  # noqa: E402

from .test_train import TINY_FLAGS  # noqa: E402

PROFILE = os.environ.get("DDPMKIT_FUZZ", "short")
EXAMPLES = int(os.environ.get("DDPMKIT_FUZZ_EXAMPLES", {"short": 60, "long": 2000}[PROFILE]))
CASE_TIMEOUT_S = 120  # a case still running after this is a hang (budgets below keep real work short)
SKIP = {"playground"}  # a server: its HTTP API has tests of its own
# appended last (argparse: the last value wins), so that a valid draw never trains for minutes
BUDGET = {
    "train": ["--max-minutes", "0.02", "-q", "--no-report"],
    "train-autoencoder": ["--max-minutes", "0.02", "-q", "--no-report"],
    "train-classifier": ["--epochs", "1", "--train-images", "64", "--test-images", "32", "-q"],
    "sample": ["-q"],
    "eval": ["-q"],
    "inpaint": ["--steps", "4", "-q"],
    "edit": ["-q"],
    "interpolate": ["--frames", "3", "-q"],
}
TALLY: dict[str, int] = {"cases": 0, "exit 0": 0, "exit 2": 0}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """The files a case may name: a finished run, damaged runs, special files, user files (sentinels)."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    assert main(["train", *TINY_FLAGS, "--steps", "20", "-o", str(run), "-q", "--no-report"]) == 0
    user = root / "user"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    (user / "config.json").write_text('{"mine": true}')
    os.mkfifo(root / "fifo")
    (root / "deep.json").write_text("[" * 50000)
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "link").symlink_to(user / "notes.txt")
    np.savez(root / "points.npz", arr_0=np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    np.savez(root / "objects.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8), labels=np.array([0.5, 1, 2, 3]))
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "image.png")
    for name, damage in DAMAGES.items():
        shutil.copytree(run, root / f"damaged-{name}")
        damage(root / f"damaged-{name}")
    return {"root": str(root), "run": str(run), "user": str(user)}


def _flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at % len(blob)] ^= 0x55
    path.write_bytes(bytes(blob))


def _edit_header(path: Path, edit) -> None:
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + blob[8 + n :])


def _lock_dir(d: Path) -> None:
    (d / ".lock").unlink(missing_ok=True)
    (d / ".lock").mkdir()


M, C = "model.safetensors", "config.json"


def _write(name: str, data):
    """A damage: replace file `name` with `data(old bytes)`."""
    return lambda d: (d / name).write_bytes(data((d / name).read_bytes()))


def _states(edit):
    """A damage: rewrite every checkpoint's state.json with `edit(dict)`."""

    def damage(d: Path) -> None:
        for p in (d / "checkpoints").glob("step-*"):
            (p / "state.json").write_text(json.dumps(edit(json.loads((p / "state.json").read_text()))))

    return damage


DAMAGES = {
    "model-truncated": _write(M, lambda b: b[:300]),
    "model-bitflip-data": lambda d: _flip(d / M, -100),
    "model-bitflip-header": lambda d: _flip(d / M, 20),
    "model-no-digest": lambda d: _edit_header(d / M, lambda h: h["__metadata__"].pop("sha256")),
    "model-step-edited": lambda d: _edit_header(d / M, lambda h: h["__metadata__"].update(step="7")),
    "model-header-list": _write(M, lambda b: struct.pack("<Q", 2) + b"[]"),
    "config-truncated": _write(C, lambda b: b[:40]),
    "config-wrong-types": _write(C, lambda b: json.dumps({"train": {"lr": [1]}, "model": 3}).encode()),
    "config-deep": _write(C, lambda b: b"{" * 30000),
    "state-missing-keys": _states(lambda s: {"step": s["step"]}),
    "state-wrong-types": _states(lambda s: {**s, "pos": "x"}),
    "lock-dir": _lock_dir,
    "log-garbage": _write("train_log.csv", lambda b: b"\x00\xff,,\nstep\n" * 100),
}


# ----- the contract ----------------------------------------------------------------------------------------
def snapshot(*folders: str) -> dict[str, str]:
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not p.is_symlink() and p.name != ".lock":
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def check_contract(argv: list[str], out: Path, watched: list[str]) -> None:
    """Run `ddpm argv`; fail with the case if the contract is broken."""
    before, outputs_before = snapshot(*watched), snapshot(str(out))
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: usage errors (2) and --help (0)
                rc = e.code if isinstance(e.code, int) else 2
    except Hang:
        pytest.fail(f"hang (> {CASE_TIMEOUT_S} s): ddpm {' '.join(argv)}")
    except BaseException as e:  # a traceback: the contract's first rule
        pytest.fail(f"{type(e).__name__}: {str(e)[:300]} from: ddpm {' '.join(a[:80] for a in argv)}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    TALLY["cases"] += 1
    text = err.getvalue()
    assert "Traceback" not in text, f"traceback printed: ddpm {' '.join(argv)}\n{text[-2000:]}"
    assert rc in (0, 2), f"exit {rc}: ddpm {' '.join(argv)}\n{text[-1000:]}"
    TALLY[f"exit {rc}"] += 1
    if rc == 2:
        errors = [line for line in text.splitlines() if "error" in line]
        assert len(errors) == 1, f"expected one error line: ddpm {' '.join(argv)}\n{text[-1000:]}"
        assert snapshot(str(out)) == outputs_before, f"exit 2 but wrote files: ddpm {' '.join(argv)}"
    assert snapshot(*watched) == before, f"a file outside the outputs changed: ddpm {' '.join(argv)}"


# ----- command lines from the parser -----------------------------------------------------------------------
def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name not in SKIP}


HOSTILE = ["0", "-1", "1", "3", "2.5", "1e308", "nan", "inf", "-inf", "", "abc", str(2**64), "x" * 5000,
           "1,2", "all", "none", "true", "digits", "moons", "mnist", "{root}/fifo", "/dev/zero", "{root}",
           "{root}/missing", "{root}/link", "{run}", "{run}/model.safetensors", "{run}/config.json",
           "{root}/deep.json", "{root}/list.json", "{root}/points.npz", "{root}/objects.npz",
           "{root}/image.png", "{user}/config.json", "folder:{user}", "{out}/o.png", "{out}/o.npz",
           "{out}/o.jpg", "{out}/o.xyz", "{out}/run",
           *[f"{{root}}/damaged-{k}" for k in DAMAGES]]  # fmt: skip


# where a command writes: any of these may be given, but never a path a user could mean to replace
# (naming a file as the output with --overwrite replaces it by request, which is not a breach)
OUTPUTS = ["{out}/o.png", "{out}/o.npz", "{out}/o.jpg", "{out}/o.xyz", "{out}/run", "{out}/pipe",
           "/dev/zero", "{root}/fifo", "{root}", "{user}", "{run}/model.safetensors", "{run}/config.json",
           "{run}/samples.png", "{run}/checkpoints/x.npz", "x" * 5000, ""]  # fmt: skip
OUTPUT_DESTS = {"out", "nearest", "cache_dir"}
RESUMABLE = ["{out}/run", "{root}/missing", "{user}", *[f"{{root}}/damaged-{k}" for k in DAMAGES]]


def pool(a: argparse.Action) -> list[str]:
    if a.dest in OUTPUT_DESTS:
        return OUTPUTS
    if a.dest == "resume":
        return RESUMABLE
    return ([str(c) for c in a.choices] if a.choices else []) + HOSTILE


@st.composite
def command_lines(draw) -> tuple[str, list[str]]:
    parsers = commands()
    name = draw(st.sampled_from(sorted(parsers)))
    argv = [name]
    actions = [a for a in parsers[name]._actions if not isinstance(a, argparse._HelpAction)]
    for a in actions:
        if a.option_strings and not draw(st.booleans()) and not draw(st.booleans()):
            continue  # about a quarter of the options are given
        value = draw(st.sampled_from(pool(a)))
        if not a.option_strings:
            argv.append(value)
        elif a.nargs == 0:
            argv.append(a.option_strings[0])
        else:
            argv += [a.option_strings[-1], value]
    return name, argv


@settings(max_examples=EXAMPLES, deadline=None, derandomize=PROFILE == "short", database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(case=command_lines())
def test_fuzz_command_lines(world, tmp_path_factory, case):
    name, argv = case
    out = tmp_path_factory.mktemp("out")
    fill = {"root": world["root"], "run": world["run"], "user": world["user"], "out": str(out)}
    argv = [a.format(**fill) if "{" in a else a for a in argv] + BUDGET.get(name, [])
    check_contract(argv, out, [world["user"], world["run"]])


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("command", ["sample", "info", "resume", "export"])
def test_damaged_runs(world, tmp_path, damage, command):
    run = str(Path(world["root"]) / f"damaged-{damage}")
    work = tmp_path / "work"
    shutil.copytree(run, work, symlinks=True)  # a resume may write into its own run
    out = tmp_path / "out"
    out.mkdir()
    argv = {
        "sample": ["sample", str(work), "-n", "4", "--out", str(out / "s.npz"), "-q"],
        "info": ["info", str(work)],
        "resume": ["train", "--resume", str(work), "--steps", "22", "-q", "--no-report"],
        "export": ["export", str(work), "--format", "diffusers", str(out / "pipe")],
    }[command]
    check_contract(argv, out if command != "resume" else work, [world["user"], world["run"]])


@pytest.fixture(scope="module", autouse=True)
def tally():
    """The profile's figures, printed at the end (pytest -s shows them)."""
    yield
    print(f"\nfuzz profile {PROFILE}: {TALLY}")
