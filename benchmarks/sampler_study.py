"""FID vs number of sampling steps for DDPM (fixed-small and fixed-large variance) and DDIM (eta 0)
on a trained image run, scored in the dataset classifier's feature space (`ddpm eval`'s FID).

    python benchmarks/sampler_study.py runs/mnist --data-dir ../shared/data/mnist -n 500 \
        --out docs/sampler_study

Writes OUT.json, OUT.md (table) and OUT.png (plot). Every row uses the same initial noise (seed).
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

from ddpmkit.checkpoint import load_run  # noqa: E402
from ddpmkit.data.images import from_model_range  # noqa: E402
from ddpmkit.diffusion import build_diffusion  # noqa: E402
from ddpmkit.evaluate import evaluate_images  # noqa: E402
from ddpmkit.generate import generate  # noqa: E402

SAMPLERS = (
    ("DDPM, fixed-small", "ddpm", "fixed_small"),
    ("DDPM, fixed-large", "ddpm", "fixed_large"),
    ("DDIM, eta 0", "ddim", "fixed_small"),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--steps", default="10,20,50,100,1000")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/sampler_study")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    rows = []
    for label, sampler, variance in SAMPLERS:
        run.diffusion = build_diffusion(replace(run.cfg.diffusion, variance=variance))
        for steps in [int(s) for s in args.steps.split(",")]:
            t0 = time.perf_counter()
            x, _ = generate(run, args.n, sampler=sampler, steps=steps, seed=0, progress=False)
            seconds = time.perf_counter() - t0
            r = evaluate_images(
                from_model_range(x).permute(0, 2, 3, 1).numpy(),
                run.cfg.data.dataset,
                data_dir=args.data_dir,
                cache_dir=args.cache_dir,
                reference_draws=3,
            )
            row = {
                "sampler": label,
                "steps": steps,
                "fid": r["fid"],
                "fid_reference": r["fid_reference"],
                "precision": r["precision"],
                "recall": r["recall"],
                "seconds": seconds,
                "n": args.n,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"| sampler | steps | FID | precision | recall | s per {args.n} |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['sampler']} | {r['steps']} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
        f"{r['seconds']:.0f} |"
        for r in rows
    ]
    lines.append(f"\nReal-data reference FID at n={args.n}: {rows[0]['fid_reference']:.2f}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, _, _ in SAMPLERS:
        pts = [(r["steps"], r["fid"]) for r in rows if r["sampler"] == label]
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.axhline(rows[0]["fid_reference"], color="0.5", ls="--", label=f"real images (n={args.n})")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sampling steps",
        ylabel="FID (classifier features)",
        title=f"{run.cfg.data.dataset}: FID vs sampling steps",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out.with_suffix(".png"), dpi=110, bbox_inches="tight")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
