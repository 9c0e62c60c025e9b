"""Training images/s and sampling seconds/image of a preset's U-Net on this machine.

Measures what `ddpm train --preset P` runs per step (forward, loss, backward, AdamW, EMA) and
what `ddpm sample` runs per sampling step, for fp32 / bf16 autocast / channels_last / torch.compile.
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

from ddpmkit.cli import load_preset
from ddpmkit.config import RunConfig, merge
from ddpmkit.diffusion import build_diffusion
from ddpmkit.models import build_model, count_parameters
from ddpmkit.samplers import ddim_sample
from ddpmkit.train import ema_update


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


def train_step(net, model, ema, opt, diffusion, x0, bf16: bool) -> None:
    """What one `ddpm train` step does: loss, backward, clip, AdamW, EMA."""
    t = torch.randint(0, diffusion.num_timesteps, (len(x0),))
    with autocast(bf16):
        loss = diffusion.training_loss(net, x0, t, torch.randn_like(x0)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, model, 0.999)


def sample_steps(net, diffusion, xs, bf16: bool) -> None:
    """10 DDIM steps on a batch (per-step cost is the same for DDPM)."""
    with autocast(bf16):
        ddim_sample(net, diffusion, xs, steps=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--variants", default="fp32,bf16,channels_last,compile")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig.from_dict(merge(RunConfig().to_dict(), load_preset(args.preset)))
    shape = {"digits": (1, 8, 8)}.get(args.preset, (1, 28, 28))
    diffusion = build_diffusion(cfg.diffusion)
    rows = []
    for variant in args.variants.split(","):
        torch.manual_seed(0)
        model = build_model(cfg.model, shape)
        ema = build_model(cfg.model, shape).requires_grad_(False)
        fmt = torch.channels_last if variant == "channels_last" else torch.contiguous_format
        model, ema = model.to(memory_format=fmt), ema.to(memory_format=fmt)
        net = torch.compile(model) if variant == "compile" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x0 = torch.rand(args.batch, *shape).mul(2).sub(1).contiguous(memory_format=fmt)
        bf16 = variant == "bf16"
        step = functools.partial(train_step, net, model, ema, opt, diffusion, x0, bf16)
        sec, other = measure(step, warmup=5 if variant == "compile" else 3, reps=args.reps)
        xs = torch.randn(args.sample_batch, *shape).contiguous(memory_format=fmt)
        s_sec, s_other = measure(functools.partial(sample_steps, net, diffusion, xs, bf16), warmup=1, reps=3)
        per_img_step = s_sec / 10 / args.sample_batch
        row = {
            "preset": args.preset,
            "variant": variant,
            "params": count_parameters(model),
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
