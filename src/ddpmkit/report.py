"""The pictures and numbers written into a run directory after training:
loss.png, forward.png, samples.png, denoise.gif and metrics.json. The data space draws them."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch

from . import viz
from .config import SCHEDULES, SampleConfig
from .data import LABELLED_POINTS, Dataset, DataSpace, build_dataset
from .data.spaces import real_points
from .diffusion import GaussianDiffusion
from .eval import score_report
from .io import atomic_write_bytes, atomic_write_text
from .outputs import derived
from .run import LoadedRun, Trajectory, generate, load_run
from .schedules import make_beta_schedule
from .training.runlog import read_log

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


def write_forward(
    diffusion: GaussianDiffusion, data: Dataset, path: Path, space: DataSpace | None = None
) -> None:
    """The first examples of the data noised at several t, drawn by `space` (default the data's own:
    a latent run passes its latent space, which encodes the pixel examples and decodes the frames)."""
    space = space or data.space
    x0 = space.examples(data.x, space.forward_examples)
    ts = forward_timesteps(diffusion.alphas_cumprod)
    frames = [noised(diffusion, x0, t) for t in ts]
    titles = [f"t = {t + 1}\nᾱ = {float(diffusion.alphas_cumprod[t]):.2g}" for t in ts]
    space.plot_forward(frames, titles, path)


def write_samples(run: LoadedRun, run_dir: Path, progress: bool) -> dict:
    """samples.png, denoise.gif and the quick score, with the run's own sample options."""
    s, space, dataset = run.cfg.sample, run.space, run.cfg.data.dataset
    n = space.report_samples or s.num_samples
    x, traj = generate(
        run, n, seed=run.cfg.train.seed, record=min(n, space.record_limit or n), progress=progress
    )
    samples = space.to_data(x)
    m = score_report(space, samples, dataset)
    how = f"step {run.step}, {s.sampler} {s.steps or 'all'} steps"
    title = f"{dataset}, {how}: SW1 = {m['swd']:.4f} (floor {m['swd_floor']:.4f})" if "swd" in m else ""
    title = title or f"{dataset}, {how}"
    space.plot_samples(samples, run_dir / "samples.png", dataset=dataset, title=title)
    space.animate(
        traj.x_t, [viz.t_label(t) for t in traj.t[:-1]] + ["sample"], run_dir / "denoise.gif", dataset=dataset
    )
    return m


def write_schedules(timesteps: int, path: Path) -> None:
    """alpha_bar and log-SNR curves of every schedule at T = `timesteps`."""
    curves = {s: np.cumprod(1 - make_beta_schedule(s, timesteps)) for s in SCHEDULES}
    viz.plot_schedules(curves, path)


def write_report(run_dir: str | Path, *, progress: bool = True, device: str = "cpu") -> dict:
    """Write the run's pictures and metrics.json from its saved model; returns the metrics."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device)
    steps, losses = read_log(run_dir)
    if steps:
        viz.plot_loss(steps, losses, run_dir / "loss.png")
    data = build_dataset(run.cfg.data, seed=run.cfg.train.seed)
    write_forward(run.diffusion, data, run_dir / "forward.png", run.space)
    with torch.inference_mode():
        m = write_samples(run, run_dir, progress)
    metrics = {"step": run.step, "final_loss": losses[-1] if losses else None, **m}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def sample_paths(out: Path, gif: bool = False, trajectory: bool = False) -> list[Path]:
    """What `write_sample_files` writes: OUT.npz, OUT.png [, OUT_denoise.gif, OUT_trajectory.png]."""
    return [out, derived(out, ".png")] + [derived(out, "_denoise.gif")] * gif + [
        derived(out, "_trajectory.png")] * trajectory  # fmt: skip


def write_sample_files(
    run: LoadedRun,
    out: Path,
    n: int,
    options: SampleConfig,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    gif: bool = False,
    trajectory: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """n samples -> OUT.npz (arr_0, the data space's array) and OUT.png, plus OUT_denoise.gif and
    OUT_trajectory.png when asked; returns the samples and the paths written. `labels` (n,): each
    sample's class (a class-conditional run, guided by `options.guidance`), saved as the npz's
    `labels` and `class_names`."""
    from .denoiser import guidance_weight
    from .steer import class_names

    space, dataset = run.space, run.cfg.data.dataset
    record = _recorded(space, n, gif, trajectory)
    cond = None if labels is None else {"y": labels}
    x, traj = generate(run, n, options, seed=seed, batch_size=batch_size, cond=cond, record=record,
                       progress=progress, device=device)  # fmt: skip
    arr = space.to_data(x)
    buf = io.BytesIO()
    extra = {} if labels is None else {"labels": labels.numpy(), "class_names": np.array(class_names(run))}
    np.savez(buf, arr_0=arr, **extra)
    atomic_write_bytes(out, buf.getvalue())
    written = sample_paths(out, gif, trajectory)
    title = sample_title(run, options)
    if labels is not None:  # guided by the weight generate uses: the one given, else the default
        title += f", the data's class mix, w = {guidance_weight(options.guidance):g}"
    space.plot_samples(arr, written[1], dataset=dataset, title=title)
    _write_denoising(run, traj, written, gif, trajectory)
    return arr, written


def _recorded(space: DataSpace, n: int, gif: bool, trajectory: bool) -> int:
    """How many of n samples to record for the denoising pictures (none when none is asked for)."""
    return min(n, space.record_limit or n) if (gif or trajectory) else 0


def _write_denoising(
    run: LoadedRun, traj: Trajectory, written: list[Path], gif: bool, trajectory: bool
) -> None:
    """OUT_denoise.gif and OUT_trajectory.png (the paths `sample_paths` lists) of a recorded run."""
    if gif:
        labels = [viz.t_label(t) for t in traj.t[:-1]] + ["sample"]
        run.space.animate(traj.x_t, labels, written[2], dataset=run.cfg.data.dataset)
    if trajectory:
        _write_trajectory(run.space, traj, written[-1])


def sample_title(run: LoadedRun, options: SampleConfig) -> str:
    """What a samples picture shows: the run, its training step, the sampler and its steps, and the
    run that guides it (autoguidance) or the guidance interval when there are."""
    name = run.run_dir.name if run.run_dir is not None else run.cfg.data.dataset
    title = f"{name} (step {run.step}): {options.sampler}, {options.steps or 'all'} steps"
    if options.guide:
        title += f", guided by {Path(options.guide).name}"
    if options.guidance_interval:
        title += ", guided at sigma in ({:g}, {:g}]".format(*options.guidance_interval)
    return title


def write_class_samples(
    run: LoadedRun,
    out: Path,
    classes: list[int],
    n: int,
    options: SampleConfig,
    guidances: list[float | None],
    *,
    seed: int = 0,
    batch_size: int | None = None,
    gif: bool = False,
    trajectory: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """n samples of each class at each guidance weight -> OUT.npz (arr_0, `labels`, `guidance`)
    and OUT.png: one row per class, one column per guidance value (the same noise across a row's
    columns, so that only w changes); OUT_denoise.gif / OUT_trajectory.png when asked, of the
    first guidance weight's samples (as many as the data space records)."""
    from .denoiser import guidance_weight
    from .steer import check_guidance, class_names

    names, space = class_names(run), run.space
    y = torch.tensor(classes).repeat_interleave(n)
    ws = [guidance_weight(w, options.guidance) for w in guidances]
    arrs, traj = [], None
    for i, w in enumerate(ws):
        opts = dataclasses.replace(options, guidance=w)
        check_guidance(run, w)
        record = _recorded(space, len(y), gif, trajectory) if i == 0 else 0
        x, recorded = generate(run, len(y), opts, seed=seed, batch_size=batch_size, cond={"y": y},
                               record=record, progress=progress, device=device)  # fmt: skip
        traj = recorded if i == 0 else traj
        arrs.append(space.to_data(x))
    arr = np.concatenate(arrs)
    buf = io.BytesIO()
    np.savez(buf, arr_0=arr, labels=np.tile(y.numpy(), len(ws)), guidance=np.repeat(ws, len(y)),
             class_names=np.array(names))  # fmt: skip
    atomic_write_bytes(out, buf.getvalue())
    cells = [[a[r * n : (r + 1) * n] for a in arrs] for r in range(len(classes))]
    labelled = run.cfg.data.dataset in LABELLED_POINTS and space.data_kind == "points"
    refs = [[real_points(names[k], 2000) if labelled else None] * len(ws) for k in classes]
    png = derived(out, ".png")
    how = f"{options.sampler}, {options.steps or 'all'} steps"
    title = f"{how}, guidance w = {ws[0]:g}" if len(ws) == 1 else f"{how}: guidance sweep (s = 1 + w)"
    space.plot_table(cells, [names[k] for k in classes], [f"w = {w:g}" for w in ws], png, references=refs,
                     title=title)  # fmt: skip
    written = sample_paths(out, gif, trajectory)
    _write_denoising(run, traj, written, gif, trajectory)
    return arr, written


def _write_trajectory(space: DataSpace, traj: Trajectory, path: Path, frames: int = 8) -> None:
    """About `frames` evenly spaced frames of the recorded trajectory, the sample last."""
    idx = np.linspace(0, len(traj.t) - 1, min(frames, len(traj.t))).round().astype(int)
    titles = ["sample" if i == len(traj.t) - 1 else viz.t_label(traj.t[i], sep="") for i in idx]
    space.plot_trajectory([traj.x_t[i] for i in idx], [traj.x0_pred[i] for i in idx], titles, path)
