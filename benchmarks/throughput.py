"""Training throughput of an image preset against this CPU's limit: model-FLOP utilisation (MFU).

Measures, in one run:
1. the fp32 matmul peak of this CPU (GFLOP/s, square `torch.mm`, best of a few sizes) at 1 and 2 threads;
2. the U-Net's FLOPs per training image, forward + backward (`torch.utils.flop_counter`, which counts
   convolutions, matmuls and attention; elementwise work is not counted, as usual for MFU);
3. training images/s of `train_step` on the real data for each variant, interleaved (A B A B ...) so that
   all variants see the same machine state; MFU = images/s x FLOPs/image / peak (1 thread);
4. with `--profile`, the operators of a few training steps by self CPU time (`torch.profiler`);
5. the data path: drawing a batch from float32 images in memory (what training does) against uint8
   images converted per batch, each as a share of a training step.

    python benchmarks/throughput.py --preset mnist --data-dir ../shared/data/mnist --profile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.config import RunConfig
from ddpmkit.data import build_dataset
from ddpmkit.data.images import from_model_range, to_model_range
from ddpmkit.training.step import build_state, train_step

ROOT = Path(__file__).resolve().parents[1]
# the stage-3 mnist preset (eps, no attention at 7x7, NHWC): a U-Net at 28-14-7-4 with widths 16-32-64-64
STAGE_3 = {
    "model.unet.patch_size": 1,
    "model.unet.base_channels": 16,
    "model.unet.channel_mult": (1, 2, 4, 4),
}
VARIANTS = {  # name -> overrides on the preset (the mnist preset's history: before the recipe study, then)
    "before": {**STAGE_3, "train.channels_last": False, "model.unet.attn_resolutions": (7,)},
    "channels_last": {**STAGE_3, "train.channels_last": True, "model.unet.attn_resolutions": (7,)},
    "stage_3": STAGE_3,
    "per_tensor": {},  # the preset with the optimizer and EMA updating one tensor at a time (as before)
    "preset": {},  # now: 2x2 patches, a U-Net at 14-7-4 with widths 32-64-64
}


def _ema_loop(ema_model, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema_model.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def step_fn(name: str, state):
    """train_step for a variant; `before` and `per_tensor` put back the per-tensor AdamW and EMA loops."""
    if name not in ("before", "per_tensor"):
        return lambda: train_step(state)
    group = state.opt.param_groups[0]
    state.opt = type(state.opt)(state.model.parameters(), lr=group["lr"], weight_decay=group["weight_decay"],
                                foreach=False)  # fmt: skip

    def step():
        with mock.patch("ddpmkit.training.step.ema_update", _ema_loop):
            return train_step(state)

    return step


def matmul_peak(threads: int, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n x n fp32 matmul over a few n, `threads` intra-op threads."""
    torch.set_num_threads(threads)
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_image(cfg: RunConfig, data) -> float:
    """Forward + backward FLOPs of one training step, per image (one optimizer step's batch)."""
    state = build_state(cfg, data, torch.device("cpu"))
    x0 = state.x_all[: cfg.train.batch_size]
    t = torch.randint(0, state.diffusion.num_timesteps, (len(x0),))
    with FlopCounterMode(display=False) as counter:
        state.diffusion.training_loss(state.net, x0, t, torch.randn_like(x0)).mean().backward()
    return counter.get_total_flops() / len(x0)


def images_per_s(states: dict, seconds: float, rounds: int) -> dict[str, float]:
    """Median images/s of each state's train_step, the variants taking turns for `rounds` rounds."""
    rates = {k: [] for k in states}
    steps_of = {name: step_fn(name, state) for name, state in states.items()}
    for _ in range(rounds):
        for name, state in states.items():
            step = steps_of[name]
            step()  # warm
            steps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                step()
                steps += 1
            rates[name].append(steps * state.cfg.train.batch_size / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def profile_steps(name: str, state, steps: int = 5, top: int = 15) -> str:
    step = step_fn(name, state)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def data_path_us(x_all: torch.Tensor, batch: int, reps: int = 2000) -> dict[str, float]:
    """Microseconds to draw one batch: float32 in memory vs uint8 in memory, converted per batch."""
    u8 = from_model_range(x_all)
    assert torch.equal(to_model_range(u8), x_all), "the uint8 path must give the same batch"
    gen = torch.Generator().manual_seed(0)
    paths = {
        "float32 (training)": lambda i: x_all[i],
        "uint8 + to_model_range": lambda i: to_model_range(u8[i]),
    }
    out = {}
    for name, draw in paths.items():
        idx = [torch.randint(0, len(x_all), (batch,), generator=gen) for _ in range(reps)]
        t0 = time.perf_counter()
        for i in idx:
            draw(i)
        out[name] = (time.perf_counter() - t0) / reps * 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mnist")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=15.0, help="per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    peaks = {k: matmul_peak(k) for k in (1, 2)}
    print(f"fp32 matmul peak: {peaks[1]:.1f} GFLOP/s (1 thread), {peaks[2]:.1f} GFLOP/s (2 threads)")
    torch.set_num_threads(args.threads)
    base = RunConfig.from_preset(args.preset, {"data.data_dir": str(args.data_dir)})
    data = build_dataset(base.data, seed=0)
    states, fpi = {}, {}
    for name in args.variants.split(","):
        cfg = base.replace(**VARIANTS[name])
        fpi[name] = flops_per_image(cfg, data)
        print(f"{args.preset}, {name}: {fpi[name] / 1e9:.3f} GFLOP per training image (forward + backward), "
              f"batch {cfg.train.batch_size}")  # fmt: skip
        states[name] = build_state(cfg, data, torch.device("cpu"))
    rates = images_per_s(states, args.seconds, args.rounds)
    peak = peaks[min(args.threads, 2)]
    print(f"\n| variant ({args.threads} thread) | images/s | GFLOP/s | MFU |\n|---|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {r:.1f} | {r * fpi[name] / 1e9:.1f} | {r * fpi[name] / 1e9 / peak:.1%} |")
    step_us = 1e6 * base.train.batch_size / max(rates.values())
    mib = data.x.nbytes / 2**20
    print(f"\ndata path ({args.threads} thread, batch {base.train.batch_size}, {mib:.0f} MiB as float32):")
    for name, us in data_path_us(data.x, base.train.batch_size).items():
        print(f"  {name}: {us:.0f} us per batch ({us / step_us:.2%} of a training step)")
    if args.profile:
        for name, state in states.items():
            print(f"\nprofile of 5 steps, {name}:\n{profile_steps(name, state)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
