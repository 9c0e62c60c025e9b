"""`ddpm inpaint`, `ddpm edit` and `ddpm interpolate`: parse -> `ddpmkit.steer` -> files.

Images go in and out pixel for pixel: an input must have the run's size and mode, and the
completed or edited image is written losslessly (PNG) beside a before/after picture.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import torch

from .denoiser import DEFAULT_GUIDANCE
from .errors import ConfigError
from .outputs import derived
from .threads import THREADS_HELP, set_threads

_GUIDANCE = (
    "classifier-free guidance weight w (Ho & Salimans 2022, Eq. 6):\n"
    "  out = (1 + w) * model(x_t, class) - w * model(x_t, null)\n"
    "w = 0 is the plain conditional model; other libraries' 'guidance scale' is s = 1 + w. "
    "Each step then costs 2 model calls. "
)
_DEFAULT = f"(default: the run's, else {DEFAULT_GUIDANCE:g})"
GUIDANCE_HELP = _GUIDANCE + "Several values (0,1,3) draw a guidance sweep " + _DEFAULT  # ddpm sample
STEER_GUIDANCE_HELP = _GUIDANCE + "One value " + _DEFAULT  # inpaint, edit, interpolate


def floats(text: str) -> list[float]:
    """--guidance 0,0.5,1 -> [0.0, 0.5, 1.0]; ConfigError for anything but finite numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"expected finite numbers separated by commas, got {text!r}")
    return values


def add_class_options(p: argparse.ArgumentParser) -> None:
    """`ddpm sample`'s --class, --guidance W[,W...] and --guidance-rescale."""
    p.add_argument(
        "--class", dest="cls", metavar="C",
        help="class-conditional runs: a class index or name, several (3,5,sneaker) or 'all'; "
        "the picture has one row per class",
    )  # fmt: skip
    p.add_argument("--guidance", metavar="W[,W...]", help=GUIDANCE_HELP)
    p.add_argument(
        "--guidance-rescale", type=float, metavar="PHI",
        help="pull the guided output's std back to the conditional one's (Lin et al. 2024; 0.7 theirs)",
    )  # fmt: skip


def add_parsers(sub, command, guidance_help: str = STEER_GUIDANCE_HELP) -> None:
    """The three sub-commands; `command(sub, name, help)` makes a parser with ddpm's formatter."""
    p = command(sub, "inpaint", "fill in a masked region of images (RePaint)")
    _common(p, guidance_help)
    p.add_argument(
        "--image",
        required=True,
        help="the image (PNG of the run's size and mode) or a batch .npz "
        "(arr_0 uint8 (N, H, W[, C]), optional 'mask' array)",
    )
    p.add_argument(
        "--mask",
        help="region to fill in: left, right, top, bottom, center, or a PNG of the image's "
        "size (white = fill in, black = keep); default: the .npz's own mask",
    )
    p.add_argument("--steps", type=int, default=100, help="steps of the reverse process")
    p.add_argument("--jump-length", type=int, default=10, help="RePaint: steps between resampling jumps")
    p.add_argument(
        "--resample",
        type=int,
        default=5,
        help="RePaint: passes over each jump (1 = no resampling); ~steps x resample model calls",
    )
    p.add_argument("--out", default="inpainted.png", help="output .png (one image) or .npz (a batch)")
    p = command(sub, "edit", "image-to-image: noise an image part of the way and denoise it (SDEdit)")
    _common(p, guidance_help)
    p.add_argument(
        "--image", required=True, help="the image (PNG of the run's size and mode) or a batch .npz"
    )
    p.add_argument(
        "--strength",
        type=float,
        default=0.5,
        help="fraction of the noise level to start from: 0 returns the input, 1 draws a fresh "
        "sample; the run's sampler then takes its full --steps over that part of the way, "
        "so the model calls do not shrink with the strength (printed)",
    )
    p.add_argument("--sampler", help="default: the run's")
    p.add_argument("--steps", type=int, help="default: the run's")
    p.add_argument("--out", default="edited.png", help="output .png (one image) or .npz (a batch)")
    p = command(sub, "interpolate", "a strip of samples between two noises (two seeds or two images)")
    _common(p, guidance_help)
    p.add_argument("--seeds", default="0,1", help="two seeds A,B whose noises are interpolated")
    p.add_argument("--images", help="two images A.png,B.png, inverted to noise with DDIM")
    p.add_argument("--frames", type=int, default=8, help="pictures in the strip, both ends included")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's)")
    p.add_argument(
        "--out", default="interpolation.png", help="the strip picture; frames go to the .npz beside it"
    )


def _common(p: argparse.ArgumentParser, guidance_help: str) -> None:
    p.add_argument("run_dir", help="run directory written by `ddpm train`")
    p.add_argument("--class", dest="cls", metavar="C", help="class-conditional runs: a class index or name")
    p.add_argument("--guidance", type=float, metavar="W", help=guidance_help)
    p.add_argument("--seed", type=int, default=0, help="the noise: one seed gives the same result")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.add_argument("--no-verify", action="store_true", help="skip the weights' SHA-256 check")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _load(args):
    from .checkpoint import load_config
    from .outputs import claim
    from .run import check_samples, load_run
    from .steer import check_can_inpaint

    load_config(args.run_dir)  # a missing run is the first thing to say
    out = Path(args.out)
    if args.command == "interpolate":  # the strip picture, frames in OUT.npz
        if out.suffix.lower() != ".png":
            raise ConfigError(f"--out names the strip picture (.png; the frames go beside it as .npz): {out}")
        claim([out, out.with_suffix(".npz")], overwrite=args.overwrite)
    else:
        claim([out, derived(out, "_compare.png")], overwrite=args.overwrite)
    set_threads(args.threads)
    run = load_run(args.run_dir, verify=not args.no_verify)
    check_samples(run)
    if run.space.data_kind != "images":
        raise ConfigError(f"ddpm {args.command} works on image runs; {args.run_dir} draws {run.space.name}")
    if args.command == "inpaint":  # the reason before any input is read
        check_can_inpaint(run)
    return run


def _cond(run, args, n: int) -> dict | None:
    from .steer import class_index

    if args.cls is None:
        if args.guidance:
            raise ConfigError("--guidance needs --class (the class to guide towards)")
        return None
    return {"y": torch.full((n,), class_index(run, args.cls), dtype=torch.long)}


def _images(run, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file, or a batch .npz (arr_0 uint8 (N, H, W[, C]); optional `mask`)."""
    from .data.user_images import check_batch, read_image
    from .eval.images import load_samples_npz

    if Path(path).suffix.lower() != ".npz":
        return read_image(path, run.pixel_shape), None
    arr, _ = load_samples_npz(path)
    with np.load(path, allow_pickle=False) as npz:
        mask = npz["mask"] if "mask" in npz.files else None
    return check_batch(arr, mask, run.pixel_shape, path)


def _to_model(run, u8: np.ndarray) -> torch.Tensor:
    return run.space.to_model(torch.from_numpy(np.array(u8)).permute(0, 3, 1, 2).contiguous())


def _write(out: Path, arr: np.ndarray, extra: dict | None = None) -> list[Path]:
    """One image -> a lossless PNG; a batch -> .npz (arr_0 and `extra`)."""
    from . import viz
    from .io import atomic_write_bytes

    if out.suffix.lower() == ".npz":
        buf = io.BytesIO()
        np.savez(buf, arr_0=arr, **(extra or {}))
        atomic_write_bytes(out, buf.getvalue())
        return [out]
    if len(arr) != 1:
        raise ConfigError(f"{len(arr)} images need an .npz output, not {out.name}")
    viz.save_image(arr[0], out)
    return [out]


def _compare(run, rows: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Rows = stages (before, mask, after ...), columns = the first 8 images."""
    k = min(8, len(next(iter(rows.values()))))
    cells = [[a[i : i + 1] for i in range(k)] for a in rows.values()]
    run.space.plot_table(cells, list(rows), [""] * k, path, title=title)
    return path


def cmd_inpaint(args) -> int:
    from .data.user_images import read_mask
    from .samplers.repaint import repaint_nfe
    from .steer import inpaint

    run = _load(args)
    u8, npz_mask = _images(run, args.image)
    fill = read_mask(args.mask, run.pixel_shape[1:]) if args.mask else npz_mask
    if fill is None:
        raise ConfigError("give --mask (left, right, top, bottom, center or a PNG)")
    fill_t = torch.from_numpy(np.broadcast_to(fill, (len(u8), *run.pixel_shape[1:])).copy())[:, None]
    x = inpaint(
        run,
        _to_model(run, u8),
        fill_t,
        steps=args.steps,
        jump_length=args.jump_length,
        resample=args.resample,
        cond=_cond(run, args, len(u8)),
        guidance=args.guidance,
        seed=args.seed,
        progress=not args.quiet,
    )
    out = run.space.to_data(x)
    shown = np.where(fill_t.permute(0, 2, 3, 1).numpy(), np.uint8(128), u8)
    written = _write(Path(args.out), out, {"mask": fill_t[:, 0].numpy()})
    calls = repaint_nfe(min(args.steps, run.diffusion.num_timesteps), args.jump_length, args.resample)
    written.append(
        _compare(
            run,
            {"input": u8, "to fill (grey)": shown, "inpainted": out},
            derived(Path(args.out), "_compare.png"),
            f"RePaint, {calls} model calls per image",
        )
    )
    print(f"inpainted {len(out)} image(s), {calls} model calls each -> {', '.join(map(str, written))}")
    return 0


def cmd_edit(args) -> int:
    from .api import sample_options
    from .steer import check_guidance, edit, edit_model_calls

    run = _load(args)
    check_guidance(run, args.guidance)
    u8, _ = _images(run, args.image)
    flags = {k: getattr(args, k) for k in ("sampler", "steps", "guidance") if getattr(args, k) is not None}
    options = sample_options(run.cfg, **flags)
    x = edit(
        run,
        _to_model(run, u8),
        args.strength,
        options,
        cond=_cond(run, args, len(u8)),
        seed=args.seed,
        progress=not args.quiet,
    )
    out = run.space.to_data(x)
    calls = edit_model_calls(run, args.strength, options, guided=args.cls is not None)
    written = _write(Path(args.out), out)
    written.append(
        _compare(
            run,
            {"input": u8, f"strength {args.strength:g}": out},
            derived(Path(args.out), "_compare.png"),
            f"SDEdit, {calls} model calls per image",
        )
    )
    print(
        f"edited {len(out)} image(s) at strength {args.strength:g}, {calls} model calls each -> "
        f"{', '.join(map(str, written))}"
    )
    return 0


def cmd_interpolate(args) -> int:
    from .steer import interpolate

    run = _load(args)
    if args.images:
        paths = [p for p in args.images.split(",") if p.strip()]
        if len(paths) != 2:
            raise ConfigError(f"--images takes two images A,B, got {len(paths)}")
        ends = tuple(_to_model(run, _images(run, p)[0][:1]) for p in paths)
        seeds = (0, 1)
    else:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise ConfigError(f"--seeds takes two integers A,B, got {args.seeds!r}") from None
        if len(seeds) != 2:
            raise ConfigError(f"--seeds takes two integers A,B, got {args.seeds!r}")
        ends = None
    x = interpolate(
        run,
        args.frames,
        seeds=seeds,
        images=ends,
        steps=args.steps,
        cond=_cond(run, args, args.frames),
        guidance=args.guidance,
        progress=not args.quiet,
    )
    arr = run.space.to_data(x)
    out = Path(args.out)
    npz = _write(out.with_suffix(".npz"), arr)
    ends_txt = (
        " and ".join(Path(p).name for p in paths) if args.images else f"seeds {seeds[0]} and {seeds[1]}"
    )
    run.space.plot_table(
        [[arr[i : i + 1] for i in range(len(arr))]],
        [""],
        [f"{i / (len(arr) - 1):.2f}" for i in range(len(arr))],
        out,
        title=f"spherical interpolation between {ends_txt}",
    )
    print(f"{len(arr)} frames -> {out}, {npz[0]}")
    return 0


COMMANDS = {"inpaint": cmd_inpaint, "edit": cmd_edit, "interpolate": cmd_interpolate}
