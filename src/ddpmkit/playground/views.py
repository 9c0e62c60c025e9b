"""What the playground's pages show, computed from a trained run: plain functions that return
JSON-ready data (points as lists, images as PNG data URLs). The server only routes to them."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TASKS
from ..data import SPACES
from ..errors import DdpmkitError
from ..run import LoadedRun, generate

IMAGE_SPACES = {name for name, cls in SPACES.items() if cls.data_kind == "images"}


def _round(a: np.ndarray, digits: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def training_points(run: LoadedRun, n: int = 1000, seed: int = 0) -> np.ndarray:
    """n points of the run's training distribution, in its own coordinates."""
    from ..data.spaces import real_points

    return real_points(run.cfg.data.dataset, n, seed)


def forward(run: LoadedRun, t: int, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The data noised by q(x_t | x_0) at timestep t (0-based), shown in data coordinates."""
    from ..report import noised

    t = int(np.clip(t, 0, run.diffusion.num_timesteps - 1))
    x0 = run.space.to_model(training_points(run, n, seed))
    xt = noised(run.diffusion, x0, t, seed)
    return {
        "t": t,
        "alpha_bar": float(run.diffusion.alphas_cumprod[t]),
        "points": _round(run.space.to_data(xt)),
    }


def reverse(run: LoadedRun, sampler: str, steps: int, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every step of the reverse process for n points: x_t and the x0 predicted from it."""
    steps = int(np.clip(steps, 1, run.diffusion.num_timesteps))
    with torch.inference_mode():
        _, traj = generate(run, n, seed=seed, record=n, record_frames=steps, progress=False, sampler=sampler,
                           steps=steps)  # fmt: skip
    return {
        "t": [int(t) for t in traj.t],
        "x_t": [_round(run.space.to_data(f), 3) for f in traj.x_t],
        "x0": [_round(run.space.to_data(f), 3) for f in traj.x0_pred],
    }


def field(run: LoadedRun, t: int, size: int = 21) -> dict[str, Any]:
    """The model's denoising direction (predicted x0 - x_t) on a size x size grid at timestep t."""
    t = int(np.clip(t, 0, run.diffusion.num_timesteps - 1))
    data = training_points(run, 2000)
    lo, hi = data.min(0) - 0.5 * data.std(0), data.max(0) + 0.5 * data.std(0)
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size))
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    x = run.space.to_model(grid)
    tt = torch.full((len(x),), t, dtype=torch.long)
    with torch.inference_mode():
        out, _ = run.diffusion.split_output(run.diffusion.model_output(run.model, x, tt))
        x0 = run.diffusion.predict_x0(x, tt, out)
    return {"t": t, "grid": _round(grid, 3), "x0": _round(run.space.to_data(x0), 3)}


def distance(run: LoadedRun, sampler: str | None = None, steps: int | None = None, n: int = 2000) -> dict:
    """SW1 of n samples to the data, with its noise floor (two real draws) and their ratio."""
    from ..eval import score_report

    options = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v}
    with torch.inference_mode():
        x, _ = generate(run, n, seed=1, progress=False, **options)
    return score_report(run.space, run.space.to_data(x), run.cfg.data.dataset)


def png_grid(u8: np.ndarray) -> str:
    """uint8 (N, H, W, C) images -> a data URL of their grid."""
    from .. import viz

    buf = io.BytesIO()
    viz.grid_image(u8).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_trajectory(
    run: LoadedRun,
    n: int,
    sampler: str,
    steps: int,
    cls: str | None,
    guidance: float | None,
    seed: int = 0,
    guide: str = "",
) -> dict[str, Any]:
    """A grid of n samples and its reverse trajectory (x_t and predicted x0 per step) as PNGs; guided
    towards the class `cls` (classifier-free), or away from the weaker run `guide` (autoguidance)."""
    from ..steer import check_guidance, class_index

    cond = None
    if cls not in (None, ""):
        cond = {"y": torch.full((n,), class_index(run, cls), dtype=torch.long)}
    guided = bool(cond) or bool(guide)  # unconditional samples ignore a weight without a weak run
    check_guidance(run, guidance if guided else None, guide=guide)
    opts = {
        "sampler": sampler,
        "steps": steps,
        "guide": guide,
        **({"guidance": guidance} if guided and guidance is not None else {}),
    }
    with torch.inference_mode():
        _, traj = generate(
            run, n, seed=seed, record=n, record_frames=steps, progress=False, cond=cond, **opts
        )
    return {
        "t": [int(t) for t in traj.t],
        "x_t": [png_grid(run.space.to_data(f)) for f in traj.x_t],
        "x0": [png_grid(run.space.to_data(f)) for f in traj.x0_pred],
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Image run directories under `root` (one level deep, and root itself), with their classes."""
    from ..checkpoint import CONFIG, MODEL, load_config
    from ..io import read_metadata

    out = []
    for d in sorted({root, *(p for p in root.iterdir() if p.is_dir())} if root.is_dir() else []):
        if not ((d / CONFIG).is_file() and (d / MODEL).is_file()):
            continue
        try:
            if read_metadata(d / MODEL).get("space") not in IMAGE_SPACES:
                continue
            cfg = load_config(d)
        except DdpmkitError:  # a broken run is simply not listed
            continue
        if not TASKS[cfg.train.task].samples:  # an autoencoder run
            continue
        out.append({"path": str(d), "dataset": cfg.data.dataset, "classes": list(cfg.data.class_names),
                    "sampler": cfg.sample.sampler, "steps": cfg.sample.steps})  # fmt: skip
    return out
