"""Where does a learned-variance run's bound go? Per timestep t, the bits/dim term L_t of test images
(the decoder at t = 0, the KL for t > 0) with the run's own variance head, against the same mean
with the fixed variances (v = -1: beta~_t, v = +1: beta_t) and the best constant v on a grid: if the
head is right, "own" is at or below the best constant; if the fixed variances lose by much with
this run's mean, it is the mean that is worse, not the variance (docs/variance.md).

    python benchmarks/variance_per_t.py benchmarks/out/recipe/mnist/learned_range_hybrid \
        --data-dir ../shared/data/mnist -n 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data.images import load_image_dataset, to_model_range
from ddpmkit.run import load_run
from ddpmkit.vlb import vb_terms_from_output

TS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 300, 600, 900)


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("-n", type=int, default=200, help="test images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run_dir)
    d, model = run.diffusion, run.model
    if not d.learns_variance or d.variance != "learned_range":
        raise SystemExit(f"{args.run_dir} does not learn a learned_range variance")
    cfg = run.cfg.data
    c, size = run.data_shape[0], run.data_shape[-1]
    test = load_image_dataset(cfg.dataset, split="test", data_dir=args.data_dir, image_size=size, channels=c)
    x0 = to_model_range(test.images[: args.n])
    g = torch.Generator().manual_seed(args.seed)
    grid = np.round(np.linspace(-1, 9, 41), 2)
    print(f"{args.run_dir}: L_t in bits/dim, mean over {len(x0)} test images")
    print("| t | own head (mean v) | v = -1 (beta~) | v = +1 (beta) | best constant v |")
    print("|---|---|---|---|---|")
    for t in TS:
        tt = torch.full((len(x0),), t, dtype=torch.long)
        x_t = d.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        out, var = d.split_output(d.model_output(model, x_t, tt).float())

        def term(v, out=out, x_t=x_t, tt=tt) -> float:
            return float(vb_terms_from_output(d, out, v, x0, x_t, tt, (-1.0, 1.0)).mean())

        const = {float(v): term(torch.full_like(var, float(v))) for v in grid}
        best = min(const, key=const.get)
        print(f"| {t} | {term(var):.4f} ({float(var.mean()):.2f}) | {const[-1.0]:.4f} | {const[1.0]:.4f} | "
              f"{const[best]:.4f} ({best:g}) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
