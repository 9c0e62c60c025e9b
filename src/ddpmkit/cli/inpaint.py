"""`ddpm inpaint`: fill in a masked region of images (RePaint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import steering
from .common import COUNT


def add_parser(sub, command) -> None:
    p = command(sub, "inpaint", "fill in a masked region of images (RePaint)")
    steering.add_common(p)
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
    p.add_argument("--steps", type=COUNT, default=100, help="steps of the reverse process")
    p.add_argument("--jump-length", type=COUNT, default=10, help="RePaint: steps between resampling jumps")
    p.add_argument(
        "--resample",
        type=COUNT,
        default=5,
        help="RePaint: passes over each jump (1 = no resampling); ~steps x resample model calls",
    )
    p.add_argument("--out", default="inpainted.png", help="output .png (one image) or .npz (a batch)")


def run(args) -> int:
    from ..data.user_images import read_mask
    from ..samplers.repaint import repaint_nfe
    from ..steer import inpaint

    run = steering.load(args)
    u8, npz_mask = steering.images(run, args.image)
    fill = read_mask(args.mask, run.pixel_shape[1:]) if args.mask else npz_mask
    if fill is None:
        raise ConfigError("give --mask (left, right, top, bottom, center or a PNG)")
    fill_t = torch.from_numpy(np.broadcast_to(fill, (len(u8), *run.pixel_shape[1:])).copy())[:, None]
    x = inpaint(
        run,
        steering.to_model(run, u8),
        fill_t,
        steps=args.steps,
        jump_length=args.jump_length,
        resample=args.resample,
        cond=steering.cond(run, args, len(u8)),
        guidance=args.guidance,
        guide=args.guide or "",
        seed=args.seed,
        progress=not args.quiet,
    )
    out = run.space.to_data(x)
    shown = np.where(fill_t.permute(0, 2, 3, 1).numpy(), np.uint8(128), u8)
    written = steering.write(Path(args.out), out, {"mask": fill_t[:, 0].numpy()})
    calls = repaint_nfe(min(args.steps, run.diffusion.num_timesteps), args.jump_length, args.resample)
    rows = {"input": u8, "to fill (grey)": shown, "inpainted": out}
    written.append(steering.compare(run, rows, Path(args.out), f"RePaint, {calls} model calls per image"))
    print(f"inpainted {len(out)} image(s), {calls} model calls each -> {', '.join(map(str, written))}")
    return 0
