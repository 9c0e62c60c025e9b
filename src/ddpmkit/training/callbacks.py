"""Training callbacks: the run log (CSV + TensorBoard) and preview grids. FID during training
lives with the metrics (`ddpmkit.eval.during_training`); `ddpmkit.train` assembles all three from
the config. A callback is `cb(event, info)`; see `loop.py` for the events."""

from __future__ import annotations

import dataclasses

import torch

from ..denoiser import guidance_weight
from ..samplers import sample
from .runlog import RunLogger
from .step import TrainState


@torch.no_grad()
def few_step_samples(state: TrainState, n: int, seed: int) -> torch.Tensor:
    """n samples of the EMA model with the run's sampler on train.eval_steps steps (never all T
    inside training), clipped as the data space says; a class-conditional run draws the classes in
    turn (0, 1, ..., K-1, 0, ...) at the run's guidance."""
    cfg = state.cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *state.data.shape), generator=g).to(state.device)
    steps = min(cfg.train.eval_steps, state.diffusion.num_timesteps)
    options = dataclasses.replace(cfg.sample, steps=steps)  # the run's sampler, grid, eta, threshold
    cond = None
    if cfg.model.num_classes:
        cond = {"y": (torch.arange(n) % cfg.model.num_classes).to(state.device)}
        options = dataclasses.replace(options, guidance=guidance_weight(options.guidance))
    return sample(state.ema_model, state.diffusion, x, options, clip=state.data.space.clip_range, cond=cond,
                  generator=g)  # fmt: skip


class LogCallback:
    """train_log.csv (and TensorBoard) rows on "log", FID rows on "eval", pictures on "image"."""

    def __init__(self, tensorboard: bool = False):
        self.tensorboard, self.logger = tensorboard, None

    def __call__(self, event: str, info: dict) -> None:
        if event == "begin":
            self.logger = RunLogger(info["run_dir"], info["step"], self.tensorboard)
        elif self.logger is None:
            return
        elif event == "log":
            self.logger.log(info["row"])
        elif event == "eval":
            self.logger.log_eval(info["step"], {k: info[k] for k in ("fid", "copy_fraction") if k in info})
        elif event == "image":
            self.logger.image(info["tag"], info["x"], info["step"])
        elif event == "end":
            self.logger.close()
            self.logger = None


class PreviewCallback:
    """Every `every` steps: a 4x4 grid of few-step samples in previews/step-N.png."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, event: str, info: dict) -> None:
        if event != "step" or info["step"] % self.every:
            return
        state: TrainState = info["state"]
        x = few_step_samples(state, 16, seed=0).cpu()
        path = info["run_dir"] / "previews" / f"step-{info['step']:08d}.png"
        state.data.space.plot_samples(state.data.space.to_data(x), path, dataset=state.cfg.data.dataset)
        info["emit"]("image", tag="preview", x=x)


def default_callbacks(cfg) -> list:
    """The logging and preview callbacks `cfg.train` asks for."""
    callbacks: list = [LogCallback(cfg.train.tensorboard)]
    if cfg.train.preview_every:
        callbacks.append(PreviewCallback(cfg.train.preview_every))
    return callbacks
