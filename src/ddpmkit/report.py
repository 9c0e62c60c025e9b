"""The pictures and numbers written into a run directory after training:
loss.png, forward.png, samples.png, denoise.gif and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import viz
from .checkpoint import LoadedRun, atomic_write_text, load_run
from .data import build_dataset, to_data_space
from .data.toy2d import point_sampler
from .diffusion import GaussianDiffusion
from .generate import generate
from .metrics import distance_with_floor
from .runlog import read_log

SIGNAL_LEVELS = (0.9, 0.6, 0.3, 0.1, 0.02)


def forward_timesteps(alphas_cumprod: torch.Tensor) -> list[int]:
    """t = 0, the first t where alpha_bar falls below each of SIGNAL_LEVELS, and T-1: a strip that
    shows the data dissolving whatever the schedule (equally spaced t would all look like noise)."""
    ab = alphas_cumprod.double()
    ts = [0] + [int((ab <= level).nonzero()[0]) for level in SIGNAL_LEVELS if bool((ab <= level).any())]
    return sorted(set(ts + [len(ab) - 1]))


def noised(diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tt = torch.full((len(x0),), t, dtype=torch.long)
    return diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g))


def write_forward(diffusion: GaussianDiffusion, x0: torch.Tensor, kind: str, path: Path) -> None:
    """The data noised at several t: a row of scatter plots (points) or an image table."""
    ts = forward_timesteps(diffusion.alphas_cumprod)
    frames = [noised(diffusion, x0, t) for t in ts]
    titles = [f"t = {t + 1}\nᾱ = {float(diffusion.alphas_cumprod[t]):.2g}" for t in ts]
    if kind == "points":
        viz.plot_points_strip(
            [f.numpy() for f in frames],
            titles,
            path,
            suptitle="forward process q(x_t | x_0) (standardised coordinates)",
        )
    else:
        rows = [torch.stack([f[i] for f in frames]) for i in range(len(x0))]
        viz.image_rows(rows, titles, [""] * len(rows), path, title="forward process q(x_t | x_0)")


def real_points(name: str):
    """draw_real(n, seed) in the dataset's own coordinates (empirical resampling for CSV files,
    read once): the same draws as `draw_points(name, n, seed)`."""
    sampler = point_sampler(name)
    return lambda n, seed: sampler(n, np.random.default_rng(seed))


def points_report(run: LoadedRun, run_dir: Path, progress: bool) -> dict:
    s = run.cfg.sample
    x, traj = generate(
        run,
        s.num_samples,
        sampler=s.sampler,
        steps=s.steps,
        eta=s.eta,
        seed=run.cfg.train.seed,
        record=s.num_samples,
        progress=progress,
    )
    samples = to_data_space(x, "points", run.mean, run.std)
    draw_real = real_points(run.cfg.data.dataset)
    real = draw_real(s.num_samples, 12345)
    m = distance_with_floor(samples, draw_real)
    viz.plot_points_samples(
        samples,
        real,
        run_dir / "samples.png",
        title=f"{run.cfg.data.dataset}: SW1 = {m['swd']:.4f} (floor {m['swd_floor']:.4f})",
    )
    frames = [to_data_space(xt, "points", run.mean, run.std) for xt in traj.x_t]
    viz.points_gif(
        frames, [f"t = {t}" for t in traj.t[:-1]] + ["sample"], run_dir / "denoise.gif", reference=real
    )
    return m


def images_report(run: LoadedRun, run_dir: Path, progress: bool) -> dict:
    s = run.cfg.sample
    x, traj = generate(
        run,
        64,
        sampler=s.sampler,
        steps=s.steps,
        eta=s.eta,
        seed=run.cfg.train.seed,
        record=16,
        progress=progress,
    )
    viz.save_image_grid(x, run_dir / "samples.png", nrow=8)
    viz.images_gif(traj.x_t, run_dir / "denoise.gif", nrow=4)
    return {"num_samples": len(x)}


def write_report(run_dir: str | Path, *, progress: bool = True, device: str = "cpu") -> dict:
    """Write the run's pictures and metrics.json from its saved model; returns the metrics."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device)
    steps, losses = read_log(run_dir)
    if steps:
        viz.plot_loss(steps, losses, run_dir / "loss.png")
    data = build_dataset(run.cfg.data, seed=run.cfg.train.seed)
    n_fwd = 2000 if run.kind == "points" else 6
    write_forward(run.diffusion, data.x[:n_fwd], run.kind, run_dir / "forward.png")
    with torch.inference_mode():
        m = (
            points_report(run, run_dir, progress)
            if run.kind == "points"
            else images_report(run, run_dir, progress)
        )
    metrics = {"step": run.step, "final_loss": losses[-1] if losses else None, **m}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
