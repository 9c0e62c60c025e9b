"""`ddpm train` (and `ddpm train-autoencoder`, which shares its options and handler): its options
(every config field is a dotted flag, common ones have short names), the config it builds, and the few
lines it prints before training (the full config is in the run's config.json; --verbose prints it)."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from ..config import (
    CONDS,
    GRIDS,
    LEGACY_FAMILIES,
    LOSSES,
    MODEL_FAMILIES,
    OBJECTIVES,
    SAMPLERS,
    SCHEDULES,
    T_SAMPLERS,
    VARIANCES,
    RunConfig,
    option_fields,
    override,
    preset_names,
)
from ..errors import ConfigError

# friendly flags --dataset, --lr, ... for these dotted options (every dotted option is a flag too)
COMMON = ("data.dataset", "data.data_dir", "data.image_size", "diffusion.schedule", "diffusion.timesteps",
          "diffusion.objective", "diffusion.loss", "diffusion.variance", "train.steps", "train.epochs",
          "train.batch_size", "train.lr", "train.seed", "train.max_minutes", "train.device",
          "train.precision", "data.cond")  # fmt: skip
ALIASES = {dotted.split(".")[-1]: dotted for dotted in COMMON}
CHOICES = {
    "diffusion.schedule": SCHEDULES,
    "diffusion.objective": OBJECTIVES,
    "diffusion.loss": LOSSES,
    "diffusion.variance": VARIANCES,
    "sample.sampler": tuple(SAMPLERS),
    "sample.grid": GRIDS,
    "data.cond": CONDS,
    "train.t_sampler": T_SAMPLERS,
}
# the flat model options of ddpmkit 0.1 (--model.hidden, --model.base_channels, ...), still accepted
LEGACY_MODEL_FLAGS = [
    f"model.{name}" for family in LEGACY_FAMILIES for name in MODEL_FAMILIES[family].__dataclass_fields__
]


# what a resume may change: how long and where it runs, how often it logs and saves (the rest is the run)
RESUMABLE = ("train.steps", "train.max_minutes", "train.threads", "train.device", "train.log_every",
             "train.checkpoint_every", "train.keep_last", "train.keep_every", "train.preview_every",
             "train.tensorboard")  # fmt: skip


def given_flags(args: argparse.Namespace) -> dict:
    """The dotted options given on the command line (short aliases under their dotted names)."""
    flags = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    for alias, dotted in ALIASES.items():
        if getattr(args, alias, None) is not None:
            flags[dotted] = getattr(args, alias)
    if args.download:
        flags["data.download"] = True
    return flags


def resume_config(cfg: RunConfig, flags: dict) -> RunConfig:
    """The run's own config with the RESUMABLE flags applied; a flag that would change anything else
    is refused (a resume that silently ignored --lr would train with the old one)."""
    changed = []
    for key, value in flags.items():
        new = override(cfg, {key: value})
        if new == cfg:
            continue  # the same value (--auto-resume gives the first command line again)
        if key not in RESUMABLE:
            alias = next((a for a, d in ALIASES.items() if d == key), None)
            changed.append(f"--{alias.replace('_', '-')}" if alias else f"--{key}")
        else:
            cfg = new
    if changed:
        raise ConfigError(f"a resume continues the run with its own config: {', '.join(changed)} would "
                          "change it (start a new run with --config RUN/config.json to change "
                          "it)")  # fmt: skip
    return cfg


def build_config(args: argparse.Namespace) -> RunConfig:
    """defaults < preset (or --config FILE) < command-line flags."""
    from ..api import build_config as build

    flags = given_flags(args)
    preset = args.preset
    if args.command == "train-autoencoder":
        preset = preset or ("autoencoder" if not args.config else None)
        flags.update({"train.task": "autoencoder", "model.kind": "autoencoder"})
    elif getattr(args, "latent", None):
        flags = {**latent_flags(args.latent), **flags}
        preset = preset or ("latent" if not args.config else None)
    elif preset == "latent":
        raise ConfigError("the latent preset trains in an autoencoder's latent space: give --latent AE_RUN")
    return build(config_file=args.config, preset=preset, flags=flags)


def latent_flags(ae_dir: str) -> dict:
    """`--latent AE_RUN`: the latent space of that autoencoder, on its data unless flags say otherwise."""
    from ..checkpoint import MODEL, load_config

    if not Path(ae_dir).is_dir():
        raise ConfigError(f"--latent {ae_dir}: no such directory (train one with `ddpm train-autoencoder`)")
    ae = load_config(Path(ae_dir))
    if ae.train.task != "autoencoder":
        raise ConfigError(f"--latent {ae_dir}: that is a {ae.train.task} run, not one of "
                          "`ddpm train-autoencoder`")  # fmt: skip
    if not (Path(ae_dir) / MODEL).is_file():
        raise ConfigError(f"--latent {ae_dir}: it holds no {MODEL} yet (its training never saved one)")
    d = ae.data
    # what the images are (flips are the latent run's own choice: --data.hflip)
    keys = ("dataset", "data_dir", "image_size", "channels", "resize", "background")
    same = {f"data.{k}": getattr(d, k) for k in keys}
    return {**same, "data.space": "latent", "latent.autoencoder": str(ae_dir)}


def add_parser(sub, command) -> None:
    p = command(sub, "train", "train a model (default: the dino recipe)")
    p.add_argument("--latent", metavar="AE_RUN",
                   help="latent diffusion: train in the latent space of this `ddpm train-autoencoder` "
                   "run, on its dataset (default preset: latent)")  # fmt: skip
    add_options(p)


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of `ddpm train` and `ddpm train-autoencoder` (all but --latent)."""
    p.add_argument("--preset", help=f"named recipe: {', '.join(preset_names())} (default: the dataset's)")
    p.add_argument("--config", help="a config.json to start from (e.g. of an earlier run)")
    p.add_argument("-o", "--out", help="run directory (default: runs/<dataset>)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (with --steps N: until step N)"
    )
    p.add_argument(
        "--auto-resume", action="store_true",
        help="resume the run in --out if it holds a checkpoint, else start it (torchrun --max-restarts)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output directory")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config (JSON) and stop")
    p.add_argument("--no-report", action="store_true", help="skip the pictures and metrics at the end")
    p.add_argument("--no-verify", action="store_true", help="--resume: skip the checkpoint's SHA-256 check")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no config summary")
    p.add_argument("-v", "--verbose", action="store_true", help="print the full config (JSON) first")
    g = p.add_argument_group("common options (shortcuts for the dotted ones)")
    g.add_argument(
        "--dataset",
        help="dino, moons, circles, spiral, swissroll, 8gaussians, line, a Datasaurus shape (star, "
        "bullseye, ...), datasaurus (all 13, labelled), a CSV path, mnist, fashion-mnist, digits "
        "or folder:PATH",
    )
    g.add_argument("--data-dir", help="folder with the MNIST / Fashion-MNIST IDX files")
    g.add_argument(
        "--download", action="store_true",
        help="fetch missing MNIST / Fashion-MNIST files into --data-dir (md5-checked; needs the internet)",
    )  # fmt: skip
    g.add_argument(
        "--cond",
        choices=CONDS,
        help="class: a class-conditional model on the dataset's labels (mnist, fashion-mnist, digits, "
        "datasaurus, folder:PATH with one sub-folder per class), trained with the null label "
        "for a fraction train.cond_drop of the examples so that it also serves classifier-free guidance",
    )
    g.add_argument("--image-size", type=int, help="images: side in pixels (default: the dataset's)")
    g.add_argument("--schedule", choices=SCHEDULES, help="beta schedule (default: the preset's)")
    g.add_argument("-T", "--timesteps", type=int, help="number of diffusion steps T")
    g.add_argument("--objective", choices=OBJECTIVES, help="what the network predicts: noise eps, x0, or v")
    g.add_argument(
        "--loss", choices=LOSSES,
        help="l2 (default), l1, huber on the model output; hybrid = l2 + diffusion.vlb_weight x the "
        "variational bound (trains a learned variance); vlb = the bound alone (best with "
        "--train.t_sampler loss_second_moment)",
    )  # fmt: skip
    g.add_argument(
        "--variance", choices=VARIANCES,
        help="reverse-process variance: fixed_small (beta~, default), fixed_large (beta), or learned by "
        "the network (learned_range: between the two, Improved DDPM Eq. 15; learned: the log variance "
        "itself), which needs --loss hybrid or vlb",
    )  # fmt: skip
    g.add_argument("--steps", type=int, help="optimizer steps in total")
    g.add_argument("--epochs", type=float, help="passes over the data (overrides --steps)")
    g.add_argument("--batch-size", type=int, help="global batch size")
    g.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    g.add_argument("--seed", type=int, help="initialisation, batches and noise")
    g.add_argument("--max-minutes", type=float, help="wall-clock budget; stops and saves when reached")
    g.add_argument("--device", help="auto, cpu, cuda, mps")
    g.add_argument("--precision", help="fp32, bf16, fp16 (CUDA only)")
    a = p.add_argument_group("all options (dotted: section.name)")
    for name, tp, default in option_fields(RunConfig):
        kwargs = {"metavar": _metavar(tp), "help": f"default: {'unset' if default is None else default}"}
        if name in CHOICES:
            kwargs["choices"] = CHOICES[name]
            kwargs.pop("metavar")
        a.add_argument(f"--{name}", dest=name, **kwargs)
    for name in LEGACY_MODEL_FLAGS:
        a.add_argument(f"--{name}", dest=name, help=argparse.SUPPRESS)


def _metavar(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "A,B,..."
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    t = args[0] if args else tp
    return getattr(t, "__name__", "X").upper()


def data_line(data) -> str:
    """What was loaded: `  data: 1686 images of 3x32x32, 9 classes` (points: their count)."""
    what = data.space.describe(len(data), data.shape)
    return f"  data: {what}" + (f", {len(data.class_names)} classes" if data.class_names else "")


def summary(cfg: RunConfig, run_dir: Path, resumed: bool, data=None) -> str:
    """The config in a few lines (the full JSON is run_dir/config.json), and the data as loaded."""
    from ..config import TASKS

    t = cfg.train
    budget = f"{t.epochs:g} epochs" if t.epochs else f"{t.steps} steps"
    budget += f" or {t.max_minutes:g} min" if t.max_minutes else ""
    cond = ", class-conditional" if cfg.data.cond != "none" else ""
    task = TASKS[t.task].describe(cfg)  # what is trained: diffusion + sampler, or the autoencoder
    task[-1] += f"; full config: {run_dir / 'config.json'} (-v prints it)"
    return "\n".join([
        f"{'resuming' if resumed else 'training'} {run_dir} (preset {cfg.preset}): {cfg.data.dataset}{cond}",
        *([data_line(data)] if data is not None else []),
        f"  model: {cfg.model.kind}; train: {budget}, batch {t.batch_size}, lr {t.lr:g}, "
        f"EMA {t.ema_decay:g}, device {t.device}, seed {t.seed}",
        *task,
        *run_notes(cfg),
    ])  # fmt: skip


def run_notes(cfg: RunConfig) -> list[str]:
    """One line for each option that will not do all a user may expect of it."""
    from ..samplers import variance_note

    if cfg.train.task != "diffusion":
        return []
    notes = [variance_note(cfg.sample.sampler, cfg.diffusion.variance)]
    if cfg.diffusion.loss == "vlb" and cfg.train.t_sampler == "uniform":
        notes.append("note: --loss vlb with uniform t is very noisy (Improved DDPM Sec. 3.3): "
                     "--train.t_sampler loss_second_moment importance-samples t")  # fmt: skip
    if cfg.diffusion.loss == "vlb" and cfg.diffusion.weighting != "plain":
        notes.append(f"note: diffusion.weighting {cfg.diffusion.weighting} does not apply to --loss vlb "
                     "(the bound weights its terms over t itself)")  # fmt: skip
    return [n for n in notes if n]


def run(args) -> int:
    """`ddpm train` and `ddpm train-autoencoder` (args.command says which)."""
    from .. import checkpoint as ckpt
    from ..api import default_run_dir, train
    from ..report import write_report

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if args.auto_resume and (args.resume or args.overwrite):
        raise ConfigError("--auto-resume decides between starting and resuming: drop --resume / --overwrite")
    resume_dir = args.resume
    if args.auto_resume:
        if not args.out:
            raise ConfigError("--auto-resume needs -o RUN_DIR")
        resume_dir = args.out if ckpt.list_checkpoints(Path(args.out)) else None
    if resume_dir:
        run_dir = Path(resume_dir)
        cfg = ckpt.load_config(run_dir)
        if (cfg.train.task == "autoencoder") != (args.command == "train-autoencoder"):
            other = "ddpm train-autoencoder" if cfg.train.task == "autoencoder" else "ddpm train"
            raise ConfigError(f"{run_dir} is a {cfg.train.task} run: resume it with `{other} --resume`")
        cfg = resume_config(cfg, given_flags(args))
    else:
        cfg = build_config(args)
        run_dir = Path(args.out) if args.out else default_run_dir(cfg)
        if cfg.latent.autoencoder and run_dir.resolve() == Path(cfg.latent.autoencoder).resolve():
            raise ConfigError(f"-o {run_dir} is the autoencoder run itself: the latent run needs its own")
        if not (args.overwrite or args.dry_run or args.auto_resume):  # refuse an earlier run up front
            ckpt.prepare_run_dir(run_dir)
    if args.dry_run or args.verbose:
        print(cfg.to_json())
    if args.dry_run:
        from ..training.loop import plan

        print(plan(cfg), file=sys.stderr)  # loads the data; refuses what would not fit in memory
        return 0

    def say_summary(event: str, info: dict) -> None:  # once the data has loaded; rank 0 only
        if event == "begin" and not args.quiet:
            print(summary(cfg, run_dir, bool(resume_dir), info["state"].data), flush=True)

    hist = train(cfg, run_dir, resume=bool(resume_dir), overwrite=args.overwrite or args.auto_resume,
                 progress=not args.quiet, verify=not args.no_verify,
                 callbacks=[say_summary]).history  # fmt: skip
    if not hist["is_main"]:  # under torchrun, rank 0 alone reports
        return 0
    done, why = f"{hist['final_step']}/{hist['total_steps']}", hist["stopped"]
    if why == "time budget":  # the steps were never the limit: say so instead of "6496/30000"
        done, why = str(hist["final_step"]), f"time budget of {cfg.train.max_minutes:g} min"
    print(f"trained {done} steps in {hist['elapsed_s']:.1f} s ({why}); run directory: {run_dir}")
    if hist["stopped"] == "interrupted":
        return 128 + (hist.get("signal") or 2)  # 130 after Ctrl-C, 143 after SIGTERM
    if not args.no_report:
        if cfg.train.task == "autoencoder":
            from ..eval.autoencoder import REPORT_FILES
            from ..eval.autoencoder import write_autoencoder_report as write_report
        else:
            REPORT_FILES = "samples.png, forward.png, loss.png, denoise.gif, metrics.json"
        m = write_report(run_dir, progress=not args.quiet)
        if not args.quiet:
            print(json.dumps(m, indent=2))
        print(f"wrote {run_dir}/{REPORT_FILES}")
    return 0
