"""Learned variance on 2-D points (docs/variance.md): each point preset as it is (fixed variance) and
with `--variance learned_range --loss hybrid`, the same steps, then ancestral DDPM sampling at `--steps`
(respaced) over several noise seeds, scored by `ddpm eval` (SW1 ratio to the noise floor, n = 2000).

    python benchmarks/variance_points.py --datasets dino,moons --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from recipe_study import DDPM, ONE_THREAD, ROOT

VARIANTS = {"fixed": [], "learned_range_hybrid": ["--variance", "learned_range", "--loss", "hybrid"]}


def score(run_dir: Path, sampler: list[str], seed: int, n: int) -> float:
    out = run_dir / f"s-{'-'.join(sampler)}-{seed}.npz"
    cmd = [*DDPM, "sample", str(run_dir), "-n", str(n), *sampler, "--seed", str(seed), "--threads", "1",
           "--out", str(out), "--overwrite", "-q"]  # fmt: skip
    subprocess.run(cmd, check=True, env=ONE_THREAD)
    dataset = json.loads((run_dir / "config.json").read_text())["data"]["dataset"]
    done = subprocess.run([*DDPM, "eval", str(out), "--dataset", dataset, "--json", "-q"], check=True,
                          env=ONE_THREAD, capture_output=True, text=True)  # fmt: skip
    return float(json.loads(done.stdout)["swd_ratio"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="dino,moons")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "variance_points")
    args = p.parse_args()
    rows = [f"| data | variance | ddpm, {args.steps} steps (uniform grid): SW1 ratio, mean (min-max over "
            "seeds) | the preset's sampler |", "|---|---|---|---|"]  # fmt: skip
    for dataset in args.datasets.split(","):
        for name, flags in VARIANTS.items():
            run_dir = args.out / dataset / name
            if not (run_dir / "model.safetensors").is_file():
                subprocess.run([*DDPM, "train", "--dataset", dataset, "-o", str(run_dir), "--overwrite", "-q",
                                "--no-report", *flags], check=True, env=ONE_THREAD)  # fmt: skip
            ancestral = ["--sampler", "ddpm", "--steps", str(args.steps), "--grid", "uniform"]
            ddpm = [score(run_dir, ancestral, s, args.n) for s in range(args.seeds)]
            own = [score(run_dir, [], s, args.n) for s in range(args.seeds)]
            row = (f"| {dataset} | {name} | {statistics.mean(ddpm):.2f} ({min(ddpm):.2f}-{max(ddpm):.2f}) | "
                   f"{statistics.mean(own):.2f} ({min(own):.2f}-{max(own):.2f}) |")  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
