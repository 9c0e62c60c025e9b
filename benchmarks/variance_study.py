"""Improved DDPM on MNIST (docs/variance.md): bits/dim and ancestral sampling at few steps, for runs of
`recipe_study.py` (the preset, `learned_range_hybrid`, `vlb_is`), one thread each, side by side.

For every run: the NLL bound of >= 1000 test images (`ddpm eval --nll`, a stratified estimate with
one t per `--t-stride` steps: mean, standard error over images, seconds), then `ddpm sample --sampler
ddpm` at each of `--steps` (respaced; the learned variance re-derived for the respaced chain) scored by
`ddpm eval` on n samples. Results go to RUN/variance.json; `--table` prints the markdown tables.

    python benchmarks/variance_study.py --cache-dir cache/classifiers preset learned_range_hybrid
    python benchmarks/variance_study.py --table preset learned_range_hybrid vlb_is
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recipe_study import DDPM, ONE_THREAD, ROOT


def nll(run_dir: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    cmd = [*DDPM, "eval", "--nll", str(run_dir), "--subset", str(args.nll_images), "--t-stride",
           str(args.t_stride), "--threads", "1", "--json", "-q"]  # fmt: skip
    done = subprocess.run(cmd, check=True, env=ONE_THREAD, capture_output=True, text=True)
    return {**json.loads(done.stdout), "seconds": round(time.perf_counter() - start, 1)}


def ancestral(run_dir: Path, steps: int, args: argparse.Namespace) -> dict:
    samples = run_dir.parent / f"{run_dir.name}.ddpm-{steps}.npz"
    start = time.perf_counter()
    if not samples.is_file():
        cmd = [*DDPM, "sample", str(run_dir), "-n", str(args.n), "--sampler", "ddpm", "--steps", str(steps),
               "--threads", "1", "--out", str(samples), "-q"]  # fmt: skip
        subprocess.run(cmd, check=True, env=ONE_THREAD)
    seconds = time.perf_counter() - start
    cache = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    cmd = [*DDPM, "eval", str(samples), "--dataset", "mnist", "--data-dir", str(args.data_dir),
           "--threads", "1", "--json", "-q", *cache]  # fmt: skip
    ev = json.loads(subprocess.run(cmd, check=True, env=ONE_THREAD, capture_output=True, text=True).stdout)
    return {"steps": steps, "fid": ev["fid"], "fid_reference": ev.get("fid_reference"),
            "confident": ev["confident_fraction"], "sample_seconds": round(seconds, 1)}  # fmt: skip


def study(name: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / name
    path = run_dir / "variance.json"
    result = json.loads(path.read_text()) if path.is_file() else {"name": name, "ancestral": {}}
    if "nll" not in result and args.nll_images:
        result["nll"] = nll(run_dir, args)
        path.write_text(json.dumps(result, indent=1))
    for steps in args.steps:
        if str(steps) not in result["ancestral"]:
            result["ancestral"][str(steps)] = ancestral(run_dir, steps, args)
            path.write_text(json.dumps(result, indent=1))
        print(name, json.dumps(result["ancestral"][str(steps)]), flush=True)
    return result


def tables(names: list[str], out: Path) -> str:
    rows = [
        json.loads((out / n / "variance.json").read_text())
        for n in names
        if (out / n / "variance.json").is_file()
    ]
    lines = ["| run | NLL bits/dim (± s.e.) | images | t-stride | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        if nl := r.get("nll"):
            bpd = f"{nl['bpd']:.4f} ± {nl['bpd_sem']:.4f}"
            lines.append(f"| {r['name']} | {bpd} | {nl['n']} | {nl['t_stride']} | {nl['seconds']:.0f} |")
    steps = sorted({int(s) for r in rows for s in r["ancestral"]})
    lines += ["", "| run | " + " | ".join(f"ddpm {s} steps" for s in steps) + " |",
              "|---|" + "---|" * len(steps)]  # fmt: skip
    for r in rows:
        a = r["ancestral"]
        cells = [f"{a[str(s)]['fid']:.2f}" if str(s) in a else "" for s in steps]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run names under --out (recipe_study.py's variants)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--cache-dir", type=Path, default=None, help="classifier cache of `ddpm eval`")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "recipe" / "mnist")
    p.add_argument("-n", type=int, default=1000, help="samples scored per step count")
    p.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[25, 50, 100, 1000])
    p.add_argument("--nll-images", type=int, default=1000, help="test images of the NLL (0: skip it)")
    p.add_argument("--t-stride", type=int, default=10)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the tables of finished runs and stop")
    args = p.parse_args()
    if not args.table:
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda n: study(n, args), args.runs))
    print(tables(args.runs, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
