"""The training loop: data -> model -> loss -> optimizer, with EMA, logging and checkpoints.

`train(cfg, run_dir)` is an importable function (the CLI only calls it). It is exact to resume:
every source of randomness (data order, t, noise, flips, dropout) comes from generators whose
states are checkpointed with the model, EMA, optimizer and data position, so a resumed run
reproduces the losses of an uninterrupted one bit for bit on CPU. Under torchrun every process
draws the same global batch (same generator) and trains on its own slice, so N processes with
global batch B compute what 1 process with batch B computes, up to float summation order.
"""

from __future__ import annotations

import copy
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import RunConfig
from .data import Dataset, build_dataset
from .diffusion import GaussianDiffusion, build_diffusion
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from .errors import ConfigError, TrainingError
from .models import build_model
from .runlog import RunLogger

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


def lr_at(cfg: RunConfig, step: int) -> float:
    """Linear warm-up over train.warmup_steps, then constant."""
    w = cfg.train.warmup_steps
    return cfg.train.lr * (min(1.0, (step + 1) / w) if w > 0 else 1.0)


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay warmed up as min(decay, (1 + n) / (10 + n)) so early averages are not the init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """EMA of parameters only (buffers are copied, not averaged)."""
    for e, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        e.copy_(b)


class BatchOrder:
    """Random epoch-wise permutations drawn from `generator`; the position is checkpointed."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.gen = n, generator
        self.epoch, self.pos = 0, 0
        self.perm = torch.randperm(n, generator=generator)

    def next(self, batch: int) -> torch.Tensor:
        parts = []
        while batch > 0:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self.perm = torch.randperm(self.n, generator=self.gen)
            take = min(batch, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos, batch = self.pos + take, batch - take
        return torch.cat(parts)


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


class Trainer:
    """Holds the objects of one training run; `run()` executes the loop. Use `train()`."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        resume: bool,
        progress: bool,
        callbacks: Iterable[Callback],
        overwrite: bool = False,
    ):
        self.cfg, self.run_dir, self.progress, self.callbacks = cfg, Path(run_dir), progress, list(callbacks)
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if t.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("--precision fp16 needs CUDA; on CPU use bf16 or fp32")
        if t.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch size {t.batch_size} is not divisible by {self.dist.world_size} processes"
            )
        self.local_batch = t.batch_size // self.dist.world_size
        self.micro = t.micro_batch or self.local_batch
        if self.dist.is_main and resume:
            ckpt.check_writable(self.run_dir)
        elif self.dist.is_main:
            ckpt.prepare_run_dir(self.run_dir, overwrite=overwrite)
        self.data: Dataset = build_dataset(cfg.data, seed=t.seed)
        self.diffusion: GaussianDiffusion = build_diffusion(cfg.diffusion)
        torch.manual_seed(t.seed + self.dist.rank)  # global RNG: dropout only
        self.model = build_model(cfg.model, self.data.shape).to(self.device)
        channels_last = t.channels_last and self.data.kind == "images"
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net: nn.Module = torch.compile(self.model) if t.compile else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
        self.gen = torch.Generator().manual_seed(t.seed)  # data order, t, noise, flips
        self.order = BatchOrder(len(self.data), self.gen)
        self.x_all = self.data.x.to(self.device)
        if channels_last:
            self.x_all = self.x_all.contiguous(memory_format=torch.channels_last)
        self.step, self.total = 0, total_steps(cfg, len(self.data))
        self.history: dict[str, list] = {"step": [], "loss": []}
        self.classifier, self.best_fid = self._load_classifier(), math.inf
        if resume:
            self._restore()

    # ----- one optimisation step -------------------------------------------------------------
    def _global_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Indices, timesteps, noise and flips of the global batch (identical on every process)."""
        B = self.cfg.train.batch_size
        idx = self.order.next(B)
        t = torch.randint(0, self.diffusion.num_timesteps, (B,), generator=self.gen)
        noise = torch.randn((B, *self.data.shape), generator=self.gen)
        if self.cfg.data.hflip and self.data.kind == "images":
            flip = torch.rand(B, generator=self.gen) < 0.5
            return idx, t, noise, flip
        return idx, t, noise, None

    def _autocast(self):
        p = self.cfg.train.precision
        if p == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _train_step(self) -> tuple[float, float]:
        """One update on the global batch; returns (global mean loss, grad norm)."""
        idx, t, noise, flip = self._global_batch()
        lo = self.dist.rank * self.local_batch
        sl = slice(lo, lo + self.local_batch)
        idx, t, noise = idx[sl], t[sl].to(self.device), noise[sl].to(self.device)
        x0 = self.x_all[idx.to(self.device)]
        if flip is not None:
            f = flip[sl].to(self.device)
            x0 = torch.where(f[:, None, None, None], x0.flip(-1), x0)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        chunks = list(range(0, self.local_batch, self.micro))
        for j, start in enumerate(chunks):
            s = slice(start, start + self.micro)
            sync = j == len(chunks) - 1 or not self.dist.enabled
            with nullcontext() if sync else self.net.no_sync(), self._autocast():
                losses = self.diffusion.training_loss(self.net, x0[s], t[s], noise[s])
                loss = losses.sum() / self.local_batch  # mean over the per-process batch
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += losses.detach().sum()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        clip = self.cfg.train.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        flags = torch.stack([loss_sum.float(), (~torch.isfinite(grad_norm)).float()])
        flags = all_reduce_sum(flags, self.dist)
        mean_loss = float(flags[0]) / self.cfg.train.batch_size
        if not math.isfinite(mean_loss) or float(flags[1]) > 0:
            return mean_loss, float(grad_norm)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        ema_update(self.ema_model, self.model, ema_decay_at(self.cfg.train.ema_decay, self.step))
        return mean_loss, float(grad_norm)

    # ----- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_cfg, is_main = self.cfg.train, self.dist.is_main
        logger = RunLogger(self.run_dir, self.step, t_cfg.tensorboard) if is_main else None
        start, window_t, window_n, window_loss = time.perf_counter(), time.perf_counter(), 0, []
        bar = tqdm(
            total=self.total,
            initial=self.step,
            desc="training",
            disable=not (self.progress and is_main),
            dynamic_ncols=True,
        )
        stopped, skipped = "done", 0
        with StopRequest() as stop:
            while self.step < self.total:
                loss, gnorm = self._train_step()
                if not math.isfinite(loss) or not math.isfinite(gnorm):
                    skipped += 1
                    if t_cfg.on_nan == "skip" and skipped < MAX_SKIPPED:
                        tqdm.write(f"step {self.step + 1}: non-finite loss/gradient, batch skipped")
                        continue
                    raise TrainingError(self._nan_message(loss))
                skipped = 0
                self.step += 1
                self.history["step"].append(self.step)
                self.history["loss"].append(loss)
                window_n += t_cfg.batch_size
                window_loss.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                for cb in self.callbacks:
                    cb("step", {"step": self.step, "loss": loss, "trainer": self})
                if self.step % t_cfg.log_every == 0 or self.step == self.total:
                    now = time.perf_counter()
                    row = {
                        "step": self.step,
                        "loss": float(np.mean(window_loss)),
                        "lr": lr_at(self.cfg, self.step - 1),
                        "grad_norm": gnorm,
                        "images_per_s": window_n / max(now - window_t, 1e-9),
                        "elapsed_s": now - start,
                    }
                    if logger:
                        logger.log(row)
                    window_t, window_n, window_loss = now, 0, []
                if is_main and t_cfg.preview_every and self.step % t_cfg.preview_every == 0:
                    self._preview(logger)
                if is_main and self.classifier and self.step % t_cfg.eval_every == 0:
                    self._evaluate(logger)
                out_of_time = t_cfg.max_minutes and time.perf_counter() - start > 60 * t_cfg.max_minutes
                flag = all_reduce_sum(
                    torch.tensor([float(stop.requested), float(bool(out_of_time))]), self.dist
                )
                if flag[0] > 0:
                    stopped = "interrupted"
                    break
                if flag[1] > 0:
                    stopped = "time budget"
                    break
                if (
                    t_cfg.checkpoint_every
                    and self.step % t_cfg.checkpoint_every == 0
                    and self.step < self.total
                ):
                    self.save()
        bar.close()
        self.save()
        if logger:
            logger.close()
        if is_main and stopped == "interrupted":
            tqdm.write(
                f"stopped at step {self.step}/{self.total}; resume with: ddpm train --resume {self.run_dir}"
            )
        return {
            **self.history,
            "total_steps": self.total,
            "final_step": self.step,
            "stopped": stopped,
            "elapsed_s": time.perf_counter() - start,
        }

    def _nan_message(self, loss: float) -> str:
        last = ckpt.list_checkpoints(self.run_dir)
        kept = (
            f"the last good checkpoint ({last[-1].name}) is kept" if last else "no checkpoint was written yet"
        )
        return (
            f"non-finite loss ({loss}) at step {self.step + 1}: training stopped, {kept}. Lower --lr, "
            "check the data, or pass --train.on_nan skip to skip such batches"
        )

    @torch.no_grad()
    def _few_step_samples(self, n: int, seed: int) -> torch.Tensor:
        """n images from the EMA model with the run's sampler on train.eval_steps steps (never all T
        inside training), clipped to [-1, 1]."""
        from .samplers import sample

        s = self.cfg.sample
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((n, *self.data.shape), generator=g).to(self.device)
        steps = min(self.cfg.train.eval_steps, self.diffusion.num_timesteps)
        return sample(
            s.sampler,
            self.ema_model,
            self.diffusion,
            x,
            steps=steps,
            eta=s.eta,
            clip=(-1.0, 1.0),
            generator=g,
        )

    def _preview(self, logger: RunLogger | None) -> None:
        from .viz import save_image_grid

        x = self._few_step_samples(16, seed=0)
        path = self.run_dir / "previews" / f"step-{self.step:08d}.png"
        save_image_grid(x.cpu(), path, nrow=4)
        if logger:
            logger.image("preview", x.cpu(), self.step)

    def _load_classifier(self):
        """The feature classifier for FID during training (fails early if it is not trained yet)."""
        if not self.cfg.train.eval_every or not self.dist.is_main:
            return None
        if self.data.kind != "images":
            raise ConfigError("train.eval_every computes FID of images; for points use `ddpm eval`")
        from .classifier import load_classifier

        c, h, _ = self.data.shape
        return load_classifier(self.cfg.data.dataset, self.cfg.train.eval_cache_dir, image_size=h, channels=c)

    @torch.no_grad()
    def _evaluate(self, logger: RunLogger | None) -> None:
        """FID of eval_samples few-step samples of the EMA model; the best weights are kept in
        best.safetensors (+ best.json)."""
        from .data.images import from_model_range
        from .evaluate import classifier_fid

        t = self.cfg.train
        x = self._few_step_samples(t.eval_samples, seed=t.seed + 1)
        fid = classifier_fid(self.classifier, from_model_range(x.cpu()))
        tqdm.write(
            f"step {self.step}: FID (classifier features, {t.eval_samples} samples, "
            f"{self.cfg.sample.sampler} {t.eval_steps} steps) = {fid:.3f}"
        )
        if logger:
            logger.log_eval(self.step, fid)
        if fid < self.best_fid:
            self.best_fid = fid
            ckpt.save_tensors(self.run_dir / "best.safetensors", self._weights(), {"step": str(self.step)})
            ckpt.atomic_write_text(self.run_dir / "best.json", json.dumps({"step": self.step, "fid": fid}))

    # ----- checkpoints -------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        t = {
            **ckpt.prefixed("model", self.model.state_dict()),
            **ckpt.prefixed("ema", self.ema_model.state_dict()),
            "data.shape": torch.tensor(self.data.shape),
        }
        if self.data.mean is not None:
            t["data.mean"], t["data.std"] = self.data.mean, self.data.std
        return t

    def save(self) -> None:
        """Checkpoint the full training state (rank 0 writes; RNG states of all ranks included)."""
        rng = all_gather_objects(torch.get_rng_state().numpy().tobytes(), self.dist)
        if not self.dist.is_main:
            barrier(self.dist)
            return
        weights = self._weights()
        tensors = dict(weights)
        opt_state = self.opt.state_dict()
        scalars = {}
        for i, s in opt_state["state"].items():
            for k, v in s.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{i}.{k}"] = v
                else:
                    scalars[f"{i}.{k}"] = v
        np_state = np.random.get_state()
        tensors.update(
            {
                "rng.gen": self.gen.get_state(),
                "order.perm": self.order.perm,
                "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            }
        )
        for r, b in enumerate(rng):
            tensors[f"rng.torch.rank{r}"] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "epoch": self.order.epoch,
            "pos": self.order.pos,
            "world_size": self.dist.world_size,
            "optim_groups": opt_state["param_groups"],
            "optim_scalars": scalars,
            "numpy_rng": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python_rng": _py_state_to_json(random.getstate()),
            "history_len": len(self.history["loss"]),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        ckpt.save_checkpoint(self.run_dir, self.step, tensors, meta, self.cfg.train.keep_last)
        ckpt.save_model(self.run_dir, self.cfg, weights, self.step)
        barrier(self.dist)

    def _restore(self) -> None:
        found = ckpt.list_checkpoints(self.run_dir)
        if not found:
            raise ckpt.CheckpointError(f"{self.run_dir} holds no checkpoint to resume from")
        tensors, meta = ckpt.load_checkpoint(found[-1])
        try:
            self.model.load_state_dict(ckpt.unprefixed("model", tensors))
            self.ema_model.load_state_dict(ckpt.unprefixed("ema", tensors))
        except RuntimeError as e:
            raise ckpt.CheckpointError(
                f"checkpoint {found[-1]} does not match the config: {str(e).splitlines()[0]}"
            ) from None
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v.to(self.device)
        for k, v in meta["optim_scalars"].items():
            i, name = k.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
        self.gen.set_state(tensors["rng.gen"])
        self.order.perm, self.order.epoch, self.order.pos = tensors["order.perm"], meta["epoch"], meta["pos"]
        key = f"rng.torch.rank{self.dist.rank}"
        torch.set_rng_state(tensors[key] if key in tensors else tensors["rng.torch.rank0"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        name, pos, has_gauss, cached = meta["numpy_rng"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(_py_state_from_json(meta["python_rng"]))
        if self.scaler and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        best = self.run_dir / "best.json"
        if self.classifier and best.is_file():
            self.best_fid = float(json.loads(best.read_text())["fid"])
        if self.step >= self.total and self.dist.is_main:
            tqdm.write(
                f"checkpoint is at step {self.step} >= --steps {self.total}: nothing to train "
                "(pass a larger --steps to extend the run)"
            )


def _py_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


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
    """
    trainer = Trainer(
        cfg, Path(run_dir), resume=resume, progress=progress, callbacks=callbacks, overwrite=overwrite
    )
    try:
        return {**trainer.run(), "is_main": trainer.dist.is_main}
    finally:
        shutdown(trainer.dist)
