"""Sampler study v2: sample quality vs model calls (NFE) for every registered sampler on a trained run.

Images are scored by `ddpm eval`'s FID (the dataset classifier's features, the same
`evaluate_images` call), 2-D points by the SW1 ratio of the run's report; seconds per sample beside
each. Every row draws the same initial noise (seed 0).

    python benchmarks/sampler_study.py runs/mnist --data-dir ../shared/data/mnist \
        --cache-dir cache/classifiers -n 1000 --nfe 5,10,20 --out docs/study/mnist
    python benchmarks/sampler_study.py runs/mnist ... --samplers ddpm --nfe 1000       # the reference
    python benchmarks/sampler_study.py runs/mnist ... --samplers dpm++2m:uniform,dpm++2m:karras
    python benchmarks/sampler_study.py --report docs/study/mnist                        # table + plot

A sampler is a registry name, optionally with ":GRID" (default: its own grid). For a target NFE it
runs the most steps whose model calls fit (heun: (NFE + 1) // 2 steps). Rows are appended to
OUT.jsonl as they finish, so two 1-thread processes can share the 2 cores and an interrupted
study resumes where it stopped (rows already there are skipped unless --redo).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ddpmkit.config import SAMPLERS, SampleConfig  # noqa: E402
from ddpmkit.eval import score_report  # noqa: E402
from ddpmkit.eval.images import evaluate_images  # noqa: E402
from ddpmkit.run import generate, load_run  # noqa: E402
from ddpmkit.samplers import nfe, sampler_grid  # noqa: E402


def options_for(name: str, target: int, T: int, threshold: float = 0.0) -> SampleConfig:
    """NAME[:GRID] with the most steps whose model calls fit in `target` NFE."""
    sampler, _, grid = name.partition(":")
    fits = lambda s: nfe(SampleConfig(sampler=sampler, steps=s), T) <= target  # noqa: E731
    steps = max(s for s in range(1, min(target, T) + 1) if fits(s))
    return SampleConfig(sampler=sampler, steps=steps, grid=grid or None, threshold=threshold)


def measure(run, options: SampleConfig, args) -> dict:
    T = run.diffusion.num_timesteps
    t0 = time.perf_counter()
    x, _ = generate(run, args.n, options, seed=args.seed, progress=False)
    seconds = time.perf_counter() - t0
    row = {
        "dataset": run.cfg.data.dataset, "sampler": options.sampler, "grid": sampler_grid(options),
        "threshold": options.threshold, "steps": options.steps, "nfe": nfe(options, T), "n": args.n,
        "seconds_per_sample": seconds / args.n, "threads": torch.get_num_threads(), "seed": args.seed,
    }  # fmt: skip
    data = run.space.to_data(x)
    if run.space.name == "points":
        return {**row, **score_report(run.space, data, run.cfg.data.dataset)}
    r = evaluate_images(
        data, run.cfg.data.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, reference_draws=3
    )
    return {**row, **{k: r[k] for k in ("fid", "fid_reference", "precision", "recall")}}


def load_rows(out: Path) -> list[dict]:
    path = out.with_suffix(".jsonl")
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def key(row: dict) -> tuple:
    return row["sampler"], row["grid"], row["nfe"], row.get("threshold", 0.0), row["n"], row.get("seed", 0)


def label(row: dict) -> str:
    default = getattr(SAMPLERS.get(row["sampler"]), "default_grid", None)
    extra = "" if row["grid"] == default else f" ({row['grid']})"
    return row["sampler"] + extra + (f" thr {row['threshold']}" if row.get("threshold") else "")


def pivot(rows, metric: str) -> str:
    """One line per sampler (and grid), one column per NFE: the metric, seed 0. Heun's 2 S - 1 calls
    go in the column of the even target (marked *: one call fewer)."""
    even = {r["nfe"] for r in rows if r["sampler"] != "heun"}
    column = lambda r: r["nfe"] + 1 if r["nfe"] not in even and r["nfe"] + 1 in even else r["nfe"]  # noqa: E731
    nfes = sorted({column(r) for r in rows})
    cells: dict[str, dict[int, str]] = {}
    for r in rows:
        cells.setdefault(label(r), {})[column(r)] = f"{r[metric]:.2f}" + (
            "*" if column(r) != r["nfe"] else ""
        )
    name = "SW1 ratio" if metric == "swd_ratio" else "FID"
    lines = [f"| {name} at NFE | " + " | ".join(map(str, nfes)) + " |", "|---|" + "---|" * len(nfes)]
    for sampler, by_nfe in cells.items():
        lines.append(f"| {sampler} | " + " | ".join(by_nfe.get(k, "") for k in nfes) + " |")
    return "\n".join(lines) + "\n"


def seed_spread(out: Path, metric: str) -> str:
    """Mean and standard deviation over seeds, for the settings measured with more than one."""
    by_key: dict[tuple, dict[int, float]] = {}
    for r in load_rows(out):
        by_key.setdefault(key(r)[:-1], {})[r.get("seed", 0)] = r[metric]
    lines = [
        f"| sampler | grid | NFE | seeds | mean {metric} | sd | values |",
        "|---|---|---|---|---|---|---|",
    ]
    for (sampler, grid, nfe_, _, _), vals in sorted(by_key.items()):
        if len(vals) > 1:
            v = list(vals.values())
            mean = sum(v) / len(v)
            sd = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5
            lines.append(f"| {sampler} | {grid} | {nfe_} | {len(v)} | {mean:.3f} | {sd:.3f} | "
                         + ", ".join(f"{x:.2f}" for x in v) + " |")  # fmt: skip
    return "Spread over initial-noise seeds:\n\n" + "\n".join(lines) + "\n" if len(lines) > 2 else ""


def report(out: Path) -> str:
    """OUT.md (table) and OUT.png (quality vs NFE, one line per sampler) from OUT.jsonl."""
    rows = {key(r): r for r in load_rows(out) if r.get("seed", 0) == 0}.values()  # latest row of each key
    rows = sorted(
        rows, key=lambda r: (list(SAMPLERS).index(r["sampler"]), r["grid"], r.get("threshold", 0), r["nfe"])
    )
    points = "swd_ratio" in next(iter(rows))
    metric = "swd_ratio" if points else "fid"
    if points:
        lines = [
            "| sampler | grid | steps | NFE | n | SW1 ratio | s/sample |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {label(r)} | {r['grid']} | {r['steps']} | {r['nfe']} | {r['n']} | "
                  f"{r['swd_ratio']:.3f} | {r['seconds_per_sample']:.5f} |" for r in rows]  # fmt: skip
    else:
        lines = ["| sampler | grid | steps | NFE | n | FID | real-data FID | precision | recall | s/sample |",
                 "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {label(r)} | {r['grid']} | {r['steps']} | {r['nfe']} | {r['n']} | {r['fid']:.2f} | "
                  f"{r['fid_reference']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                  f"{r['seconds_per_sample']:.3f} |" for r in rows]  # fmt: skip
    table = (
        pivot(rows, metric)
        + "\n"
        + seed_spread(out, metric)
        + "\nAll rows (seed 0):\n\n"
        + "\n".join(lines)
        + "\n"
    )
    out.with_suffix(".md").write_text(table)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    refs = [r for r in rows if r["nfe"] >= 1000]
    for name in dict.fromkeys(label(r) for r in rows):
        pts = sorted((r["nfe"], r[metric]) for r in rows if label(r) == name and r["nfe"] < 1000)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name, lw=1.2)
    for r in refs:
        ax.axhline(r[metric], color="k", ls=":", lw=1, label=f"{label(r)}, {r['nfe']} steps")
    if not points:
        ax.axhline(
            sum(r["fid_reference"] for r in rows) / len(rows), color="0.6", ls="--", lw=1, label="real images"
        )
    dataset = next(iter(rows))["dataset"]
    ax.set(xscale="log", yscale="log", xlabel="model calls per sample (NFE)",
           ylabel="SW1 ratio (1 = real data)" if points else "FID (classifier features)",
           title=f"{dataset}: quality vs NFE (n = {next(iter(rows))['n']})")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(out.with_suffix(".png"), dpi=110, bbox_inches="tight")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--nfe", default="5,10,20,50,100", help="target model calls per sample")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="NAME or NAME:GRID, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="initial noise (the table shows seed 0 only)")
    p.add_argument("--threshold", type=float, default=0.0, help="dynamic thresholding percentile (images)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--redo", action="store_true", help="measure rows already in OUT.jsonl again")
    p.add_argument("--report", metavar="OUT", help="only write OUT.md and OUT.png from OUT.jsonl")
    p.add_argument("--out", default="docs/study/mnist")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.report)))
        return
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    T = run.diffusion.num_timesteps
    for name in [s for s in args.samplers.split(",") if s]:
        for target in [int(v) for v in args.nfe.split(",")]:
            options = options_for(name, target, T, args.threshold)
            planned = {"sampler": options.sampler, "grid": sampler_grid(options), "nfe": nfe(options, T),
                       "threshold": options.threshold, "n": args.n, "seed": args.seed}  # fmt: skip
            if key(planned) in {key(r) for r in load_rows(out)} and not args.redo:
                continue
            row = measure(run, options, args)
            with out.with_suffix(".jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(report(out))


if __name__ == "__main__":
    main()
