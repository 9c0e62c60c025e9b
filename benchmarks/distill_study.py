"""Students of the 20-minute MNIST teacher: FID against distillation minutes, and the teacher's
solvers at the same model calls (issue 27). Every figure is `ddpm sample` + `ddpm eval` at n = 1000.

    python benchmarks/distill_study.py teacher      # default sampler + best solver at 1/2/4 calls
    python benchmarks/distill_study.py ode          # the teacher's ODE solved finely: DDIM 64, 128
    python benchmarks/distill_study.py progressive  # 32 DDIM steps halved to 1, 600 steps a round
    python benchmarks/distill_study.py consistency  # ECT, 8 stages of 450 steps
    python benchmarks/distill_study.py points --round-steps 500 --huber-c 0.05     # the dino
    python benchmarks/distill_study.py table

A run is trained in pieces (`ddpm distill --resume STUDENT --steps K`, exact to resume) and its
student scored after each piece; minutes are the training's own (the sum of the pieces' times)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from common import DDPM, KEYS, record, sh  # benchmarks/common.py

HERE = Path(__file__).resolve().parent


def score(args, run: Path, name: str, *flags: str) -> dict:
    npz = args.out / f"{name}.npz"
    sh(*DDPM, "sample", str(run), "-n", str(args.n), "--out", str(npz), "--overwrite", "-q",
       "--threads", str(args.threads), "--seed", str(args.seed), *flags)  # fmt: skip
    m = json.loads(sh(*DDPM, "eval", str(npz), "--dataset", "mnist", "--data-dir", args.data_dir, "--json",
                      "-q", "--threads", str(args.threads), "--cache-dir", args.cache_dir))  # fmt: skip
    return {k: m.get(k) for k in KEYS}


def distill(args, student: Path, steps: int, first: bool, *flags: str) -> float:
    """Train the student to `steps` (fresh, or resumed); returns the seconds it took."""
    head = (
        [str(args.teacher), *flags, "-o", str(student), "--overwrite"]
        if first
        else ["--resume", str(student)]
    )
    text = sh(*DDPM, "distill", *head, "--steps", str(steps), "--threads", str(args.threads), "-q",
              "--no-report")  # fmt: skip
    return float(re.search(r"in ([0-9.]+) s", text).group(1))


def teacher(args) -> None:
    record(args.out, "teacher_default", score(args, args.teacher, "teacher_default"))
    for calls in (1, 2, 4):
        for sampler in ("ddim", "dpm++2m", "unipc-bh1", "unipc", "dpm++2m-sde", "ddpm"):
            name = f"teacher_{sampler}_{calls}"
            record(
                args.out, name, score(args, args.teacher, name, "--sampler", sampler, "--steps", str(calls))
            )


def ode(args) -> None:
    """The teacher's probability-flow ODE solved finely: what an ODE-distilled student approaches."""
    for steps in (64, 128):
        name = f"teacher_ode_ddim_{steps}"
        record(args.out, name, score(args, args.teacher, name, "--sampler", "ddim", "--steps", str(steps)))


def progressive(args) -> None:
    student, minutes, n = args.out / "progressive", 0.0, args.teacher_steps
    flags = ["--method", "progressive", "--teacher-steps", str(n), "--to-steps", "1",
             "--round-steps", str(args.round_steps)]  # fmt: skip
    for r in range(1, n.bit_length()):
        minutes += distill(args, student, r * args.round_steps, r == 1, *flags) / 60
        n //= 2
        info = {"round": r, "steps": n, "minutes": round(minutes, 2)}
        record(
            args.out,
            f"progressive_{n}",
            {**info, **score(args, student, f"progressive_{n}", "--steps", str(n))},
        )


def consistency(args) -> None:
    student, minutes = args.out / "consistency", 0.0
    flags = ["--method", "consistency", "--round-steps", str(args.round_steps)]
    for stage in range(2, 9, 2):
        minutes += distill(args, student, stage * args.round_steps, stage == 2, *flags) / 60
        for calls in (1, 2, 4):
            name = f"consistency_s{stage}_{calls}"
            info = {"stage": stage, "steps": calls, "minutes": round(minutes, 2)}
            record(args.out, name, {**info, **score(args, student, name, "--steps", str(calls))})


def points_score(args, run: Path, name: str, *flags: str) -> dict:
    """SW1 ratio (`ddpm eval`) of n samples for each of 5 noise seeds: mean, spread and the values."""
    ratios = []
    for seed in range(5):
        npz = args.out / f"{name}_seed{seed}.npz"
        sh(*DDPM, "sample", str(run), "-n", "2000", "--out", str(npz), "--overwrite", "-q",
           "--seed", str(seed), *flags)  # fmt: skip
        ratios.append(
            json.loads(sh(*DDPM, "eval", str(npz), "--dataset", args.dataset, "--json", "-q"))["swd_ratio"]
        )
    mean = sum(ratios) / 5
    sd = (sum((r - mean) ** 2 for r in ratios) / 4) ** 0.5
    return {
        "swd_ratio_mean": round(mean, 3),
        "swd_ratio_sd": round(sd, 3),
        "swd_ratios": [round(r, 3) for r in ratios],
    }


def points(args) -> None:
    """The dino preset's teacher (trained here once), its students at 1-4 calls, and the teacher's own
    sampler at the same calls; SW1 ratios over 5 noise seeds."""
    teacher = args.out / args.dataset
    if not (teacher / "model.safetensors").exists():
        minutes = (
            float(
                re.search(
                    r"in ([0-9.]+) s",
                    sh(
                        *DDPM,
                        "train",
                        "--dataset",
                        args.dataset,
                        "-o",
                        str(teacher),
                        "--overwrite",
                        "-q",
                        "--no-report",
                    ),
                ).group(1)
            )
            / 60
        )
        record(args.out, f"{args.dataset}_teacher_train", {"minutes": round(minutes, 2)})
    record(
        args.out, f"{args.dataset}_teacher_default", points_score(args, teacher, f"{args.dataset}_teacher")
    )
    for calls in (1, 2, 4):
        for sampler in ("ddim", "dpm++2m", "unipc-bh1", "dpm++2m-sde"):
            name = f"{args.dataset}_teacher_{sampler}_{calls}"
            record(
                args.out, name, points_score(args, teacher, name, "--sampler", sampler, "--steps", str(calls))
            )
    args.teacher = teacher
    cons, minutes = args.out / f"{args.dataset}_consistency", 0.0
    huber = ["--huber-c", str(args.huber_c)] if args.huber_c else []
    flags = ["--method", "consistency", *huber, "--round-steps", str(args.round_steps)]
    minutes = distill(args, cons, 8 * args.round_steps, True, *flags) / 60
    for calls in (1, 2, 4):
        name = f"{args.dataset}_consistency_{calls}"
        info = {"steps": calls, "minutes": round(minutes, 2)}
        record(args.out, name, {**info, **points_score(args, cons, name, "--steps", str(calls))})
    prog, minutes, n = args.out / f"{args.dataset}_progressive", 0.0, 64
    flags = ["--method", "progressive", "--teacher-steps", "64", "--to-steps", "1", "--round-steps",
             str(args.round_steps)]  # fmt: skip
    for r in range(1, 7):
        minutes += distill(args, prog, r * args.round_steps, r == 1, *flags) / 60
        n //= 2
        if n <= 4:
            name = f"{args.dataset}_progressive_{n}"
            info = {"round": r, "steps": n, "minutes": round(minutes, 2)}
            record(args.out, name, {**info, **points_score(args, prog, name, "--steps", str(n))})


def table(args) -> None:
    results = json.loads((args.out / "results.json").read_text())
    print("| run | minutes | calls | FID | precision | recall | confident |\n|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r.get('minutes', '')} | {r.get('steps', '')} | {r['fid']:.3f} "
            f"| {r['precision']:.3f} "
            f"| {r['recall']:.3f} | {r['confident_fraction']:.3f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("teacher", "ode", "progressive", "consistency", "points", "table"))
    p.add_argument(
        "--dataset", default="dino", help="points: the 2-D dataset (its preset trains the teacher)"
    )
    p.add_argument("--teacher", type=Path, default=HERE / "out" / "diffusers" / "ddpmkit_unet")
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "mnist"))
    p.add_argument("--cache-dir", default=str(HERE.parent / "cache" / "classifiers"))
    p.add_argument("--out", type=Path, default=HERE / "out" / "distill")
    p.add_argument("--teacher-steps", type=int, default=32)
    p.add_argument(
        "--huber-c", type=float, default=0.0, help="points: consistency's pseudo-Huber c (0: iCT's)"
    )
    p.add_argument("--round-steps", type=int, default=600)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    what = {
        "teacher": teacher,
        "ode": ode,
        "progressive": progressive,
        "consistency": consistency,
        "points": points,
    }
    what.get(args.what, table)(args)


if __name__ == "__main__":
    main()
