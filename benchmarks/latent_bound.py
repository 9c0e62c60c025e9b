"""Add the clip bound to a latent run trained before ddpmkit stored one (`space.bound`, the largest
|value| of its scaled training latents): the run's own autoencoder and scale encode its training
set again, exactly as `ddpm train --latent` now does when it starts, and model.safetensors is
written again (atomically, with a new integrity hash); the weights are unchanged.

    python benchmarks/latent_bound.py RUN_DIR
"""

from __future__ import annotations

import sys

import torch

from ddpmkit import checkpoint as ckpt
from ddpmkit.data import build_dataset
from ddpmkit.data.latent import latent_bound
from ddpmkit.io import load_tensors, read_metadata
from ddpmkit.run import load_run


def main(run_dir: str) -> int:
    run = load_run(run_dir)
    if run.space.name != "latent":
        raise SystemExit(f"{run_dir} is not a latent run")
    tensors = load_tensors(run.run_dir / ckpt.MODEL)
    if float(tensors.get("space.bound", torch.zeros(1))[0]) > 0:
        print(f"{run_dir} has its bound already: {float(tensors['space.bound'][0]):.4f}")
        return 0
    x = run.space.to_model(build_dataset(run.cfg.data, seed=run.cfg.train.seed).x, progress=True)
    tensors["space.bound"] = torch.tensor([latent_bound(x)])
    meta = read_metadata(run.run_dir / ckpt.MODEL)
    ckpt.save_model(run.run_dir, run.cfg, tensors, int(meta["step"]), meta["space"])
    print(f"{run_dir}: bound {latent_bound(x):.4f} added")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
