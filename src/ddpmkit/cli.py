"""The `ddpm` command line: parse -> config -> one library call -> say where outputs went.

Bad input (a value, a path, a file) gets one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_steer, cli_train, samplers  # samplers fills the SAMPLERS registry
from .cli_steer import floats
from .config import GRIDS, SAMPLERS, SCHEDULES
from .denoiser import guidance_weight
from .errors import ConfigError, DdpmkitError
from .threads import THREADS_HELP, set_threads


class Parser(argparse.ArgumentParser):
    """Bad usage gets one line (not the whole usage) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None (the help text says what happens then)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)

    def _split_lines(self, text, width):  # keep the line breaks of tables in help texts
        split = super()._split_lines
        return [line for part in text.splitlines() for line in split(part, width)]


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, formatter_class=HelpFormatter)


def _steps(value: str) -> int | str:
    """--steps N, or "all" for every one of the model's T steps."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


def cmd_sample(args) -> int:
    from .api import sample_options
    from .checkpoint import load_config
    from .outputs import claim
    from .report import sample_paths, write_class_samples, write_sample_files
    from .run import load_run
    from .steer import check_guidance, class_indices
    from .training import resolve_device

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
        args.run_dir, device=device, weights="best.safetensors" if args.best else "model.safetensors"
    )
    names = ("sampler", "steps", "grid", "eta", "clip", "threshold", "guidance_rescale")
    flags = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.guidance is not None:
        flags["guidance"] = floats(args.guidance)[0]
    options = sample_options(run.cfg, **flags)
    guidances = floats(args.guidance) if args.guidance is not None else [guidance_weight(options.guidance)]
    if args.eta is not None and "eta" not in samplers.sampler_options(options.sampler, options):
        print(f"note: --eta is ignored by the {options.sampler} sampler", file=sys.stderr)
    if note := samplers.variance_note(options.sampler, run.cfg.diffusion.variance):
        print(note, file=sys.stderr)
    if args.cls is None:
        check_guidance(run, flags.get("guidance"))
        if args.guidance is not None:
            print("note: --guidance steers towards a class: add --class (without it, unconditional "
                  "samples)", file=sys.stderr)  # fmt: skip
        arr, written = write_sample_files(
            run, out, args.n, options, seed=args.seed, batch_size=args.batch_size, gif=args.gif,
            trajectory=args.trajectory, progress=not args.quiet, device=device,
        )  # fmt: skip
    else:
        arr, written = write_class_samples(
            run, out, class_indices(run, args.cls), args.n, options, guidances, seed=args.seed,
            batch_size=args.batch_size, gif=args.gif, trajectory=args.trajectory, progress=not args.quiet,
            device=device,
        )  # fmt: skip
    guided = args.cls is not None and any(w != 0 for w in guidances)
    how = samplers.describe_options(options, run.diffusion.num_timesteps, guided)
    print(f"{len(arr)} samples {tuple(arr.shape)} {arr.dtype} ({how}) -> {', '.join(map(str, written))}")
    return 0


def cmd_forward(args) -> int:
    from .checkpoint import check_writable
    from .config import DataConfig, RunConfig
    from .data import build_dataset, preset_for
    from .diffusion import GaussianDiffusion
    from .report import write_forward, write_schedules
    from .schedules import make_beta_schedule

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


def cmd_info(args) -> int:
    from .models import count_parameters
    from .run import load_run

    run = load_run(args.run_dir)
    print(run.cfg.to_json())
    images = f" (images {run.pixel_shape})" if run.pixel_shape != run.data_shape else ""
    print(
        f"data space: {run.space.name}, data shape: {run.data_shape}{images}, step: {run.step}, "
        f"parameters: {count_parameters(run.model):,}"
    )
    return 0


def cmd_playground(args) -> int:
    from .playground import serve

    serve(args.host, args.port, args.runs)
    return 0


def cmd_train_classifier(args) -> int:
    from .eval.classifier import train_classifier

    set_threads(args.threads)
    info = train_classifier(
        args.dataset,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        image_size=args.image_size,
        channels=args.channels,
        max_train_images=args.train_images,
        max_test_images=args.test_images,
        progress=not args.quiet,
    )
    print(
        f"{args.dataset}: test accuracy {100 * info['test_accuracy']:.2f}% in {info['seconds']:.0f} s; "
        f"cached in {info['path']}"
    )
    return 0


def cmd_eval(args) -> int:
    set_threads(args.threads)
    if args.nll:
        from .eval.likelihood import format_nll, test_set_nll

        result = test_set_nll(args.nll, subset=args.subset, batch_size=args.batch_size,
                              t_stride=args.t_stride, seed=args.seed, progress=not args.quiet)  # fmt: skip
        table = format_nll(result)
    elif not args.samples:
        raise ConfigError("give a samples .npz to evaluate (or --nll RUN_DIR)")
    else:
        from .eval import evaluate_samples_file, format_result

        if args.nearest:
            from .outputs import claim

            if Path(args.nearest).suffix.lower() != ".png":
                raise ConfigError(f"--nearest names a .png picture, got {args.nearest}")
            claim([Path(args.nearest)], overwrite=args.overwrite)
        result = evaluate_samples_file(
            args.samples, args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
            inception_weights=args.inception_weights, seed=args.seed, progress=not args.quiet,
            copies=args.copies, nearest_picture=args.nearest,
        )  # fmt: skip
        table = format_result(result)
    print(json.dumps(result, indent=2) if args.json else table)
    return 0


_SAMPLER_HELP = "default: the run's (sample.sampler); one of\n" + samplers.describe()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ddpm", description="Denoising Diffusion Probabilistic Models for 2-D points and small images."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    cli_train.add_parser(sub, _command)
    cli_train.add_parser(sub, _command, "train-autoencoder")
    p = _command(sub, "sample", "generate samples from a trained run")
    p.add_argument("run_dir", help="run directory written by `ddpm train`")
    p.add_argument("-n", type=int, default=1000, help="number of samples (with --class: per class)")
    cli_steer.add_class_options(p)
    p.add_argument("--sampler", choices=tuple(SAMPLERS), metavar="NAME", help=_SAMPLER_HELP)
    p.add_argument(
        "--steps", type=_steps, help="steps S <= T or 'all' (default: the run's); heun: 2S-1 calls"
    )
    p.add_argument("--grid", choices=GRIDS, help="time grid (default: the run's, else the sampler's own)")
    p.add_argument(
        "--threshold", type=float, metavar="P", help="images: dynamic thresholding at percentile P"
    )
    p.add_argument(
        "--eta", type=float, help="DDIM noise: 0 deterministic, 1 = DDPM variance (default: the run's)"
    )
    p.add_argument("--seed", type=int, default=0, help="the noise: one seed gives the same samples")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per model call (default: the run's data space's, else all)",
    )
    clip_help = "clip predicted x0 to the data range (default: the run's; on for images, off for points)"
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None, help=clip_help)
    p.add_argument("--out", default="samples.npz", help="output .npz (arr_0); a .png is written beside it")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.add_argument("--gif", action="store_true", help="also write an animation of the denoising")
    p.add_argument("--trajectory", action="store_true", help="images: panel of x_t and predicted x0")
    p.add_argument("--best", action="store_true", help="use the best-FID weights kept by --train.eval_every")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps; auto: cuda when available")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = _command(sub, "forward", "pictures of the forward process and of the schedules")
    p.add_argument("--dataset", default="dino", help="a points or image dataset (as for `ddpm train`)")
    p.add_argument("--data-dir", help="folder of the dataset's files (MNIST, Fashion-MNIST, ...)")
    p.add_argument("--image-size", type=int, help="images: side in pixels (default: the dataset's)")
    p.add_argument("--schedule", choices=SCHEDULES, help="default: the dataset's preset's")
    p.add_argument("-T", "--timesteps", type=int, help="default: the dataset's preset's")
    p.add_argument("--out", default="forward", help="output folder (forward.png, schedules.png)")
    p = _command(sub, "eval", "score samples (FID, precision/recall, ...) or a model's NLL")
    p.add_argument("samples", nargs="?", help=".npz from `ddpm sample` (arr_0)")
    p.add_argument("--dataset", default="mnist", help="the real data to compare with")
    p.add_argument("--data-dir", help="folder of the dataset's files")
    p.add_argument(
        "--cache-dir", help="classifier cache (default: $DDPMKIT_CACHE/classifiers or ~/.cache/ddpmkit)"
    )
    p.add_argument(
        "--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for standard FID"
    )
    p.add_argument(
        "--copies", action=argparse.BooleanOptionalAction, default=None,
        help="images: the copy detector (nearest training images, the 1/3 ratio test); default: on "
        "for folder: datasets",
    )  # fmt: skip
    p.add_argument("--nearest", metavar="PNG", help="images: draw the samples nearest to a training image")
    p.add_argument("--overwrite", action="store_true", help="replace the --nearest picture if it exists")
    p.add_argument("--nll", metavar="RUN_DIR", help="bits/dim of the test set under this image model")
    p.add_argument("--subset", type=int, default=256, help="--nll: number of test images (0 = all)")
    p.add_argument(
        "--t-stride", type=int, default=1, help="--nll: 1 = exact bound, K = one t per K (estimate)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per classifier / model call")
    p.add_argument("--seed", type=int, default=0, help="subsets, noise floors and --nll's noise")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = _command(sub, "train-classifier", "train the feature classifier `ddpm eval` uses")
    p.add_argument("--dataset", default="mnist", help="the labelled image set the classifier learns")
    p.add_argument("--data-dir", help="folder of the dataset's files")
    p.add_argument("--cache-dir", help="where the classifier is cached (default: $DDPMKIT_CACHE/classifiers)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the training set (default: 3, more for small sets)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per optimizer step")
    p.add_argument("--image-size", type=int, help="side in pixels (default: the dataset's)")
    p.add_argument("--channels", type=int, help="1 or 3 (default: the dataset's)")
    p.add_argument("--train-images", type=int, help="a random subset of N training images (default: all)")
    p.add_argument("--test-images", type=int, help="a random subset of N test images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, batch order and subsets")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cli_steer.add_parsers(sub, _command)
    p = _command(sub, "playground", "a local web page: draw points, train, scrub through the diffusion")
    p.add_argument("--port", type=int, default=8000, help="TCP port of the page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 127.0.0.1: this machine only")
    p.add_argument("--runs", default="runs", help="folder whose run directories the images page opens")
    p = _command(sub, "info", "print a run's config and model size")
    p.add_argument("run_dir", help="run directory written by `ddpm train`")
    return parser


COMMANDS = {
    "train": cli_train.cmd_train,
    "train-autoencoder": cli_train.cmd_train,
    "sample": cmd_sample,
    "forward": cmd_forward,
    "info": cmd_info,
    "eval": cmd_eval,
    "train-classifier": cmd_train_classifier,
    "playground": cmd_playground,
    **cli_steer.COMMANDS,
}


def _one_line_warnings(command: str) -> None:
    """Library warnings (skipped files, duplicates, notes) as `ddpm CMD: warning: ...` lines."""
    import warnings

    warnings.formatwarning = lambda message, category, *_a, **_k: f"ddpm {command}: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings(args.command)
    try:
        return COMMANDS[args.command](args)
    except DdpmkitError as e:
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
