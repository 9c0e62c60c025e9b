"""FID vs number of sampling steps for DDPM (fixed-small and fixed-large variance) and DDIM (eta 0)
on a trained image run, scored in the dataset classifier's feature space (`ddpm eval`'s FID).

    python benchmarks/sampler_study.py runs/mnist --data-dir ../shared/data/mnist -n 500 \
        --out docs/sampler_study

Writes OUT.json, OUT.md (table) and OUT.png (plot). Every row uses the same initial noise (seed).
On 2 cores, split the work over two 1-thread processes with --samplers/--steps and --append (each
adds its rows to OUT.json and redraws the table and plot from all rows), e.g.

    python benchmarks/sampler_study.py runs/mnist --steps 1000 --samplers ddpm-small --append ...
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ddpmkit.config import SampleConfig  # noqa: E402
from ddpmkit.diffusion import build_diffusion  # noqa: E402
from ddpmkit.eval.images import evaluate_images  # noqa: E402
from ddpmkit.run import generate, load_run  # noqa: E402

SAMPLERS = {  # key: (label, sampler, variance)
    "ddpm-small": ("DDPM, fixed-small", "ddpm", "fixed_small"),
    "ddpm-large": ("DDPM, fixed-large", "ddpm", "fixed_large"),
    "ddim": ("DDIM, eta 0", "ddim", "fixed_small"),
}


def measure(run, key: str, steps: int, args) -> dict:
    """Sample args.n images with one sampler and score them against the real data."""
    label, sampler, variance = SAMPLERS[key]
    run.diffusion = build_diffusion(replace(run.cfg.diffusion, variance=variance))
    options = SampleConfig(sampler=sampler, steps=steps)  # DDIM: eta 0; clip: the space's default
    t0 = time.perf_counter()
    x, _ = generate(run, args.n, options, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    r = evaluate_images(
        run.space.to_data(x),
        run.cfg.data.dataset,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        reference_draws=3,
    )
    keys = ("fid", "fid_reference", "precision", "recall")
    return {"sampler": label, "steps": steps, **{k: r[k] for k in keys}, "seconds": seconds, "n": args.n}


def write_outputs(rows: list[dict], out: Path, title: str) -> str:
    """OUT.json, OUT.md (table) and OUT.png (FID vs steps, one line per sampler)."""
    order = [label for label, _, _ in SAMPLERS.values()]
    rows = sorted(rows, key=lambda r: (order.index(r["sampler"]), r["steps"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| sampler | steps | n | FID | real-data FID at n | precision | recall | seconds |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['sampler']} | {r['steps']} | {r['n']} | {r['fid']:.2f} | {r['fid_reference']:.2f} | "
        f"{r['precision']:.3f} | {r['recall']:.3f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in order:
        pts = [(r["steps"], r["fid"]) for r in rows if r["sampler"] == label]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    for n in sorted({r["n"] for r in rows}):
        ref = [r["fid_reference"] for r in rows if r["n"] == n]
        ax.axhline(sum(ref) / len(ref), color="0.5", ls="--", lw=1, label=f"real images (n={n})")
    ax.set(
        xscale="log", yscale="log", xlabel="sampling steps", ylabel="FID (classifier features)", title=title
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out.with_suffix(".png"), dpi=110, bbox_inches="tight")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--steps", default="10,20,50,100,1000")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"subset of {', '.join(SAMPLERS)}")
    p.add_argument("--append", action="store_true", help="add to OUT.json (same sampler+steps: replaced)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/sampler_study")
    args = p.parse_args()
    keys = [k for k in args.samplers.split(",") if k]
    if unknown := set(keys) - set(SAMPLERS):
        p.error(f"unknown samplers {sorted(unknown)}; choose from {', '.join(SAMPLERS)}")
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    out = Path(args.out)
    new = []
    for key in keys:
        for steps in [int(s) for s in args.steps.split(",")]:
            new.append(measure(run, key, steps, args))
            print(json.dumps(new[-1]), flush=True)
    old = (
        json.loads(out.with_suffix(".json").read_text())
        if args.append and out.with_suffix(".json").exists()
        else []
    )
    done = {(r["sampler"], r["steps"]) for r in new}
    rows = [r for r in old if (r["sampler"], r["steps"]) not in done] + new
    print(write_outputs(rows, out, f"{run.cfg.data.dataset}: FID vs sampling steps"))


if __name__ == "__main__":
    main()
