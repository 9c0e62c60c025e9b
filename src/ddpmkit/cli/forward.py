"""`ddpm forward`: pictures of a dataset's forward process and of the beta schedules."""

from __future__ import annotations

from pathlib import Path

from ..config import SCHEDULES
from ..errors import ConfigError


def add_parser(sub, command) -> None:
    p = command(sub, "forward", "pictures of the forward process and of the schedules")
    p.add_argument("--dataset", default="dino", help="a points or image dataset (as for `ddpm train`)")
    p.add_argument("--data-dir", help="folder of the dataset's files (MNIST, Fashion-MNIST, ...)")
    p.add_argument("--image-size", type=int, help="images: side in pixels (default: the dataset's)")
    p.add_argument("--schedule", choices=SCHEDULES, help="default: the dataset's preset's")
    p.add_argument("-T", "--timesteps", type=int, help="default: the dataset's preset's")
    p.add_argument("--out", default="forward", help="output folder (forward.png, schedules.png)")


def run(args) -> int:
    from ..checkpoint import check_writable
    from ..config import DataConfig, RunConfig
    from ..data import build_dataset, preset_for
    from ..diffusion import GaussianDiffusion
    from ..report import write_forward, write_schedules
    from ..schedules import make_beta_schedule

    diffusion_cfg = RunConfig.from_preset(preset_for(args.dataset)).diffusion  # the dataset's recipe
    schedule, timesteps = args.schedule or diffusion_cfg.schedule, args.timesteps or diffusion_cfg.timesteps
    if timesteps < 1:
        raise ConfigError(f"T must be >= 1, got {timesteps}")
    out = Path(args.out)
    check_writable(out)
    data = build_dataset(DataConfig(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size))
    diffusion = GaussianDiffusion(make_beta_schedule(schedule, timesteps))
    out.mkdir(parents=True, exist_ok=True)
    write_forward(diffusion, data, out / "forward.png")
    write_schedules(timesteps, out / "schedules.png")
    print(f"wrote {out / 'forward.png'} ({schedule} schedule, T = {timesteps}) and {out / 'schedules.png'}")
    return 0
