"""The `ddpm` command line: parse -> config -> one library call -> say where outputs went.

Bad input (a value, a path, a file) gets one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import typing
from importlib import resources
from pathlib import Path

from .config import SAMPLERS, RunConfig, merge, option_fields, override
from .data.toy2d import unknown_dataset
from .diffusion import LOSSES, OBJECTIVES, VARIANCES
from .errors import ConfigError, DdpmkitError, OutputError
from .schedules import SCHEDULES

# friendly flag -> dotted option (every dotted option is also a flag: --train.lr, --model.hidden, ...)
ALIASES = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "image_size": "data.image_size",
    "schedule": "diffusion.schedule",
    "timesteps": "diffusion.timesteps",
    "objective": "diffusion.objective",
    "loss": "diffusion.loss",
    "variance": "diffusion.variance",
    "steps": "train.steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "max_minutes": "train.max_minutes",
    "device": "train.device",
    "precision": "train.precision",
}
CHOICES = {
    "diffusion.schedule": SCHEDULES,
    "diffusion.objective": OBJECTIVES,
    "diffusion.loss": LOSSES,
    "diffusion.variance": VARIANCES,
    "sample.sampler": SAMPLERS,
}


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("ddpmkit.presets").iterdir() if p.name.endswith(".json")
    )


def load_preset(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return json.loads(resources.files("ddpmkit.presets").joinpath(f"{name}.json").read_text())


def auto_preset(dataset: str) -> str:
    """The recipe used when no --preset is given: the dataset's own, else points or images."""
    from .data import is_point_dataset
    from .data.images import is_image_dataset

    if dataset in preset_names():
        return dataset
    if is_point_dataset(dataset):
        return "points"
    if is_image_dataset(dataset):
        return "images"
    raise unknown_dataset(dataset)


def build_config(args: argparse.Namespace) -> RunConfig:
    """defaults < preset (or --config FILE) < command-line flags."""
    flags = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    for alias, dotted in ALIASES.items():
        if getattr(args, alias, None) is not None:
            flags[dotted] = getattr(args, alias)
    d = RunConfig().to_dict()
    if args.config:
        d = merge(d, RunConfig.from_json(args.config).to_dict())
    dataset = flags.get("data.dataset", d["data"]["dataset"] if args.config else "dino")
    preset = args.preset or (None if args.config else auto_preset(dataset))
    if preset:
        d = merge(d, load_preset(preset))
        d["preset"] = preset
    return override(RunConfig.from_dict(d), flags)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: the dino recipe)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", help=f"named recipe: {', '.join(preset_names())} (default: by dataset)")
    p.add_argument("--config", help="a config.json to start from (e.g. of an earlier run)")
    p.add_argument("-o", "--out", help="run directory (default: runs/<dataset>)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (with --steps N: until step N)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output directory")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    p.add_argument("--no-report", action="store_true", help="skip the pictures and metrics at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("common options (shortcuts for the dotted ones)")
    g.add_argument(
        "--dataset",
        help="dino, moons, circles, spiral, swissroll, 8gaussians, line, a CSV path, "
        "mnist, fashion-mnist, digits or folder:PATH",
    )
    g.add_argument("--data-dir", help="folder with the MNIST / Fashion-MNIST IDX files")
    g.add_argument("--image-size", type=int)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("-T", "--timesteps", type=int, help="number of diffusion steps T")
    g.add_argument("--objective", choices=OBJECTIVES)
    g.add_argument("--loss", choices=LOSSES)
    g.add_argument("--variance", choices=VARIANCES)
    g.add_argument("--steps", type=int, help="optimizer steps in total")
    g.add_argument("--epochs", type=float, help="passes over the data (overrides --steps)")
    g.add_argument("--batch-size", type=int, help="global batch size")
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--max-minutes", type=float, help="wall-clock budget; stops and saves when reached")
    g.add_argument("--device", help="auto, cpu, cuda, mps")
    g.add_argument("--precision", help="fp32, bf16, fp16 (CUDA only)")
    a = p.add_argument_group("all options (dotted: section.name)")
    for name, tp, default in option_fields():
        kwargs = {"metavar": _metavar(tp), "help": f"default: {default}"}
        if name in CHOICES:
            kwargs["choices"] = CHOICES[name]
            kwargs.pop("metavar")
        a.add_argument(f"--{name}", dest=name, **kwargs)


def _metavar(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "A,B,..."
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    t = args[0] if args else tp
    return getattr(t, "__name__", "X").upper()


def cmd_train(args) -> int:
    from .report import write_report
    from .train import train

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if args.resume:
        from .checkpoint import load_config

        run_dir = Path(args.resume)
        cfg = load_config(run_dir)
        if args.steps is not None:
            cfg = override(cfg, {"train.steps": args.steps})
    else:
        cfg = build_config(args)
        run_dir = Path(args.out or Path("runs") / Path(cfg.data.dataset).stem.replace("folder:", ""))
        if not (args.overwrite or args.dry_run):  # refuse an earlier run before printing anything
            from .checkpoint import prepare_run_dir

            prepare_run_dir(run_dir)
    print(f"config ({'resumed from ' + str(run_dir) if args.resume else 'preset ' + str(cfg.preset)}):")
    print(cfg.to_json())
    if args.dry_run:
        return 0
    hist = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet)
    if not hist["is_main"]:  # under torchrun, rank 0 alone reports
        return 0
    print(
        f"trained {hist['final_step']}/{hist['total_steps']} steps in {hist['elapsed_s']:.1f} s "
        f"({hist['stopped']}); run directory: {run_dir}"
    )
    if hist["stopped"] == "interrupted":
        return 130
    if not args.no_report:
        m = write_report(run_dir, progress=not args.quiet)
        print(json.dumps(m, indent=2))
        print(f"wrote {run_dir}/samples.png, forward.png, loss.png, denoise.gif, metrics.json")
    return 0


def _check_output(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")


def _set_threads(threads: int) -> None:
    """torch intra-op threads (0: PyTorch's default, one per core)."""
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from . import viz
    from .checkpoint import atomic_write_bytes, load_run
    from .data import to_data_space
    from .generate import generate
    from .train import resolve_device

    out = Path(args.out)
    _check_output(out)
    _set_threads(args.threads)
    device = resolve_device(args.device)
    run = load_run(
        args.run_dir, device=device, weights="best.safetensors" if args.best else "model.safetensors"
    )
    if args.steps is not None and args.steps > run.diffusion.num_timesteps:
        raise ConfigError(f"--steps {args.steps} exceeds the model's T={run.diffusion.num_timesteps}")
    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, got {args.n}")
    if args.eta < 0:
        raise ConfigError(f"--eta must be >= 0, got {args.eta}")
    if args.sampler == "ddpm" and args.eta:
        print("note: --eta is ignored by the ddpm sampler", file=sys.stderr)
    record = min(args.n, 16 if run.kind == "images" else args.n) if (args.gif or args.trajectory) else 0
    x, traj = generate(
        run,
        args.n,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.batch_size,
        clip=args.clip,
        record=record,
        progress=not args.quiet,
        device=device,
    )
    arr = to_data_space(x, run.kind, run.mean, run.std)
    buf = io.BytesIO()
    np.savez(buf, arr_0=arr)
    atomic_write_bytes(out, buf.getvalue())
    png = out.with_suffix(".png")
    if run.kind == "points":
        from .report import real_points

        viz.plot_points_samples(
            arr,
            real_points(run.cfg.data.dataset)(len(arr), 12345),
            png,
            title=f"{args.sampler}, {args.steps or 'all'} steps",
        )
    else:
        viz.save_image_grid(arr, png)
    written = [out, png]
    if args.gif:
        gif = out.with_name(out.stem + "_denoise.gif")
        if run.kind == "points":
            viz.points_gif(
                [to_data_space(f, "points", run.mean, run.std) for f in traj.x_t],
                [f"t = {t}" for t in traj.t[:-1]] + ["sample"],
                gif,
            )
        else:
            viz.images_gif(traj.x_t, gif)
        written.append(gif)
    if args.trajectory and run.kind == "images":
        path = out.with_name(out.stem + "_trajectory.png")
        idx = np.linspace(0, len(traj.t) - 1, min(8, len(traj.t))).round().astype(int)
        k = min(4, traj.x_t[0].shape[0])
        rows = []
        for j in range(k):
            rows.append(torch.stack([traj.x_t[i][j] for i in idx]))
            rows.append(torch.stack([traj.x0_pred[i][j] for i in idx]))
        titles = ["sample" if i == len(traj.t) - 1 else f"t={traj.t[i]}" for i in idx]
        viz.image_rows(
            rows,
            titles,
            [f"#{j} x_t" if r == 0 else f"#{j} x0 pred" for j in range(k) for r in (0, 1)],
            path,
            title="reverse trajectory: x_t and predicted x0",
        )
        written.append(path)
    print(f"{len(arr)} samples {tuple(arr.shape)} {arr.dtype} -> " + ", ".join(map(str, written)))
    return 0


def cmd_forward(args) -> int:
    import numpy as np

    from . import viz
    from .config import DataConfig
    from .data import build_dataset
    from .diffusion import GaussianDiffusion
    from .report import write_forward
    from .schedules import make_beta_schedule

    if args.timesteps < 1:
        raise ConfigError(f"T must be >= 1, got {args.timesteps}")
    out = Path(args.out)
    from .checkpoint import check_writable

    check_writable(out)
    data = build_dataset(DataConfig(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size))
    diff = GaussianDiffusion(make_beta_schedule(args.schedule, args.timesteps))
    n = 2000 if data.kind == "points" else 6
    write_forward(diff, data.x[:n], data.kind, out / "forward.png")
    curves = {s: np.cumprod(1 - make_beta_schedule(s, args.timesteps)) for s in SCHEDULES}
    viz.plot_schedules(curves, out / "schedules.png")
    print(f"wrote {out / 'forward.png'} and {out / 'schedules.png'}")
    return 0


def cmd_info(args) -> int:
    from .checkpoint import load_run
    from .models import count_parameters

    run = load_run(args.run_dir)
    print(run.cfg.to_json())
    print(
        f"kind: {run.kind}, data shape: {run.data_shape}, step: {run.step}, "
        f"parameters: {count_parameters(run.model):,}"
    )
    return 0


def cmd_train_classifier(args) -> int:
    from .classifier import train_classifier

    _set_threads(args.threads)
    info = train_classifier(
        args.dataset,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        image_size=args.image_size,
        channels=args.channels,
        progress=not args.quiet,
    )
    print(
        f"{args.dataset}: test accuracy {100 * info['test_accuracy']:.2f}% in {info['seconds']:.0f} s; "
        f"cached in {info['path']}"
    )
    return 0


def cmd_eval(args) -> int:
    import numpy as np

    _set_threads(args.threads)
    if args.nll:
        result = _eval_nll(args)
    else:
        if not args.samples:
            raise ConfigError("give a samples .npz to evaluate (or --nll RUN_DIR)")
        from .evaluate import evaluate_images, format_table, load_samples_npz

        samples, kind = load_samples_npz(args.samples)
        if kind == "points":
            from .data import is_point_dataset
            from .metrics import distance_with_floor
            from .report import real_points

            if not is_point_dataset(args.dataset):
                raise ConfigError(
                    f"{args.samples} holds 2-D points but --dataset {args.dataset} is not a point set"
                )
            result = {
                "dataset": args.dataset,
                **distance_with_floor(np.asarray(samples, np.float64), real_points(args.dataset)),
            }
            table = (
                f"sliced Wasserstein-1 (n={result['n']}): {result['swd']:.4f}   noise floor (real vs real): "
                f"{result['swd_floor']:.4f}   ratio: {result['swd_ratio']:.2f}"
            )
        else:
            result = evaluate_images(
                samples,
                args.dataset,
                data_dir=args.data_dir,
                cache_dir=args.cache_dir,
                inception_weights=args.inception_weights,
                seed=args.seed,
                progress=not args.quiet,
            )
            table = format_table(result)
        if not args.json:
            print(table)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _eval_nll(args) -> dict:
    import torch

    from .checkpoint import load_run
    from .data import build_dataset
    from .likelihood import nll_bits_per_dim

    run = load_run(args.nll)
    if run.kind != "images":
        raise ConfigError("--nll is for image models (bits/dim of the test set)")
    data = build_dataset(run.cfg.data, split="test")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data), generator=g)[: args.subset] if args.subset else torch.arange(len(data))
    result = nll_bits_per_dim(
        run,
        data.x[idx],
        batch_size=args.batch_size,
        progress=not args.quiet,
        t_stride=args.t_stride,
        seed=args.seed,
    )
    result.pop("per_timestep", None)
    if not args.json:
        print(
            f"NLL of {len(idx)} test images: {result['bpd']:.4f} ± {result['bpd_sem']:.4f} bits/dim "
            f"(prior {result['prior_bpd']:.4f}, decoder {result['decoder_bpd']:.4f}, "
            f"{'exact bound' if result['exact'] else f'stratified estimate, t-stride {args.t_stride}'})"
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm", description="Denoising Diffusion Probabilistic Models for 2-D points and small images."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser(
        "sample",
        help="generate samples from a trained run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="run directory written by `ddpm train`")
    p.add_argument("-n", type=int, default=1000, help="number of samples")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    p.add_argument("--steps", type=int, default=None, help="sampling steps S <= T (default: all T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 = DDPM variance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip predicted x0 to [-1, 1] (default: on for images, off for points)",
    )
    p.add_argument("--out", default="samples.npz", help="output .npz (arr_0); a .png is written beside it")
    p.add_argument("--gif", action="store_true", help="also write an animation of the denoising")
    p.add_argument("--trajectory", action="store_true", help="images: panel of x_t and predicted x0")
    p.add_argument("--best", action="store_true", help="use the best-FID weights kept by --train.eval_every")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: one per core)")
    p.add_argument("-q", "--quiet", action="store_true")
    p = sub.add_parser(
        "forward",
        help="pictures of the forward process and of the schedules",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="dino")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int)
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("-T", "--timesteps", type=int, default=1000)
    p.add_argument("--out", default="forward", help="output folder")
    p = sub.add_parser(
        "eval",
        help="score samples (FID, precision/recall, ...) or a model's NLL",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("samples", nargs="?", help=".npz from `ddpm sample` (arr_0)")
    p.add_argument("--dataset", default="mnist", help="the real data to compare with")
    p.add_argument("--data-dir")
    p.add_argument(
        "--cache-dir", help="classifier cache (default: $DDPMKIT_CACHE/classifiers or ~/.cache/ddpmkit)"
    )
    p.add_argument(
        "--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for standard FID"
    )
    p.add_argument("--nll", metavar="RUN_DIR", help="bits/dim of the test set under this image model")
    p.add_argument("--subset", type=int, default=256, help="--nll: number of test images (0 = all)")
    p.add_argument(
        "--t-stride", type=int, default=1, help="--nll: 1 = exact bound, K = one t per K (estimate)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-q", "--quiet", action="store_true")
    p = sub.add_parser(
        "train-classifier",
        help="train the feature classifier `ddpm eval` uses",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int)
    p.add_argument("--channels", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p = sub.add_parser("info", help="print a run's config and model size")
    p.add_argument("run_dir")
    return parser


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "forward": cmd_forward,
    "info": cmd_info,
    "eval": cmd_eval,
    "train-classifier": cmd_train_classifier,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
