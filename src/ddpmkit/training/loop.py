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

import contextlib
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
from ..config import TASKS, RunConfig
from ..data import build_run_data
from ..errors import CheckpointError, ConfigError, TrainingError
from ..io import prefixed, unprefixed
from ..progress import bar as progress_bar
from ..threads import set_threads
from .callbacks import default_callbacks
from .distributed import all_gather_objects, all_reduce_sum, barrier, init_distributed, shutdown
from .step import TrainState, build_state, lr_at, train_step

Callback = Callable[[str, dict], None]
MAX_SKIPPED = 100  # consecutive non-finite batches tolerated by on_nan="skip"


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda, cuda:N or mps as a device this machine has; ConfigError naming what it lacks."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device {name[:100]!r}; choose auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    if kind == "mps" and not torch.backends.mps.is_available():
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
        self.signum = 0  # the signal that asked (the CLI exits with 128 + signum)
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
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
               "order.perm": state.order.perm, **state.t_sampler.state()}  # fmt: skip
    for name, net in state.extras.items():  # a teacher: saved so that a resume needs no other run
        tensors.update(prefixed(f"extra.{name}", net.state_dict()))
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
    t_cfg = state.cfg.train
    ckpt.save_checkpoint(run_dir, state.step, tensors, meta, t_cfg.keep_last, t_cfg.keep_every)
    ckpt.save_model(run_dir, state.cfg, weights, state.step, state.data.space.name)
    barrier(state.dist)


def restore_state(state: TrainState, run_dir: Path, verify: bool = True) -> Path:
    """Load the newest intact checkpoint of `run_dir` into `state` (weights, optimizer, RNGs, data
    order); a newer one that is damaged in any way (digests, missing keys, wrong types or shapes, a
    bad RNG state) is skipped with a note. Returns the checkpoint used."""
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoint to resume from")
    for path in reversed(found):
        try:
            tensors, meta = ckpt.load_checkpoint(path, verify=verify)
            _apply_checkpoint(state, tensors, meta)
            return path
        except CheckpointError as e:
            why = str(e)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        if state.dist.is_main:
            tqdm.write(f"skipping checkpoint {path.name}: {why}")
    raise CheckpointError(f"no intact checkpoint in {run_dir / ckpt.CKPT_DIR} (all {len(found)} damaged)")


def _apply_checkpoint(state: TrainState, tensors: dict, meta: dict) -> None:
    """Every piece of a checkpoint into `state` (a later, intact checkpoint overwrites them all)."""
    try:
        state.model.load_state_dict(unprefixed("model", tensors))
        state.ema_model.load_state_dict(unprefixed("ema", tensors))
        for name, net in state.extras.items():
            net.load_state_dict(unprefixed(f"extra.{name}", tensors))
    except RuntimeError as e:
        raise CheckpointError(f"it does not match the config: {str(e).splitlines()[0]}") from None
    ckpt.load_optimizer_state(state.opt, tensors, meta, state.device)
    state.gen.set_state(tensors["rng.gen"])
    perm, pos = tensors["order.perm"], int(meta["pos"])
    n = len(state.order.perm)
    if perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)) or not 0 <= pos <= n:
        raise CheckpointError(f"its data order is not a permutation of the {n} examples")
    state.order.perm, state.order.epoch, state.order.pos = perm, int(meta["epoch"]), pos
    state.t_sampler.load_state(tensors)
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
    verify: bool = True,
) -> dict[str, Any]:
    """Train a model as `cfg` says, writing checkpoints into `run_dir`; returns the loss history.

    With `resume=True`, continue from the newest intact checkpoint in `run_dir` until
    `cfg.train.steps` (`verify`: check its SHA-256). The run holds `run_dir/.lock` meanwhile.
    A fresh run refuses a `run_dir` that holds an earlier run unless `overwrite=True` replaces it.
    `callbacks` see the events described in the module docstring; the run log and previews
    (`default_callbacks(cfg)`) always run first. FID during training (`train.eval_every`) is a
    callback of the evaluation layer that `ddpmkit.train` adds.
    """
    run_dir, t = Path(run_dir), cfg.train
    set_threads(t.threads, small_work=cfg.model.kind == "mlp", name="train.threads")
    device = resolve_device(t.device)
    dist = init_distributed(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        with contextlib.ExitStack() as stack:
            if dist.is_main:
                ckpt.check_writable(run_dir)
            # the data and the memory are checked before the run directory is touched: a missing
            # data folder must not cost an --overwrite'n run its files
            cfg, data = build_run_data(cfg, seed=t.seed, resume_dir=run_dir if resume else None,
                                       progress=progress and dist.is_main, verify=verify)  # fmt: skip
            check_training_memory(cfg, data.shape, device, dist.world_size)
            if dist.is_main:
                stack.enter_context(ckpt.run_lock(run_dir))
                _prepare(run_dir, resume, overwrite)
            barrier(dist)
            state = build_state(cfg, data, device, dist)
            if resume:
                used = restore_state(state, run_dir, verify=verify)
                _check_resume_steps(state, len(data), used)
            elif (start := TASKS[cfg.train.task].start) is not None:
                start(state)  # e.g. a student takes its teacher's weights
            callbacks = [*default_callbacks(cfg), *callbacks]
            if t.eval_every and not any(getattr(cb, "scores_fid", False) for cb in callbacks):
                msg = "train.eval_every is set but no FID callback was given (ddpmkit.train adds it)"
                warnings.warn(msg, stacklevel=2)
            return {**_run(state, run_dir, progress, callbacks), "is_main": dist.is_main}
    finally:
        shutdown(dist)


def _prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Under the run's lock: clear what killed runs left behind, or make the directory fresh."""
    if resume:
        for path in ckpt.remove_leftovers(run_dir):
            tqdm.write(f"removed {path.name}, left by an interrupted write")
    else:
        ckpt.prepare_run_dir(run_dir, overwrite=overwrite)
        ckpt.remove_leftovers(run_dir)


def _check_resume_steps(state: TrainState, num_examples: int, used: Path) -> None:
    total = total_steps(state.cfg, num_examples)
    if total < state.step:
        raise ConfigError(f"the run is at step {state.step} already: --steps {total} would shorten it "
                          f"(give --steps > {state.step} to train on)")  # fmt: skip
    if state.dist.is_main:
        tqdm.write(f"resuming from step {state.step} ({used.parent.name}/{used.name})")


def check_training_memory(cfg: RunConfig, shape: tuple[int, ...], device: torch.device, world: int) -> int:
    """Refuse (ConfigError) a model and micro-batch whose training step would not fit in memory;
    returns the estimate in bytes (all processes of this machine, on the CPU)."""
    from ..memory import check_fits, training_bytes
    from ..models import build_network

    batch = cfg.train.micro_batch or max(1, cfg.train.batch_size // world)
    need = training_bytes(lambda: build_network(cfg, shape), shape, batch, bool(cfg.model.num_classes))
    need = need * world if device.type == "cpu" else need
    check_fits(
        f"training this model on {'x'.join(map(str, shape))} data at micro-batch {batch}", need, device
    )
    return need


def plan(cfg: RunConfig) -> str:
    """What `ddpm train --dry-run` checks beyond the config: the data load and the memory estimate."""
    from ..memory import available_bytes, gib

    cfg, data = build_run_data(cfg, seed=cfg.train.seed)
    device = resolve_device(cfg.train.device)
    need = check_training_memory(cfg, data.shape, device, 1)
    have = available_bytes(device)
    return (f"data: {len(data)} examples of shape {tuple(data.shape)}; training needs about {gib(need)}"
            + (f" of the {gib(have)} available" if have else ""))  # fmt: skip


def _run(state: TrainState, run_dir: Path, progress: bool, callbacks: list[Callback]) -> dict[str, Any]:
    t_cfg, is_main = state.cfg.train, state.dist.is_main
    total = total_steps(state.cfg, len(state.data))

    def emit(event: str, **info) -> None:
        if is_main:
            for cb in callbacks:
                cb(event, {"state": state, "run_dir": run_dir, "step": state.step, "emit": emit, **info})

    first = state.step
    if state.step >= total and is_main and state.step:
        tqdm.write(f"checkpoint is at step {state.step} = --steps {total}: nothing to train "
                   "(pass a larger --steps to extend the run)")  # fmt: skip
    emit("begin", total=total)
    start = window_t = time.perf_counter()
    window_n, window_loss = 0, []
    state.progress = _progress(state.step, total, 0.0, t_cfg.max_minutes)
    bar = progress_bar(total=total, initial=state.step, desc="training", disable=not (progress and is_main),
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
            elapsed = time.perf_counter() - start
            out_of_time = t_cfg.max_minutes and elapsed > 60 * t_cfg.max_minutes
            if t_cfg.max_minutes and elapsed > 2:  # the bar counts to the steps the budget will reach
                bar.total = max(
                    state.step,
                    min(total, first + round((state.step - first) * 60 * t_cfg.max_minutes / elapsed)),
                )
            flag = all_reduce_sum(torch.tensor([float(stop.requested), float(bool(out_of_time)), elapsed],
                                               dtype=torch.float64), state.dist)  # fmt: skip
            mean_elapsed = float(flag[2]) / state.dist.world_size
            state.progress = _progress(state.step, total, mean_elapsed, t_cfg.max_minutes)
            if flag[0] > 0 or flag[1] > 0:
                stopped = "interrupted" if flag[0] > 0 else "time budget"
                break
            if t_cfg.checkpoint_every and state.step % t_cfg.checkpoint_every == 0 and state.step < total:
                save_state(state, run_dir)
    bar.close()
    if state.step > first or not first:  # a resumed run that trained nothing leaves its files alone
        save_state(state, run_dir)
    emit("end", stopped=stopped)
    if is_main and stopped == "interrupted":
        tqdm.write(f"stopped at step {state.step}/{total}; resume with: ddpm train --resume {run_dir}")
    return {**state.history, "total_steps": total, "final_step": state.step, "stopped": stopped,
            "signal": stop.signum, "elapsed_s": time.perf_counter() - start}  # fmt: skip


def _progress(step: int, total: int, elapsed_s: float, max_minutes: float) -> float:
    """The fraction of the run done, for decaying lr schedules: the step fraction, or under a time
    budget the time fraction when that is larger (averaged over processes, so that all agree)."""
    by_time = elapsed_s / (60 * max_minutes) if max_minutes else 0.0
    return min(1.0, max(step / total, by_time))


def _log_row(state: TrainState, losses: list[float], grad_norm: float, rate: float, elapsed: float) -> dict:
    """A train_log.csv row: the mean loss since the last row, lr, grad norm, images/s, seconds."""
    return {
        "step": state.step,
        "loss": float(np.mean(losses)),
        "lr": lr_at(state.cfg, state.step - 1, state.progress),
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
