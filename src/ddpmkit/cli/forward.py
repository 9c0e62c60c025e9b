"""`ddpm forward`: pictures of a dataset's forward process and of the beta schedules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import SCHEDULES
from .common import COUNT, SIDE


def add_parser(sub, command) -> None:
    p = command(sub, "forward", "pictures of the forward process and of the schedules")
    p.add_argument("--dataset", default="dino", help="a points or image dataset (as for `ddpm train`)")
    p.add_argument("--data-dir", help="folder of the dataset's files (MNIST, Fashion-MNIST, ...)")
    p.add_argument("--image-size", type=SIDE, help="images: side in pixels (default: the dataset's)")
    p.add_argument("--schedule", choices=SCHEDULES, help="default: the dataset's preset's")
    p.add_argument("-T", "--timesteps", type=COUNT, help="default: the dataset's preset's")
    p.add_argument("--out", default="forward", help="output folder (forward.png, schedules.png)")
    p.add_argument("--overwrite", action="store_true", help="replace forward.png / schedules.png there")


def run(args) -> int:
    from ..checkpoint import check_writable
    from ..config import DataConfig, RunConfig
    from ..data import build_dataset, preset_for
    from ..diffusion import GaussianDiffusion
    from ..outputs import claim
    from ..report import write_forward, write_schedules
    from ..schedules import make_beta_schedule

    recipe = RunConfig.from_preset(preset_for(args.dataset)).diffusion  # the dataset's recipe
    flags = {k: v for k, v in (("schedule", args.schedule), ("timesteps", args.timesteps)) if v is not None}
    diffusion_cfg = dataclasses.replace(recipe, **flags)  # validated as any config: T in 1..MAX_TIMESTEPS
    schedule, timesteps = diffusion_cfg.schedule, diffusion_cfg.timesteps
    out = Path(args.out)
    check_writable(out)
    if out.is_dir():  # pictures already there (or a run's own forward.png) are not replaced unasked
        claim([out / "forward.png", out / "schedules.png"], overwrite=args.overwrite)
    data = build_dataset(DataConfig(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size))
    diffusion = GaussianDiffusion(make_beta_schedule(schedule, timesteps))
    out.mkdir(parents=True, exist_ok=True)
    write_forward(diffusion, data, out / "forward.png")
    write_schedules(timesteps, out / "schedules.png")
    print(f"wrote {out / 'forward.png'} ({schedule} schedule, T = {timesteps}) and {out / 'schedules.png'}")
    return 0
