"""The run directory while training: its layout and policy, and the full training state saved into
it and restored from it (safetensors + JSON only, never pickle; every write atomic, see `io`).

Layout of a run directory:
    config.json                 the RunConfig that produced it
    model.safetensors           latest weights for sampling: "model.*", "ema.*", the data space's
                                tensors ("data.mean/std" for points) and "data.shape"; metadata:
                                step, format, the data space's name
    checkpoints/step-XXXXXXXX/  full training state: state.safetensors (model, EMA, optimizer,
                                RNG tensors, data order) + state.json (step, optimizer
                                hyper-parameters, Python/NumPy RNG state, ...), kept last K
A checkpoint directory is complete only once renamed into place, so a kill at any moment leaves the
last good checkpoint intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .errors import CheckpointError, ConfigError, OutputError
from .io import (
    DIGEST,
    atomic_write_text,
    fsync_dir,
    load_tensors,
    prefixed,
    read_json,
    read_metadata,
    save_tensors,
    umask,
    unprefixed,
)

CONFIG, MODEL, STATE_T, STATE_J, CKPT_DIR, LOCK = (
    "config.json",
    "model.safetensors",
    "state.safetensors",
    "state.json",
    "checkpoints",
    ".lock",
)
STATE_DIGEST = "state_json_sha256"  # state.safetensors' metadata: the digest of its state.json
RUN_MARKER = ".ddpmkit-run"  # written with a run's first file: what says the folder is the toolkit's
# What a training run writes (report.py adds the pictures): removed by `overwrite`, nothing else is,
# and only in a folder the toolkit marked as its run (RUN_MARKER; runs of 0.2: their model file).
RUN_FILES = (CONFIG, MODEL, CKPT_DIR, "best.safetensors", "best.json", "train_log.csv", "eval_log.csv",
             "previews", "tensorboard", "samples.png", "forward.png", "loss.png", "denoise.gif",
             "metrics.json", "imported.json", RUN_MARKER)  # fmt: skip


# ----- run-directory policy -------------------------------------------------------------------------
def prepare_run_dir(run_dir: Path, *, overwrite: bool = False) -> None:
    """Make `run_dir` ready for a fresh run. An earlier run there is refused (OutputError) unless
    `overwrite`: mixing them would let its newer checkpoints win a later resume."""
    check_writable(run_dir)
    if not any((run_dir / name).exists() for name in (CONFIG, MODEL, CKPT_DIR)):
        return
    if not is_run_dir(run_dir):
        found = ", ".join(n for n in RUN_FILES if (run_dir / n).exists())
        raise OutputError(f"{run_dir} holds {found}, which ddpmkit did not write (no {RUN_MARKER}): "
                          "nothing there is replaced; write the run to another directory "
                          "(-o DIR)")  # fmt: skip
    if not overwrite:
        raise OutputError(
            f"{run_dir} already holds a training run: continue it with `ddpm train --resume {run_dir}` "
            "(Python: resume=True), replace it with --overwrite (overwrite=True), or write to another "
            "directory (-o DIR)"
        )
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def is_run_dir(run_dir: Path) -> bool:
    """Whether the toolkit wrote this run directory: its marker, or (a run of ddpmkit 0.2) a model file
    or checkpoint state that ddpmkit's writer made."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_MARKER).is_file():
        return True
    try:
        if (run_dir / MODEL).is_file():
            return read_metadata(run_dir / MODEL).get("format", "").startswith("ddpmkit")
    except CheckpointError:
        return False
    return any((d / STATE_J).is_file() for d in (run_dir / CKPT_DIR).glob("step-*"))


def mark_run(run_dir: Path) -> None:
    """Write the run's marker (once): later `overwrite`s may then replace the run's files."""
    if not (run_dir / RUN_MARKER).is_file():
        atomic_write_text(run_dir / RUN_MARKER, json.dumps({"written_by": "ddpmkit"}) + "\n")


def check_writable(run_dir: Path) -> None:
    """Fail early (OutputError) if `run_dir` cannot be created or written. Nothing is created: the
    nearest folder that exists is probed, so that a check that fails later leaves no empty run."""
    probe = Path(run_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputError(f"cannot write to output directory {run_dir}: {e.strerror or e}") from None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` (an OS advisory lock) while training: a second run on the same directory
    fails with OutputError naming the holder. The OS drops the lock when its process dies (even by
    SIGKILL), so the lock of a killed run is simply taken over. No-op where fcntl is missing."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    f = open_lock_file(Path(run_dir) / LOCK)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise OutputError(
                f"{run_dir} is in use by another training run ({holder}); wait for it to end or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def open_lock_file(path: Path):
    """The lock file, opened without following a symbolic link (a link planted there would have the
    run write into the file it points to); anything but a regular file ddpmkit wrote is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        why = "a symbolic link" if path.is_symlink() else ("a folder" if path.is_dir() else e.strerror)
        raise OutputError(f"{path} is {why}: the run lock is a plain file ddpmkit writes") from None
    f = os.fdopen(fd, "r+")
    if not stat.S_ISREG(os.fstat(fd).st_mode) or not LOCK_TEXT.match(f.read(200)):
        f.close()
        raise OutputError(f"{path} is not a run lock ddpmkit wrote: it is left as it is; remove it "
                          "or train in another directory")  # fmt: skip
    return f


LOCK_TEXT = re.compile(r"^(pid \d+ on .*)?$", re.S)  # what run_lock writes (empty: just created)
# the temporary files of atomic writes (io.atomic_write_bytes: ".NAME.XXXXXXXX.tmp") and checkpoint
# folders (".tmp-XXXXXXXX"): only these names, and only of files the toolkit writes, are leftovers
TMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
TMP_DIR = re.compile(r"^\.tmp-[a-z0-9_]{8}$")


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files and checkpoint folders of writes that a kill interrupted (only
    call while holding `run_lock`: nobody else is writing then). Returns what was removed."""
    run_dir = Path(run_dir)
    ckpts = run_dir / CKPT_DIR
    ours = {*RUN_FILES, STATE_T, STATE_J, RUN_MARKER}

    def leftover(path: Path) -> bool:
        m = TMP_FILE.match(path.name)
        return bool(m and m["name"] in ours) or (path.parent == ckpts and bool(TMP_DIR.match(path.name)))

    found = [p for p in (*run_dir.glob(".*"), *ckpts.glob(".*")) if leftover(p) and not p.is_symlink()]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def load_config(run_dir: str | Path) -> RunConfig:
    """A run's config.json (for one of its checkpoints, RUN/checkpoints/step-N: the run's)."""
    run_dir = Path(run_dir)
    try:
        if is_checkpoint_dir(run_dir):
            run_dir = run_dir.parent.parent
        if not run_dir.is_dir():
            raise CheckpointError(f"run directory {str(run_dir)[:200]} does not exist")
        if not (run_dir / CONFIG).is_file():
            raise CheckpointError(f"{run_dir} holds no {CONFIG}: is it a ddpmkit run directory?")
    except OSError as e:  # a name too long, a loop of links
        raise CheckpointError(f"cannot open run directory {str(run_dir)[:200]}: {e.strerror or e}") from None
    try:
        return RunConfig.from_json(run_dir / CONFIG)
    except ConfigError as e:
        raise CheckpointError(f"{run_dir / CONFIG} is not a valid run config: {e}") from None


def save_model(
    run_dir: Path, cfg: RunConfig, tensors: dict[str, torch.Tensor], step: int, space: str
) -> None:
    """Write config.json and model.safetensors (the weights `ddpm sample` uses)."""
    mark_run(run_dir)
    cfg.to_json(run_dir / CONFIG)
    save_tensors(run_dir / MODEL, tensors, {"step": str(step), "format": "ddpmkit-2", "space": space})


# ----- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep_last: int,
    keep_every: int = 0,
) -> Path:
    """Write checkpoints/step-N/ atomically (build in a temp dir, then rename); keep the last K, and
    those at multiples of `keep_every` steps (0: none)."""
    mark_run(run_dir)
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; a checkpoint gets the usual mode
        state = json.loads(json.dumps({"step": step, **meta}))  # as state.json will read back
        # state.json's digest goes into the tensors' header, and theirs into state.json
        digest = save_tensors(tmp / STATE_T, tensors, {STATE_DIGEST: json_digest(state)})
        atomic_write_text(tmp / STATE_J, json.dumps({**state, "sha256": digest}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        step_of = checkpoint_dir_step(old)
        if not (keep_every and step_of is not None and step_of % keep_every == 0):
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dir_step(path: Path) -> int | None:
    """The step a checkpoint directory's name (step-N) says, or None."""
    tail = Path(path).name.removeprefix("step-")
    return int(tail) if tail.isdigit() else None


def is_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint directory holds both its state files (not the temp dir of a cut write)."""
    return (checkpoint / STATE_J).is_file() and (checkpoint / STATE_T).is_file()


def is_checkpoint_dir(path: Path) -> bool:
    """Whether `path` is one complete checkpoint of a run (RUN/checkpoints/step-N)."""
    path = Path(path)
    return path.parent.name == CKPT_DIR and is_complete(path)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs of an interrupted write are ignored)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if is_complete(p))


def json_digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_checkpoint(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors and state.json, each verified against the digest the other records
    (state.json names the tensors' digest, their header that of state.json): an edited step, a
    swapped file or a damaged one raises CheckpointError. Checkpoints of ddpmkit 0.1 had no digests."""
    meta = read_json(path / STATE_J)
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{path / STATE_J} is not a checkpoint's state (no integer step)")
    recorded = meta.pop("sha256", None)
    tensors = load_tensors(path / STATE_T, verify=verify, require_digest=recorded is not None)
    if verify and recorded is not None:
        tmeta = read_metadata(path / STATE_T)
        bound = tmeta.get(STATE_DIGEST, json_digest(meta))  # checkpoints of 0.2 did not bind state.json
        if tmeta.get(DIGEST) != recorded or bound != json_digest(meta):
            raise CheckpointError(f"{path}: {STATE_J} and {STATE_T} do not belong together (one was edited "
                                  "or replaced; --no-verify loads it anyway)")  # fmt: skip
    return tensors, meta


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest complete checkpoint (from its state.json), or None."""
    for path in reversed(list_checkpoints(run_dir)):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, CheckpointError):
            return int(read_json(path / STATE_J)["step"])
    return None


# ----- the optimizer and RNG parts of the training state ----------------------------------------------
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as ("optim.I.NAME" tensors, JSON meta with groups and scalars)."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for i, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"optim.{i}.{k}"] = v
            else:
                scalars[f"{i}.{k}"] = v
    return tensors, {"optim_groups": state["param_groups"], "optim_scalars": scalars}


def load_optimizer_state(opt, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device) -> None:
    state: dict[int, dict] = {}
    for k, v in unprefixed("optim", tensors).items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v.to(device)
    for k, v in meta["optim_scalars"].items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    impl = [{k: g.get(k) for k in ("foreach", "fused")} for g in opt.param_groups]
    opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
    for g, kept in zip(opt.param_groups, impl, strict=True):  # how to compute is this run's choice, not state
        g.update(kept)


def host_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """NumPy's and Python's global RNG states (the torch ones are gathered per rank by the caller)."""
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"rng.numpy": torch.from_numpy(np_state[1].astype(np.int64))}, {
        "numpy_rng": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_rng": [version, list(internal), gauss],
    }


def restore_host_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    name, pos, has_gauss, cached = meta["numpy_rng"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def weights(model: torch.nn.Module, ema_model: torch.nn.Module, data_shape, space_state) -> dict:
    """What model.safetensors holds: both weight sets, the data shape and the data space's tensors."""
    return {
        **prefixed("model", model.state_dict()),
        **prefixed("ema", ema_model.state_dict()),
        "data.shape": torch.tensor(data_shape),
        **space_state,
    }
