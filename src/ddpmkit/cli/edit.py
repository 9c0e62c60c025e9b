"""`ddpm edit`: image-to-image, noise an image part of the way and denoise it (SDEdit)."""

from __future__ import annotations

from pathlib import Path

from . import steering
from .common import COUNT


def add_parser(sub, command) -> None:
    p = command(sub, "edit", "image-to-image: noise an image part of the way and denoise it (SDEdit)")
    steering.add_common(p)
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
    p.add_argument("--steps", type=COUNT, help="default: the run's")
    p.add_argument("--out", default="edited.png", help="output .png (one image) or .npz (a batch)")


def run(args) -> int:
    from ..api import sample_options
    from ..steer import check_guidance, edit, edit_model_calls

    run = steering.load(args)
    check_guidance(run, args.guidance, guide=args.guide or "")
    u8, _ = steering.images(run, args.image)
    names = ("sampler", "steps", "guidance", "guide")
    flags = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    options = sample_options(run.cfg, **flags)
    x = edit(
        run,
        steering.to_model(run, u8),
        args.strength,
        options,
        cond=steering.cond(run, args, len(u8)),
        seed=args.seed,
        progress=not args.quiet,
    )
    out = run.space.to_data(x)
    calls = edit_model_calls(run, args.strength, options, guided=args.cls is not None or bool(args.guide))
    written = steering.write(Path(args.out), out)
    rows = {"input": u8, f"strength {args.strength:g}": out}
    written.append(steering.compare(run, rows, Path(args.out), f"SDEdit, {calls} model calls per image"))
    print(
        f"edited {len(out)} image(s) at strength {args.strength:g}, {calls} model calls each -> "
        f"{', '.join(map(str, written))}"
    )
    return 0
