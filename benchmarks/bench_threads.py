"""Do the thread defaults hold on a busy machine? `ddpm sample` wall time for a points run and an
image run with `--threads 1`, `2` and `0` (auto: ddpmkit.threads), on an idle machine and beside
`--busy K` processes that keep K cores busy (spin loops started by this script), side by side.

    python benchmarks/bench_threads.py POINTS_RUN IMAGE_RUN --busy 0,2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

JOBS = {  # run -> sample flags
    "points": ["-n", "2000", "--sampler", "ddpm", "--steps", "all"],
    "images": ["-n", "64"],
}


def spin() -> None:
    while True:
        pass


def timed(run: Path, flags: list[str], threads: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "ddpmkit.cli", "sample", str(run), *flags, "--threads", str(threads),
           "--out", str(out), "--overwrite", "-q"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points_run", type=Path)
    p.add_argument("image_run", type=Path)
    p.add_argument("--busy", default="0,2", help="numbers of busy cores to measure beside")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_threads"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; seconds per `ddpm sample` (startup included), median of {args.repeat}")
    print("| busy cores | run | --threads 1 | --threads 2 | --threads 0 (auto) |")
    print("|---|---|---|---|---|")
    for busy in (int(b) for b in args.busy.split(",")):
        spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for s in spinners:
            s.start()
        time.sleep(65)  # let the 1-minute load average see them (auto reads it), or forget earlier work
        try:
            for name, run in (("points", args.points_run), ("images", args.image_run)):
                cells = [statistics.median(timed(run, JOBS[name], th, args.out / f"{name}-{th}.npz")
                                           for _ in range(args.repeat)) for th in (1, 2, 0)]  # fmt: skip
                print(f"| {busy} | {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)
        finally:
            for s in spinners:
                s.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
