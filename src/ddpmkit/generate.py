"""Batched, seeded generation from a trained run (noise -> sampler -> samples), optionally
recording the reverse trajectory of the first few samples for animations and panels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .checkpoint import LoadedRun
from .samplers import sample, sampling_process


@dataclass
class Trajectory:
    """Frames of the first samples' reverse trajectory (model space): x_t at timestep t and the x0
    predicted from it; the last frame (t = 0) is the final sample."""

    t: list[int] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0_pred: list[torch.Tensor] = field(default_factory=list)


def default_clip(run: LoadedRun, clip: bool | None = None) -> tuple[float, float] | None:
    """Clip predicted x0 to [-1, 1] for images, not for points (unless asked)."""
    if clip is None:
        clip = run.cfg.sample.clip if run.cfg.sample.clip is not None else run.kind == "images"
    return (-1.0, 1.0) if clip else None


def generate(
    run: LoadedRun,
    n: int,
    *,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
    clip: bool | None = None,
    record: int = 0,
    record_frames: int = 50,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, Trajectory]:
    """Draw n samples in model space: (n, *data_shape) on the CPU.

    The same seed, sampler options and batch size give the same samples on the same machine.
    `record` > 0 keeps about `record_frames` frames of the first `record` samples' trajectory.
    """
    device = torch.device(device) if device is not None else next(run.model.parameters()).device
    proc_len = sampling_process(run.diffusion, steps).num_timesteps  # validates steps against T
    every = max(1, proc_len // max(1, record_frames))
    batch_size = batch_size or (n if run.kind == "points" else 256)
    g = torch.Generator(device="cpu").manual_seed(seed)
    traj, out = Trajectory(), []
    bar = tqdm(total=n, desc=f"{sampler} sampling", unit="sample", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn((b, *run.data_shape), generator=g).to(device)
        keep = min(record, b) if start == 0 else 0  # trajectories come from the first batch
        state = {"x_t": x[:keep].cpu()}

        def callback(d, keep=keep, state=state):
            # frame: the step's input x_t at timestep t and the x0 the model predicts from it
            if d["i"] % every == 0:
                traj.t.append(d["t"])
                traj.x_t.append(state["x_t"])
                traj.x0_pred.append(d["x0_pred"][:keep].cpu())
            state["x_t"] = d["x_t"][:keep].cpu()

        x0 = sample(
            sampler,
            run.model,
            run.diffusion,
            x,
            steps=steps,
            eta=eta,
            clip=default_clip(run, clip),
            generator=g,
            callback=callback if keep else None,
            progress=progress and run.kind == "images",
        )
        if keep:  # the last frame is the sample itself
            traj.t.append(0)
            traj.x_t.append(x0[:keep].cpu())
            traj.x0_pred.append(x0[:keep].cpu())
        out.append(x0.cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out), traj
