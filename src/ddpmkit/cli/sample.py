"""`ddpm sample`: a trained run's samples (with --class: per class, a guidance sweep) -> .npz + .png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import samplers
from ..config import GRIDS, SAMPLERS
from ..errors import ConfigError
from ..threads import THREADS_HELP, set_threads
from .common import BATCH, COUNT, RUN_DIR_HELP, SEED, THREADS, add_class_options, floats, steps_or_all

_SAMPLER_HELP = "default: the run's (sample.sampler); one of\n" + samplers.describe()


def add_parser(sub, command) -> None:
    p = command(sub, "sample", "generate samples from a trained run")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("-n", type=COUNT, default=1000, help="number of samples (with --class: per class)")
    add_class_options(p)
    p.add_argument("--sampler", choices=tuple(SAMPLERS), metavar="NAME", help=_SAMPLER_HELP)
    p.add_argument(
        "--steps", type=steps_or_all, help="steps S <= T or 'all' (default: the run's); heun: 2S-1 calls"
    )
    p.add_argument("--grid", choices=GRIDS, help="time grid (default: the run's, else the sampler's own)")
    p.add_argument(
        "--threshold", type=float, metavar="P", help="images: dynamic thresholding at percentile P"
    )
    p.add_argument(
        "--eta", type=float, help="DDIM noise: 0 deterministic, 1 = DDPM variance (default: the run's)"
    )
    p.add_argument("--seed", type=SEED, default=0, help="the noise: one seed gives the same samples")
    p.add_argument(
        "--batch-size",
        type=BATCH,
        default=None,
        help="samples per model call (default: the run's data space's, else all)",
    )
    clip_help = "clip predicted x0 to the data range (default: the run's; on for images, off for points)"
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None, help=clip_help)
    p.add_argument("--out", default="samples.npz", help="output .npz (arr_0); a .png is written beside it")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.add_argument("--gif", action="store_true", help="also write an animation of the denoising")
    p.add_argument("--trajectory", action="store_true", help="images: panel of x_t and predicted x0")
    p.add_argument("--no-verify", action="store_true", help="load weights whose SHA-256 check fails")
    p.add_argument("--best", action="store_true", help="use the best-FID weights kept by --train.eval_every")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps; auto: cuda when available")
    p.add_argument("--threads", type=THREADS, default=0, help=THREADS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..api import sample_guidances, sample_notes, sample_options
    from ..checkpoint import load_config
    from ..outputs import claim
    from ..report import sample_paths, write_class_samples, write_sample_files
    from ..run import load_run
    from ..steer import check_guidance, class_indices, data_labels
    from ..training import resolve_device

    cfg = load_config(args.run_dir)  # a missing run is the first thing to say
    out = Path(args.out)
    if out.suffix.lower() != ".npz":  # the picture goes to OUT.png: a .png OUT would be overwritten
        raise ConfigError(f"--out names the samples .npz (the picture goes beside it as .png), got {out}")
    claim(sample_paths(out, args.gif, args.trajectory), overwrite=args.overwrite)
    set_threads(args.threads, small_work=cfg.model.kind == "mlp")
    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, got {args.n}")
    device = resolve_device(args.device)
    run = load_run(
        args.run_dir, device=device, weights="best.safetensors" if args.best else "model.safetensors",
        verify=not args.no_verify,
    )
    names = ("sampler", "steps", "grid", "eta", "clip", "threshold", "guidance_rescale", "guide",
             "guidance_interval")  # fmt: skip
    flags = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    weights = floats(args.guidance) if args.guidance is not None else None
    if weights is not None:
        flags["guidance"] = weights[0]
    options = sample_options(run.cfg, **flags)
    guidances = sample_guidances(options, weights)
    mix = args.cls is not None and args.cls.strip() == "data"  # labels in the data's class proportions
    if args.cls is None or mix:
        check_guidance(run, flags.get("guidance"), guide=options.guide)
    if mix and len(guidances) > 1:
        raise ConfigError("--class data draws one set of samples: give one --guidance value")
    for note in sample_notes(run.cfg, options, flags, classes=args.cls is not None):
        print(note, file=sys.stderr)
    if args.cls is None or mix:
        labels = data_labels(run, args.n, args.seed) if mix else None
        arr, written = write_sample_files(
            run, out, args.n, options, seed=args.seed, batch_size=args.batch_size, gif=args.gif,
            trajectory=args.trajectory, progress=not args.quiet, device=device, labels=labels,
        )  # fmt: skip
    else:
        arr, written = write_class_samples(
            run, out, class_indices(run, args.cls), args.n, options, guidances, seed=args.seed,
            batch_size=args.batch_size, gif=args.gif, trajectory=args.trajectory, progress=not args.quiet,
            device=device,
        )  # fmt: skip
    guided = (args.cls is not None or bool(options.guide)) and any(w != 0 for w in guidances)
    how = samplers.describe_options(options, run.diffusion.num_timesteps, guided)
    print(f"{len(arr)} samples {tuple(arr.shape)} {arr.dtype} ({how}) -> {', '.join(map(str, written))}")
    return 0
