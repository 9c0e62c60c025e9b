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
    """x_t and predicted x0 of the first `n` samples after each recorded step (model space)."""

    t: list[int] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0_pred: list[torch.Tensor] = field(default_factory=list)


def default_clip(run: LoadedRun, clip: bool | None = None) -> tuple[float, float] | None:
    """Clip predicted x0 to [-1, 1] for images, not for points (unless asked)."""
    if clip is None:
        clip = run.cfg.sample.clip if run.cfg.sample.clip is not None else run.kind == "images"
    return (-1.0, 1.0) if clip else None


def generate(run: LoadedRun, n: int, *, sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
             seed: int = 0, batch_size: int | None = None, clip: bool | None = None,
             record: int = 0, record_frames: int = 50, progress: bool = True,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, Trajectory]:
    """Draw n samples in model space: (n, *data_shape) on the CPU.

    The same seed, sampler options and batch size give the same samples on the same machine.
    `record` > 0 keeps about `record_frames` frames of the first `record` samples' trajectory.
    """
    device = torch.device(device) if device is not None else next(run.model.parameters()).device
    proc = sampling_process(run.diffusion, steps)  # validates steps against T
    proc_len, proc_t0 = proc.num_timesteps, int(proc.timestep_map[-1])
    every = max(1, proc_len // max(1, record_frames))
    batch_size = batch_size or (n if run.kind == "points" else 256)
    g = torch.Generator(device="cpu").manual_seed(seed)
    traj, out = Trajectory(), []
    bar = tqdm(total=n, desc=f"{sampler} sampling", unit="sample", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn((b, *run.data_shape), generator=g).to(device)
        keep = min(record, b) if start == 0 else 0  # trajectories come from the first batch

        def callback(d, keep=keep):
            if d["i"] == 0 and not traj.t:  # the starting noise, for the first frame
                traj.t.append(proc_t0)
                traj.x_t.append(x[:keep].cpu())
                traj.x0_pred.append(d["x0_pred"][:keep].cpu())
            if d["i"] % every == every - 1 or d["i"] == proc_len - 1:
                traj.t.append(d["t"])
                traj.x_t.append(d["x_t"][:keep].cpu())
                traj.x0_pred.append(d["x0_pred"][:keep].cpu())

        x0 = sample(sampler, run.model, run.diffusion, x, steps=steps, eta=eta, clip=default_clip(run, clip),
                    generator=g, callback=callback if keep else None, progress=progress and run.kind == "images")
        out.append(x0.cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out), traj
