"""How well a trained image model predicts x0 from x_t, timestep by timestep: the mean squared
error of its (clipped) x0 prediction on training images noised by q(x_t | x0), beside the error of
always predicting the mean image (the best possible where no signal is left).

    python benchmarks/x0_error.py runs/mnist runs/mnist_v --t 999,990,950,900,800,600,400,200,50

Used in docs/benchmarks.md to explain why DDIM fails on an eps-prediction model under the cosine
schedule (its x0 at the top timesteps is worse than the mean image) and works with `--objective v`.
"""

from __future__ import annotations

import argparse

import torch

from ddpmkit.data import build_dataset
from ddpmkit.run import load_run


@torch.inference_mode()
def x0_errors(run_dir: str, ts: list[int], n: int, seed: int) -> tuple[dict[int, float], float]:
    run = load_run(run_dir)
    x0 = build_dataset(run.cfg.data, seed=seed).x[:n]
    g = torch.Generator().manual_seed(seed)
    errors = {}
    for t in ts:
        tt = torch.full((len(x0),), t)
        x_t = run.diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        out, _ = run.diffusion.split_output(run.diffusion.model_output(run.model, x_t, tt))
        x0_pred = run.diffusion.predict_x0(x_t, tt, out).clamp(-1, 1)
        errors[t] = ((x0_pred - x0) ** 2).mean().item()
    return errors, ((x0 - x0.mean(0)) ** 2).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--t", default="999,990,950,900,800,600,400,200,50")
    p.add_argument("-n", type=int, default=64, help="training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ts = [int(t) for t in args.t.split(",")]
    cols = {d: x0_errors(d, ts, args.n, args.seed) for d in args.run_dirs}
    ab = load_run(args.run_dirs[0]).diffusion.alphas_cumprod
    print("| t | alpha_bar_t | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for t in ts:
        print(f"| {t} | {ab[t].item():.2g} | " + " | ".join(f"{e[t]:.3f}" for e, _ in cols.values()) + " |")
    print("| mean image | | " + " | ".join(f"{m:.3f}" for _, m in cols.values()) + " |")


if __name__ == "__main__":
    main()
