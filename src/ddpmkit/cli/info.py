"""`ddpm info`: a run's config and model size."""

from __future__ import annotations

from .common import RUN_DIR_HELP


def add_parser(sub, command) -> None:
    p = command(sub, "info", "print a run's config and model size")
    p.add_argument("run_dir", help=RUN_DIR_HELP)


def run(args) -> int:
    from ..models import count_parameters
    from ..run import load_run

    run = load_run(args.run_dir)
    print(run.cfg.to_json())
    images = f" (images {run.pixel_shape})" if run.pixel_shape != run.data_shape else ""
    print(
        f"data space: {run.space.name}, data shape: {run.data_shape}{images}, step: {run.step}, "
        f"parameters: {count_parameters(run.model):,}"
    )
    return 0
