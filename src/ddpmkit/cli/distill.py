"""`ddpm distill RUN --method progressive|consistency -o STUDENT`: a student that samples in 1-4
model calls, trained from a run (its teacher) on the training machinery; `--resume STUDENT` goes on."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import DISTILL_METHODS, LR_SCHEDULES
from ..errors import ConfigError
from .common import BATCH, COUNT, SEED, THREADS, floats
from .train import resume_config, summary


def add_parser(sub, command) -> None:
    p = command(sub, "distill", "distil a run into a student that samples in 1-4 model calls")
    p.add_argument("run", nargs="?", metavar="RUN", help="the teacher: a run directory of `ddpm train`")
    p.add_argument("--method", choices=DISTILL_METHODS, default="progressive",
                   help="progressive: halve the teacher's DDIM steps round by round (Salimans & Ho 2022); "
                   "consistency: consistency tuning of the teacher's weights (ECT, Geng et al. "
                   "2024)")  # fmt: skip
    p.add_argument("-o", "--out", help="the student's run directory (default: RUN-METHOD)")
    p.add_argument("--to-steps", type=COUNT, metavar="N",
                   help="the student's sampling steps (default: 4 progressive, 1 consistency); "
                   "progressive: --teacher-steps halved one or more times")  # fmt: skip
    p.add_argument("--teacher-steps", type=COUNT, metavar="N",
                   help="progressive: the teacher's DDIM steps the first round starts from (default 64; "
                   "a progressive student's own steps)")  # fmt: skip
    p.add_argument("--round-steps", type=COUNT, default=1000, metavar="K",
                   help="optimizer steps per halving round (progressive) or per curriculum stage "
                   "(consistency: 4 stages by default)")  # fmt: skip
    p.add_argument("--steps", type=COUNT, help="optimizer steps in total (default: from the rounds / stages)")
    p.add_argument("--guidance", metavar="W",
                   help="class-conditional teachers: the guidance weight fixed into the student (default: "
                   "the run's); the student then samples unguided, in its own calls")  # fmt: skip
    p.add_argument("--guide", metavar="WEAK_RUN",
                   help="progressive: guide the first teacher with this weaker run of the same data "
                   "and process (autoguidance, Karras et al. 2024; weight --guidance, default the "
                   "run's), fixed into the student; unconditional teachers too")  # fmt: skip
    p.add_argument("--huber-c", type=float, metavar="C",
                   help="consistency: the pseudo-Huber c (default 0.00054 sqrt(d), Song & Dhariwal 2024; "
                   "the dino measured best at 0.05, docs/distillation.md)")  # fmt: skip
    p.add_argument("--lr", type=float, help="learning rate (default 2e-4)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant (default), or a decay to 0: progressive, within each round (Salimans & "
                   "Ho's code anneals linearly); consistency, over the run")  # fmt: skip
    p.add_argument("--batch-size", type=BATCH, help="batch size (default: the teacher's)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; stops and saves when reached")
    p.add_argument("--threads", type=THREADS, help="torch threads (default: auto)")
    p.add_argument("--seed", type=SEED, help="batches and noise (default: the teacher's)")
    p.add_argument("--resume", metavar="STUDENT", help="continue the distillation in STUDENT")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output directory")
    p.add_argument("--dry-run", action="store_true", help="print the student's config (JSON) and stop")
    p.add_argument("--no-report", action="store_true", help="skip the pictures and metrics at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no config summary")


def _flags(args) -> dict:
    names = ("steps", "lr", "lr_schedule", "batch_size", "max_minutes", "threads", "seed")
    flags = {f"train.{k}": getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.huber_c is not None:
        flags["distill.huber_c"] = args.huber_c
    return flags


def run(args) -> int:
    from .. import checkpoint as ckpt
    from ..report import write_report
    from ..training import train
    from ..training.distill import check_student_dir, student_config

    fixed = ("run", "overwrite", "to_steps", "teacher_steps", "guidance", "guide")
    if args.resume and any(getattr(args, k) for k in fixed):
        raise ConfigError("--resume STUDENT continues a distillation as it was started: give no teacher "
                          "RUN, --overwrite, --to-steps, --teacher-steps, --guidance or --guide")  # fmt: skip
    if args.resume:
        run_dir = Path(args.resume)
        cfg = ckpt.load_config(run_dir)
        if cfg.train.task not in DISTILL_METHODS:
            raise ConfigError(
                f"{run_dir} is a {cfg.train.task} run, not a student: resume it with ddpm train"
            )
        cfg = resume_config(cfg, _flags(args))
    else:
        if not args.run:
            raise ConfigError("give the teacher run: ddpm distill RUN --method progressive -o STUDENT")
        guidance = floats(args.guidance) if args.guidance is not None else [None]
        if len(guidance) > 1:
            raise ConfigError("--guidance: a student fixes one guidance weight in, got several")
        cfg = student_config(
            args.run, args.method, to_steps=args.to_steps, teacher_steps=args.teacher_steps,
            round_steps=args.round_steps, guidance=guidance[0], guide=args.guide or "",
            overrides=_flags(args),
        )  # fmt: skip
        run_dir = Path(args.out or f"{str(args.run).rstrip('/')}-{args.method}")
        check_student_dir(args.run, run_dir)
        if not (args.overwrite or args.dry_run):
            ckpt.prepare_run_dir(run_dir)
    if args.dry_run:
        print(cfg.to_json())
        return 0

    def say_summary(event: str, info: dict) -> None:
        if event == "begin" and not args.quiet:
            print(summary(cfg, run_dir, bool(args.resume), info["state"].data), flush=True)

    hist = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet,
                 callbacks=[say_summary])  # fmt: skip
    if not hist["is_main"]:
        return 0
    cfg = ckpt.load_config(run_dir)  # a progressive run stopped early says the steps of its round
    print(f"distilled {hist['final_step']}/{hist['total_steps']} steps in {hist['elapsed_s']:.1f} s "
          f"({hist['stopped']}); student: {run_dir} ({cfg.sample.sampler}, "
          f"{cfg.sample.steps} steps)")  # fmt: skip
    if hist["stopped"] == "interrupted":
        return 128 + (hist.get("signal") or 2)
    if not args.no_report:
        m = write_report(run_dir, progress=not args.quiet)
        if not args.quiet:
            print(json.dumps(m, indent=2))
    return 0
