"""What a training step optimises: the registry `TASKS` of training tasks (`train.task`).

A task is the per-example loss of a batch and the preview the trainer draws of its model. The step
(`step.py`) draws the batch (examples, t, noise, flips, dropped labels) and calls the task's loss;
everything else (optimizer, EMA, checkpoints, resume, signals, lock) is shared. A task may carry
extra networks (a teacher), which the state builds as copies of the model and the checkpoints save
and restore, set them up on a fresh run (`start`) and act before each step (`before_step`). A new
objective is its functions (the distillation losses: `distill.py`) and one registry line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import TASKS, RunConfig
from ..denoiser import guidance_weight
from ..diffusion import Cond
from ..models.autoencoder import kl_to_standard_normal
from ..samplers import sample
from . import distill

if TYPE_CHECKING:
    from .step import TrainState

Loss = Callable[["TrainState", nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, "Cond | None"],
                torch.Tensor]  # fmt: skip


@dataclass(frozen=True)
class Task:
    """loss(state, net, x0, t, noise, cond) -> (B,) per-example losses; preview(state, n, seed) ->
    n model-space tensors to draw; describe(cfg): the training summary's lines of what is trained;
    `samples`: the trained model is a diffusion model one can sample."""

    loss: Loss
    preview: Callable[[TrainState, int, int], torch.Tensor]
    describe: Callable[[RunConfig], list[str]]  # the summary lines of what is trained
    samples: bool = True
    extras: tuple[str, ...] = ()  # names of extra networks (copies of the model) the state carries
    start: Callable[[TrainState], None] | None = None  # a fresh run's set-up (not called on resume)
    before_step: Callable[[TrainState], None] | None = None  # before each step (a new round, say)


def describe_diffusion(cfg: RunConfig) -> list[str]:
    d, s = cfg.diffusion, cfg.sample
    t_drawn = f", t drawn by {cfg.train.t_sampler}" if cfg.train.t_sampler != "uniform" else ""
    return [f"  diffusion: {d.schedule} schedule, T = {d.timesteps}, predicts {d.objective}, "
            f"{d.loss} loss, {d.variance} variance{t_drawn}",
            f"  sample: {s.sampler}, {s.steps or 'all'} steps"]  # fmt: skip


def describe_autoencoder(cfg: RunConfig) -> list[str]:
    a = cfg.model.autoencoder
    return [f"  autoencoder: f = {a.factor}, {a.latent_channels} latent channels, width {a.base_channels}, "
            f"loss {a.recon_loss} + {a.kl_weight:g} x KL"]  # fmt: skip


def diffusion_loss(state, net, x0, t, noise, cond):
    """The diffusion loss of the run's objective, weighting and variance (`GaussianDiffusion`)."""
    return state.diffusion.training_loss(net, x0, t, noise, cond)


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


def describe_distill(cfg: RunConfig) -> list[str]:
    d = cfg.distill
    what = (f"{d.teacher_steps} DDIM steps halved to {d.to_steps}, {d.round_steps} steps a round"
            if cfg.train.task == "progressive" else f"ECT curriculum, {d.round_steps} steps a stage")
    guided = f", guidance {d.guidance:g}{f' by {d.guide}' if d.guide else ''} fixed in" if d.guidance else ""
    return [f"  distill: {cfg.train.task} from {d.teacher} ({what}{guided})",
            f"  sample: {cfg.sample.sampler}, {cfg.sample.steps} steps"]  # fmt: skip


def autoencoder_loss(state, net, x0, t, noise, cond):
    """Reconstruction (summed over pixels) + kl_weight * KL(q(z|x) || N(0, I)) (Rombach et al. 2022,
    Sec. 3, without the perceptual and adversarial terms); `t`, `noise` and `cond` are unused."""
    a = state.cfg.model.autoencoder
    recon, mean, logvar = net(x0)
    err = (recon - x0).abs() if a.recon_loss == "l1" else (recon - x0).pow(2)
    return err.flatten(1).sum(1) + a.kl_weight * kl_to_standard_normal(mean, logvar)


@torch.no_grad()
def reconstructions(state: TrainState, n: int, seed: int) -> torch.Tensor:
    """n // 2 training images (drawn by `seed`) each followed by the EMA model's reconstruction of
    its posterior mean: a grid of (original, reconstruction) pairs."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(state.x_all), generator=g)[: max(1, n // 2)]
    x = state.x_all[idx].contiguous()
    recon = state.ema_model.decode(state.ema_model.encode(x)[0]).clamp(-1, 1)
    return torch.stack([x, recon], dim=1).flatten(0, 1)


TASKS["diffusion"] = Task(diffusion_loss, few_step_samples, describe_diffusion)
TASKS["autoencoder"] = Task(autoencoder_loss, reconstructions, describe_autoencoder, samples=False)
TASKS["progressive"] = Task(distill.progressive_loss, few_step_samples, describe_distill, extras=("teacher",),
                            start=distill.start_from_teacher, before_step=distill.next_round)  # fmt: skip
TASKS["consistency"] = Task(distill.consistency_loss, few_step_samples, describe_distill,
                            start=distill.start_from_teacher)  # fmt: skip
