"""ddpmkit <-> diffusers, measured (docs: README "Using diffusers models"; needs `pip install diffusers`).

    # 1. the two networks under one trainer, side by side (two processes, one thread each), then the
    #    diffusers_unet run exported and sampled by DDPMPipeline against ddpmkit's `ddpm` sampler
    python benchmarks/diffusers_interop.py pair --data-dir ../shared/data/mnist --minutes 20 -n 1000
    # 2. a folder diffusers wrote itself (benchmarks/peer_train.py --save-pretrained DIR), imported:
    #    ddpmkit's default sampler at 20 steps against DDPMPipeline at 1000 steps, same weights
    python benchmarks/diffusers_interop.py peer --pipeline DIR --data-dir ../shared/data/mnist -n 1000
    python benchmarks/diffusers_interop.py table   # results.json as a markdown table

FID and the other scores are `ddpm eval --dataset mnist` (the MNIST classifier's features, n samples
against the test set). Everything lands in --out (default benchmarks/out/diffusers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import DDPM, KEYS, record, sh  # benchmarks/common.py

HERE = Path(__file__).resolve().parent


def evaluate(args, npz: Path) -> dict:
    extra = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    metrics = json.loads(sh(*DDPM, "eval", str(npz), "--dataset", "mnist", "--data-dir", args.data_dir,
                            "--threads", str(args.threads), "--json", "-q", *extra))  # fmt: skip
    return {k: metrics.get(k) for k in KEYS}


def ddpm_sample(args, run: Path, name: str, *flags: str) -> dict:
    npz = args.out / f"{name}.npz"
    t0 = time.perf_counter()
    sh(*DDPM, "sample", str(run), "-n", str(args.n), "--out", str(npz), "--overwrite", "-q",
       "--threads", str(args.threads), *flags)  # fmt: skip
    return {"sample_s": round(time.perf_counter() - t0, 1), **evaluate(args, npz)}


def pipeline_sample(args, folder: Path, name: str, steps: int, seed: int = 0, n: int | None = None) -> dict:
    """n images (default -n) from diffusers' own DDPMPipeline.from_pretrained(folder) at `steps` steps."""
    import torch
    from diffusers import DDPMPipeline

    torch.set_num_threads(args.threads)
    pipe = DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    chunks, t0, n = [], time.perf_counter(), n or args.n
    for i, start in enumerate(range(0, n, args.batch)):
        # batch i draws from its own generator (seed + i) and is kept on disk, so that a longer run
        # reuses the batches an earlier one made
        k, part = min(args.batch, n - start), args.out / f"pipeline_{steps}_seed{seed + i}_b{args.batch}.npy"
        if part.exists() and len(np.load(part)) == k:
            chunks.append(np.load(part))
            continue
        g = torch.Generator().manual_seed(seed + i)
        images = pipe(batch_size=k, generator=g, num_inference_steps=steps, output_type="np").images
        chunks.append((images * 255).round().astype(np.uint8))
        np.save(part, chunks[-1])
        print(f"  {name}: {start + k}/{n} in {time.perf_counter() - t0:.0f} s", flush=True)
    npz = args.out / f"{name}.npz"
    np.savez(npz, arr_0=np.concatenate(chunks))
    return {"sample_s": round(time.perf_counter() - t0, 1), **evaluate(args, npz)}


def train_log(run: Path) -> dict:
    rows = (run / "train_log.csv").read_text().splitlines()
    head, last = rows[0].split(","), rows[-1].split(",")
    step, elapsed = int(last[head.index("step")]), float(last[-1])
    cfg = json.loads((run / "config.json").read_text())
    return {"steps": step, "train_images_per_s": round(step * cfg["train"]["batch_size"] / elapsed, 1)}


def pair(args) -> None:
    """The preset's U-Net and diffusers' UNet2DModel (model.kind diffusers_unet), trained at once."""
    runs = {"ddpmkit_unet": [], "diffusers_unet": ["--model.kind", "diffusers_unet"]}
    procs = {}
    for name, flags in runs.items():
        cmd = [*DDPM, "train", "--preset", "mnist", "--data-dir", args.data_dir, *flags,
               "--max-minutes", str(args.minutes), "--train.threads", "1", "--train.preview_every", "0",
               "--no-report", "-q", "-o", str(args.out / name), "--overwrite"]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        procs[name] = subprocess.Popen(cmd)
    for name, p in procs.items():
        if p.wait():
            sys.exit(f"{name}: training failed")
    from ddpmkit.models import count_parameters
    from ddpmkit.run import load_run

    for name in runs:
        run = args.out / name
        info = {"params": count_parameters(load_run(run).model), **train_log(run)}
        record(args.out, name, {**info, **ddpm_sample(args, run, name)})  # the run's default sampler
    run, folder = args.out / "diffusers_unet", args.out / "diffusers_unet-export"
    sh(*DDPM, "export", str(run), "--format", "diffusers", str(folder), "--overwrite")
    s = str(args.steps)
    record(
        args.out, f"export_pipeline_{s}", pipeline_sample(args, folder, f"export_pipeline_{s}", args.steps)
    )
    for seed in (0, 1):  # the same sampler in ddpmkit, and its spread over noise seeds
        name = f"export_ddpmkit_ddpm_{s}_seed{seed}"
        record(
            args.out,
            name,
            ddpm_sample(args, run, name, "--sampler", "ddpm", "--steps", s, "--seed", str(seed)),
        )


def peer(args) -> None:
    """A folder diffusers saved, imported: ddpmkit's default sampler vs DDPMPipeline at 1000 steps."""
    run = args.out / "peer-run"
    sh(*DDPM, "import", args.pipeline, "-o", str(run), "--dataset", "mnist", "--data-dir", args.data_dir,
       "--overwrite")  # fmt: skip
    if not (args.out / "peer_ddpmkit_default.npz").exists():
        record(args.out, "peer_ddpmkit_default", ddpm_sample(args, run, "peer_ddpmkit_default"))
    if args.skip_pipeline:
        return
    n = args.pipeline_n or args.n
    if n < args.n:  # the same number of ddpmkit's samples, for FIDs at equal n
        first = args.out / f"peer_ddpmkit_default_first{n}.npz"
        np.savez(first, arr_0=np.load(args.out / "peer_ddpmkit_default.npz")["arr_0"][:n])
        record(args.out, f"peer_ddpmkit_default_first{n}", evaluate(args, first))
    name = f"peer_pipeline_1000_n{n}"
    record(args.out, name, pipeline_sample(args, Path(args.pipeline), name, 1000, n=n))


def table(args) -> None:
    results = json.loads((args.out / "results.json").read_text())
    cols = ("params", "steps", "train_images_per_s", "sample_s", *KEYS)
    print("| run | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for name, r in results.items():
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("pair", "peer", "table"))
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "mnist"))
    p.add_argument("--out", type=Path, default=HERE / "out" / "diffusers")
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=100, help="pair: steps of the DDPMPipeline / ddpm comparison")
    p.add_argument("--batch", type=int, default=250, help="DDPMPipeline images per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pipeline", help="peer: the diffusers folder (peer_train.py --save-pretrained)")
    p.add_argument("--skip-pipeline", action="store_true", help="peer: ddpmkit's side only")
    p.add_argument("--pipeline-n", type=int, help="peer: DDPMPipeline samples at 1000 steps (default -n)")
    p.add_argument(
        "--cache-dir", default=str(HERE.parent / "cache" / "classifiers"), help="eval's classifiers"
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"pair": pair, "peer": peer, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
