"""What `ddpm inpaint`, `ddpm edit` and `ddpm interpolate` share: their common options, loading the
run, the class condition, reading and writing images.

Images go in and out pixel for pixel: an input must have the run's size and mode, and the
completed or edited image is written losslessly (PNG) beside a before/after picture.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..outputs import derived
from ..threads import THREADS_HELP, set_threads
from .common import RUN_DIR_HELP, SEED, STEER_GUIDANCE_HELP, THREADS


def add_common(p: argparse.ArgumentParser) -> None:
    """The options of all three: the run, the class and guidance, seed, threads, outputs."""
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--class", dest="cls", metavar="C", help="class-conditional runs: a class index or name")
    p.add_argument("--guidance", type=float, metavar="W", help=STEER_GUIDANCE_HELP)
    p.add_argument("--guide", metavar="RUN",
                   help="autoguidance (Karras et al. 2024): guide with this weaker run of the same data and "
                   "process at weight --guidance; needs no --class")  # fmt: skip
    p.add_argument("--seed", type=SEED, default=0, help="the noise: one seed gives the same result")
    p.add_argument("--threads", type=THREADS, default=0, help=THREADS_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.add_argument("--no-verify", action="store_true", help="skip the weights' SHA-256 check")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def load(args):
    """The run, once its outputs are claimed; ConfigError for a run these commands cannot steer."""
    from ..checkpoint import load_config
    from ..outputs import check_image_output, claim
    from ..run import check_samples, load_run
    from ..steer import check_can_inpaint

    load_config(args.run_dir)  # a missing run is the first thing to say
    out = Path(args.out)
    if args.command == "interpolate":  # the strip picture, frames in OUT.npz
        if out.suffix.lower() != ".png":
            raise ConfigError(f"--out names the strip picture (.png; the frames go beside it as .npz): {out}")
        claim([out, out.with_suffix(".npz")], overwrite=args.overwrite)
    else:  # inpaint keeps the known pixels bit for bit: a lossy format would not
        check_image_output(out, lossless=args.command == "inpaint", npz=True)
        claim([out, derived(out, "_compare.png")], overwrite=args.overwrite)
    set_threads(args.threads)
    run = load_run(args.run_dir, verify=not args.no_verify)
    check_samples(run)
    if run.space.data_kind != "images":
        raise ConfigError(f"ddpm {args.command} works on image runs; {args.run_dir} draws {run.space.name}")
    if args.command == "inpaint":  # the reason before any input is read
        check_can_inpaint(run)
    return run


def cond(run, args, n: int) -> dict | None:
    """The model's condition for n images of --class (None without one)."""
    from ..steer import class_index

    if args.cls is None:
        if args.guidance and not args.guide:
            raise ConfigError("--guidance needs --class (the class to guide towards) or --guide (a weaker "
                              "run to guide away from)")
        return None
    return {"y": torch.full((n,), class_index(run, args.cls), dtype=torch.long)}


def images(run, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file, or a batch .npz (arr_0 uint8 (N, H, W[, C]); optional `mask`)."""
    from ..data.user_images import check_batch, read_image
    from ..eval.sample_files import load_samples_npz

    if Path(path).suffix.lower() != ".npz":
        return read_image(path, run.pixel_shape), None
    arr, _ = load_samples_npz(path)
    with np.load(path, allow_pickle=False) as npz:
        mask = npz["mask"] if "mask" in npz.files else None
    return check_batch(arr, mask, run.pixel_shape, path)


def to_model(run, u8: np.ndarray) -> torch.Tensor:
    return run.space.to_model(torch.from_numpy(np.array(u8)).permute(0, 3, 1, 2).contiguous())


def write(out: Path, arr: np.ndarray, extra: dict | None = None) -> list[Path]:
    """One image -> a lossless PNG; a batch -> .npz (arr_0 and `extra`)."""
    from .. import viz
    from ..io import atomic_write_bytes

    if out.suffix.lower() == ".npz":
        buf = io.BytesIO()
        np.savez(buf, arr_0=arr, **(extra or {}))
        atomic_write_bytes(out, buf.getvalue())
        return [out]
    if len(arr) != 1:
        raise ConfigError(f"{len(arr)} images need an .npz output, not {out.name}")
    viz.save_image(arr[0], out)
    return [out]


def compare(run, rows: dict[str, np.ndarray], out: Path, title: str) -> Path:
    """OUT_compare.png: rows = stages (before, mask, after ...), columns = the first 8 images."""
    path = derived(out, "_compare.png")
    k = min(8, len(next(iter(rows.values()))))
    cells = [[a[i : i + 1] for i in range(k)] for a in rows.values()]
    run.space.plot_table(cells, list(rows), [""] * k, path, title=title)
    return path
