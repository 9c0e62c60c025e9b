"""`ddpm interpolate`: a strip of samples between two noises (two seeds, or two images inverted with DDIM)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from . import steering
from .common import COUNT, bounded


def add_parser(sub, command) -> None:
    p = command(sub, "interpolate", "a strip of samples between two noises (two seeds or two images)")
    steering.add_common(p)
    p.add_argument("--seeds", default="0,1", help="two seeds A,B whose noises are interpolated")
    p.add_argument("--images", help="two images A.png,B.png, inverted to noise with DDIM")
    p.add_argument(
        "--frames", type=bounded(2, 10**4), default=8, help="pictures in the strip, both ends included"
    )
    p.add_argument("--steps", type=COUNT, help="DDIM steps (default: the run's)")
    p.add_argument(
        "--out", default="interpolation.png", help="the strip picture; frames go to the .npz beside it"
    )


def run(args) -> int:
    from ..steer import interpolate

    run = steering.load(args)
    if args.images:
        paths = [p for p in args.images.split(",") if p.strip()]
        if len(paths) != 2:
            raise ConfigError(f"--images takes two images A,B, got {len(paths)}")
        ends = tuple(steering.to_model(run, steering.images(run, p)[0][:1]) for p in paths)
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
        cond=steering.cond(run, args, args.frames),
        guidance=args.guidance,
        guide=args.guide or "",
        progress=not args.quiet,
    )
    arr = run.space.to_data(x)
    out = Path(args.out)
    npz = steering.write(out.with_suffix(".npz"), arr)
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
