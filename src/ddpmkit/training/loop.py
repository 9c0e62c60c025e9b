"""The training loop: `train(cfg, run_dir, callbacks=...)` repeats `train_step` and checkpoints.

It is exact to resume: every source of randomness (data order, t, noise, flips, dropout) comes from
generators whose states are checkpointed with the model, EMA, optimizer and data position, so a
resumed run reproduces the losses of an uninterrupted one bit for bit on CPU. Under torchrun every
process draws the same global batch (same generator) and trains on its own slice, so N processes
with global batch B compute what 1 process with batch B computes, up to float summation order.

Callbacks are `cb(event, info)`, called on the main process for the events "begin", "step", "log"
(a row of averaged figures), "end", and whatever callbacks emit themselves (`info["emit"]`, e.g.
"image" and "eval"); `info` always holds "state" (the TrainState), "run_dir" and "step".
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from ..config import RunConfig
from ..data import build_dataset
from ..errors import CheckpointError, ConfigError, TrainingError
from ..io import unprefixed
from .callbacks import default_callbacks
from .distributed import all_gather_objects, all_reduce_sum, barrier, init_distributed, shutdown
from .step import TrainState, build_state, lr_at, train_step

Callback = Callable[[str, dict], None]
MAX_SKIPPED = 100  # consecutive non-finite batches tolerated by on_nan="skip"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available")
    return torch.device(name)


def total_steps(cfg: RunConfig, num_examples: int) -> int:
    """train.steps, or ceil(epochs * N / batch) when train.epochs > 0."""
    if cfg.train.epochs > 0:
        return max(1, math.ceil(cfg.train.epochs * num_examples / cfg.train.batch_size))
    return cfg.train.steps


class StopRequest:
    """SIGINT / SIGTERM handler: ask the loop to finish the current step and checkpoint."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"received {signal.Signals(signum).name}: finishing this step and saving a checkpoint...")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----- checkpointing the training state -------------------------------------------------------------
def save_state(state: TrainState, run_dir: Path) -> None:
    """Checkpoint the full training state (rank 0 writes; RNG states of all ranks included) and
    refresh model.safetensors + config.json."""
    rng = all_gather_objects(torch.get_rng_state().numpy().tobytes(), state.dist)
    if not state.dist.is_main:
        barrier(state.dist)
        return
    weights = ckpt.weights(state.model, state.ema_model, state.data.shape, state.data.space.state())
    opt_tensors, opt_meta = ckpt.optimizer_state(state.opt)
    host_tensors, host_meta = ckpt.host_rng_state()
    tensors = {**weights, **opt_tensors, **host_tensors, "rng.gen": state.gen.get_state(),
               "order.perm": state.order.perm}  # fmt: skip
    for r, b in enumerate(rng):
        tensors[f"rng.torch.rank{r}"] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
    if state.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(state.device)
    meta = {
        "epoch": state.order.epoch,
        "pos": state.order.pos,
        "world_size": state.dist.world_size,
        **opt_meta,
        **host_meta,
        "history_len": len(state.history["loss"]),
        "scaler": state.scaler.state_dict() if state.scaler else None,
    }
    ckpt.save_checkpoint(run_dir, state.step, tensors, meta, state.cfg.train.keep_last)
    ckpt.save_model(run_dir, state.cfg, weights, state.step, state.data.space.name)
    barrier(state.dist)


def restore_state(state: TrainState, run_dir: Path) -> None:
    """Load the newest checkpoint of `run_dir` into `state` (weights, optimizer, RNGs, data order)."""
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoint to resume from")
    tensors, meta = ckpt.load_checkpoint(found[-1])
    try:
        state.model.load_state_dict(unprefixed("model", tensors))
        state.ema_model.load_state_dict(unprefixed("ema", tensors))
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {found[-1]} does not match the config: {str(e).splitlines()[0]}"
        ) from None
    ckpt.load_optimizer_state(state.opt, tensors, meta, state.device)
    state.gen.set_state(tensors["rng.gen"])
    state.order.perm, state.order.epoch, state.order.pos = tensors["order.perm"], meta["epoch"], meta["pos"]
    key = f"rng.torch.rank{state.dist.rank}"
    torch.set_rng_state(tensors[key] if key in tensors else tensors["rng.torch.rank0"])
    if "rng.cuda" in tensors and state.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], state.device)
    ckpt.restore_host_rng_state(tensors, meta)
    if state.scaler and meta.get("scaler"):
        state.scaler.load_state_dict(meta["scaler"])
    state.step = int(meta["step"])


# ----- the loop ---------------------------------------------------------------------------------
def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
) -> dict[str, Any]:
    """Train a model as `cfg` says, writing checkpoints into `run_dir`; returns the loss history.

    With `resume=True`, continue from the newest checkpoint in `run_dir` until `cfg.train.steps`.
    A fresh run refuses a `run_dir` that holds an earlier run unless `overwrite=True` replaces it.
    `callbacks` see the events described in the module docstring; the run log and previews
    (`default_callbacks(cfg)`) always run first. FID during training (`train.eval_every`) is a
    callback of the evaluation layer that `ddpmkit.train` adds.
    """
    run_dir, t = Path(run_dir), cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    dist = init_distributed(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        if dist.is_main and resume:
            ckpt.check_writable(run_dir)
        elif dist.is_main:
            ckpt.prepare_run_dir(run_dir, overwrite=overwrite)
        state = build_state(cfg, build_dataset(cfg.data, seed=t.seed), device, dist)
        if resume:
            restore_state(state, run_dir)
        callbacks = [*default_callbacks(cfg), *callbacks]
        if t.eval_every and not any(getattr(cb, "scores_fid", False) for cb in callbacks):
            msg = "train.eval_every is set but no FID callback was given (ddpmkit.train adds it)"
            warnings.warn(msg, stacklevel=2)
        return {**_run(state, run_dir, progress, callbacks), "is_main": dist.is_main}
    finally:
        shutdown(dist)


def _run(state: TrainState, run_dir: Path, progress: bool, callbacks: list[Callback]) -> dict[str, Any]:
    t_cfg, is_main = state.cfg.train, state.dist.is_main
    total = total_steps(state.cfg, len(state.data))

    def emit(event: str, **info) -> None:
        if is_main:
            for cb in callbacks:
                cb(event, {"state": state, "run_dir": run_dir, "step": state.step, "emit": emit, **info})

    if state.step >= total and is_main and state.step:
        tqdm.write(f"checkpoint is at step {state.step} >= --steps {total}: nothing to train "
                   "(pass a larger --steps to extend the run)")  # fmt: skip
    emit("begin", total=total)
    start = window_t = time.perf_counter()
    window_n, window_loss = 0, []
    bar = tqdm(total=total, initial=state.step, desc="training", disable=not (progress and is_main),
               dynamic_ncols=True)  # fmt: skip
    stopped, skipped = "done", 0
    with StopRequest() as stop:
        while state.step < total:
            loss, gnorm = train_step(state)
            if not math.isfinite(loss) or not math.isfinite(gnorm):
                skipped += 1
                if t_cfg.on_nan == "skip" and skipped < MAX_SKIPPED:
                    tqdm.write(f"step {state.step + 1}: non-finite loss/gradient, batch skipped")
                    continue
                raise TrainingError(_nan_message(run_dir, state.step, loss))
            skipped = 0
            state.step += 1
            state.history["step"].append(state.step)
            state.history["loss"].append(loss)
            window_n += t_cfg.batch_size
            window_loss.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            emit("step", loss=loss)
            if state.step % t_cfg.log_every == 0 or state.step == total:
                now = time.perf_counter()
                rate = window_n / max(now - window_t, 1e-9)
                emit("log", row=_log_row(state, window_loss, gnorm, rate, now - start))
                window_t, window_n, window_loss = now, 0, []
            out_of_time = t_cfg.max_minutes and time.perf_counter() - start > 60 * t_cfg.max_minutes
            flag = all_reduce_sum(torch.tensor([float(stop.requested), float(bool(out_of_time))]), state.dist)
            if flag[0] > 0 or flag[1] > 0:
                stopped = "interrupted" if flag[0] > 0 else "time budget"
                break
            if t_cfg.checkpoint_every and state.step % t_cfg.checkpoint_every == 0 and state.step < total:
                save_state(state, run_dir)
    bar.close()
    save_state(state, run_dir)
    emit("end", stopped=stopped)
    if is_main and stopped == "interrupted":
        tqdm.write(f"stopped at step {state.step}/{total}; resume with: ddpm train --resume {run_dir}")
    return {**state.history, "total_steps": total, "final_step": state.step, "stopped": stopped,
            "elapsed_s": time.perf_counter() - start}  # fmt: skip


def _log_row(state: TrainState, losses: list[float], grad_norm: float, rate: float, elapsed: float) -> dict:
    """A train_log.csv row: the mean loss since the last row, lr, grad norm, images/s, seconds."""
    return {
        "step": state.step,
        "loss": float(np.mean(losses)),
        "lr": lr_at(state.cfg, state.step - 1),
        "grad_norm": grad_norm,
        "images_per_s": rate,
        "elapsed_s": elapsed,
    }


def _nan_message(run_dir: Path, step: int, loss: float) -> str:
    last = ckpt.list_checkpoints(run_dir)
    kept = f"the last good checkpoint ({last[-1].name}) is kept" if last else "no checkpoint was written yet"
    return (
        f"non-finite loss ({loss}) at step {step + 1}: training stopped, {kept}. Lower --lr, "
        "check the data, or pass --train.on_nan skip to skip such batches"
    )
