"""Run directories and checkpoints: safetensors + JSON only (never pickle), written atomically.

Layout of a run directory:
    config.json                 the RunConfig that produced it
    model.safetensors           latest weights for sampling: "model.*", "ema.*", "data.mean/std"
    checkpoints/step-XXXXXXXX/  full training state: state.safetensors (model, EMA, optimizer,
                                RNG tensors, data order) + state.json (step, optimizer
                                hyper-parameters, Python/NumPy RNG state, ...), kept last K
Every file is written to a temporary name, fsync'ed and renamed (os.replace), and a checkpoint
directory is complete only once renamed into place, so a kill at any moment leaves the last good
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .config import RunConfig
from .errors import CheckpointError, ConfigError, OutputError

CONFIG, MODEL, STATE_T, STATE_J, CKPT_DIR = (
    "config.json",
    "model.safetensors",
    "state.safetensors",
    "state.json",
    "checkpoints",
)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory + fsync + os.replace."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ----- the run directory ---------------------------------------------------------------------
# What a training run writes (report.py adds the pictures): removed by `overwrite`, nothing else is.
RUN_FILES = (CONFIG, MODEL, CKPT_DIR, "best.safetensors", "best.json", "train_log.csv", "eval_log.csv",
             "previews", "tensorboard", "samples.png", "forward.png", "loss.png", "denoise.gif",
             "metrics.json")  # fmt: skip


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False) -> None:
    """Make `run_dir` ready for a fresh run. An earlier run there is refused (OutputError) unless
    `overwrite`: mixing them would let its newer checkpoints win a later resume."""
    check_writable(run_dir)
    if not any((run_dir / name).exists() for name in (CONFIG, MODEL, CKPT_DIR)):
        return
    if not overwrite:
        raise OutputError(
            f"{run_dir} already holds a training run: continue it with `ddpm train --resume {run_dir}`, "
            "replace it with --overwrite, or write to another directory with -o"
        )
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_writable(run_dir: Path) -> None:
    """Fail early (OutputError) if `run_dir` cannot be created or written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise OutputError(f"cannot write to output directory {run_dir}: {e.strerror or e}") from None


def save_model(run_dir: Path, cfg: RunConfig, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Write config.json and model.safetensors (the weights `ddpm sample` uses)."""
    cfg.to_json(run_dir / CONFIG)
    save_tensors(run_dir / MODEL, tensors, {"step": str(step), "format": "ddpmkit-1"})


def save_checkpoint(
    run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoints/step-N/ atomically (build in a temp dir, then rename); keep the last K."""
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_tensors(tmp / STATE_T, tensors)
        atomic_write_text(tmp / STATE_J, json.dumps({"step": step, **meta}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs of an interrupted write are ignored)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_J).is_file() and (p / STATE_T).is_file())


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        meta = json.loads((path / STATE_J).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    return load_tensors(path / STATE_T), meta


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} holds no {CONFIG}: is it a ddpmkit run directory?")
    try:
        return RunConfig.from_json(run_dir / CONFIG)
    except ConfigError as e:
        raise CheckpointError(f"{run_dir / CONFIG} is not a valid run config: {e}") from None


# ----- loading a trained model -----------------------------------------------------------------
@dataclass
class LoadedRun:
    """What sampling needs: the config, the (EMA) model in eval mode, the diffusion, the data map."""

    cfg: RunConfig
    model: torch.nn.Module
    diffusion: Any
    kind: str
    data_shape: tuple[int, ...]
    mean: torch.Tensor | None
    std: torch.Tensor | None
    step: int


def load_run(
    run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True, weights: str = MODEL
) -> LoadedRun:
    """Rebuild the model of a run directory from config.json + model.safetensors (no pickle).

    `weights="best.safetensors"` loads the best-FID weights kept by `train.eval_every`."""
    from .diffusion import build_diffusion
    from .models import build_model

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if not (run_dir / weights).is_file():
        raise CheckpointError(f"{run_dir} holds no checkpoint ({weights}); train it first")
    tensors = load_tensors(run_dir / weights)
    shape = tuple(int(s) for s in tensors["data.shape"].tolist())
    model = build_model(cfg.model, shape)
    state = unprefixed("ema" if ema and any(k.startswith("ema.") for k in tensors) else "model", tensors)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{run_dir / weights} does not match its config: {str(e).splitlines()[0]}"
        ) from None
    model.to(device).eval()
    with safe_open(str(run_dir / weights), framework="pt") as f:
        step = int((f.metadata() or {}).get("step", 0))
    kind = "points" if len(shape) == 1 else "images"
    return LoadedRun(
        cfg=cfg,
        model=model,
        diffusion=build_diffusion(cfg.diffusion),
        kind=kind,
        data_shape=shape,
        mean=tensors.get("data.mean"),
        std=tensors.get("data.std"),
        step=step,
    )
