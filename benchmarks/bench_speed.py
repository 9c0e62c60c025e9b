"""Training images/s and sampling seconds/image of a preset's U-Net on this machine.

Times `ddpmkit.training.train_step`, the step `ddpm train --preset P` repeats (batch draw, forward,
loss, backward, grad clip, AdamW, EMA), on a state from `build_state`, and the sampler `ddpm sample`
runs per sampling step, for fp32 / bf16 autocast / channels_last / torch.compile (each variant is
the matching `train.precision` / `train.channels_last` / `train.compile` option of the preset).
The training data are random images of the preset's shape (speed does not depend on the pixels).
Median of timed steps after warm-up; reports other processes' CPU share while measuring, since
a busy neighbour slows 2-thread PyTorch a lot. Results: one JSON line each, plus a table.

    python benchmarks/bench_speed.py --preset mnist --variants fp32,bf16,channels_last,compile
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import time

import torch

from ddpmkit.config import RunConfig, SampleConfig
from ddpmkit.data import Dataset, ImageSpace
from ddpmkit.models import count_parameters
from ddpmkit.samplers import sample
from ddpmkit.training import TrainState, build_state, train_step

VARIANTS = {  # variant -> the train options it sets on top of the preset
    "fp32": {},
    "bf16": {"train.precision": "bf16"},
    "channels_last": {"train.channels_last": True},
    "compile": {"train.compile": True},
}
SAMPLE_STEPS = 10


def cpu_jiffies() -> tuple[float, float]:
    """(total cpu jiffies, idle jiffies) from /proc/stat, to compute the machine's load."""
    with open("/proc/stat") as f:
        parts = [float(v) for v in f.readline().split()[1:]]
    return sum(parts), parts[3] + parts[4]


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(fn, warmup: int, reps: int) -> tuple[float, float]:
    """Median seconds of fn() and the share of the machine other processes used meanwhile."""
    for _ in range(warmup):
        fn()
    total0, idle0 = cpu_jiffies()
    own0, wall0 = own_cpu(), time.perf_counter()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    total1, idle1 = cpu_jiffies()
    wall = time.perf_counter() - wall0
    busy = (1 - (idle1 - idle0) / max(total1 - total0, 1e-9)) * os.cpu_count()  # cores busy
    other = max(0.0, busy - (own_cpu() - own0) / wall) / os.cpu_count()
    return statistics.median(times), other


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def random_images(shape: tuple[int, ...], n: int) -> Dataset:
    """n random images in model space [-1, 1]: the data a step gathers its batch from."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)).mul(2).sub(1)
    return Dataset(name="random", x=x, space=ImageSpace())


def step(state: TrainState) -> None:
    """One `ddpm train` step, advancing the step counter as the training loop does."""
    train_step(state)
    state.step += 1


def sample_steps(state: TrainState, xs: torch.Tensor, bf16: bool) -> None:
    """SAMPLE_STEPS DDIM steps on a batch (per-step cost is the same for DDPM)."""
    options = SampleConfig(sampler="ddim", steps=SAMPLE_STEPS)
    with autocast(bf16):
        sample(state.net, state.diffusion, xs, options, clip=(-1.0, 1.0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    shape = {"digits": (1, 8, 8)}.get(args.preset, (1, 28, 28))
    data = random_images(shape, max(args.batch, 1024))
    device = torch.device("cpu")
    rows = []
    for variant in variants:
        cfg = RunConfig.from_preset(args.preset, {**VARIANTS[variant], "train.batch_size": args.batch})
        state = build_state(cfg, data, device)
        bf16 = cfg.train.precision == "bf16"
        warmup = 5 if cfg.train.compile else 3  # compilation happens in the warm-up steps, untimed
        sec, other = measure(functools.partial(step, state), warmup=warmup, reps=args.reps)
        xs = torch.randn(args.sample_batch, *shape)
        if cfg.train.channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        s_sec, s_other = measure(functools.partial(sample_steps, state, xs, bf16), warmup=1, reps=3)
        per_img_step = s_sec / SAMPLE_STEPS / args.sample_batch
        row = {
            "preset": args.preset,
            "variant": variant,
            "params": count_parameters(state.model),
            "threads": args.threads,
            "train_images_per_s": args.batch / sec,
            "sample_s_per_image_per_step": per_img_step,
            "sample_s_per_image_ddim100": per_img_step * 100,
            "sample_s_per_image_ddpm1000": per_img_step * 1000,
            "other_procs_cpu_frac": round(max(other, s_other), 2),
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(
        f"\n| variant | params | train img/s (batch {args.batch}) | sample s/img, 100 steps | "
        "sample s/img, 1000 steps | other CPU |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['params']:,} | {r['train_images_per_s']:.1f} | "
            f"{r['sample_s_per_image_ddim100']:.3f} | {r['sample_s_per_image_ddpm1000']:.2f} | "
            f"{r['other_procs_cpu_frac']} |"
        )


if __name__ == "__main__":
    main()
