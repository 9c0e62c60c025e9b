"""Side-by-side: ddpmkit's MNIST recipe vs Hugging Face diffusers and denoising-diffusion-pytorch,
each trained for the same wall-clock budget on this machine, sampled with the same sampler budget
(DDIM, S steps), and all scored by `ddpm eval` on the same number of samples.

The peers live in their own virtualenv (benchmarks/out/peers-venv; never project dependencies),
set up as ../shared/peers/README.md describes. Run from the repository root:

    python benchmarks/bench_peers.py --data-dir ../shared/data/mnist --minutes 5 -n 500 --steps 50

Writes benchmarks/out/peers/*.npz|json and prints a Markdown table (copy it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "peers"
VENV = HERE / "out" / "peers-venv"


def sh(*cmd: str) -> str:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ensure_peers_venv() -> Path:
    py = VENV / "bin" / "python"
    if py.exists():
        return py
    sh(sys.executable, "-m", "venv", str(VENV))
    sh(str(py), "-m", "pip", "install", "-q", "torch==2.13.0")
    sh(str(py), "-m", "pip", "install", "-q", "-c", str(HERE / ".." / "constraints.txt"), "diffusers==0.42.1")
    sh(str(py), "-m", "pip", "install", "-q", "--no-deps", "denoising-diffusion-pytorch==2.3.4")
    sh(
        str(py),
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        str(HERE / ".." / "constraints.txt"),
        "einops",
        "ema-pytorch",
        "accelerate",
        "scipy",
        "tqdm",
        "pillow",
    )
    return py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", help="classifier cache for `ddpm eval`")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ddpm = str(Path(sys.executable).with_name("ddpm"))
    py = ensure_peers_venv()
    results = []
    run = OUT / "ddpmkit-run"
    sh(
        ddpm,
        "train",
        "--preset",
        "mnist",
        "--data-dir",
        args.data_dir,
        "--max-minutes",
        str(args.minutes),
        "--train.threads",
        str(args.threads),
        "--train.preview_every",
        "0",
        "--train.checkpoint_every",
        "0",
        "--no-report",
        "-q",
        "-o",
        str(run),
    )
    log = (run / "train_log.csv").read_text().splitlines()[1:]
    steps_done, elapsed = int(log[-1].split(",")[0]), float(log[-1].split(",")[-1])
    t0 = time.perf_counter()
    sh(
        ddpm,
        "sample",
        str(run),
        "-n",
        str(args.n),
        "--sampler",
        "ddim",
        "--steps",
        str(args.steps),
        "--out",
        str(OUT / "ddpmkit.npz"),
        "-q",
    )
    from ddpmkit.checkpoint import load_run
    from ddpmkit.models import count_parameters

    info = {
        "lib": "ddpmkit",
        "params": count_parameters(load_run(run).model),
        "train_steps": steps_done,
        "train_images_per_s": steps_done * 64 / elapsed,
        "sampler": f"DDIM {args.steps} steps",
        "sample_s_per_image": (time.perf_counter() - t0) / args.n,
    }
    (OUT / "ddpmkit.json").write_text(json.dumps(info, indent=2))
    for lib in ("diffusers", "lucidrains"):
        sh(
            str(py),
            str(HERE / "peer_train.py"),
            "--lib",
            lib,
            "--data-dir",
            args.data_dir,
            "--minutes",
            str(args.minutes),
            "-n",
            str(args.n),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--out",
            str(OUT / f"{lib}.npz"),
        )
    for lib in ("ddpmkit", "diffusers", "lucidrains"):
        info = json.loads((OUT / f"{lib}.json").read_text())
        extra = ["--cache-dir", args.cache_dir] if args.cache_dir else []
        score = json.loads(
            sh(
                ddpm,
                "eval",
                str(OUT / f"{lib}.npz"),
                "--dataset",
                "mnist",
                "--data-dir",
                args.data_dir,
                "--json",
                "-q",
                *extra,
            )
        )
        results.append(
            {
                **info,
                **{
                    k: score[k] for k in ("fid", "fid_reference", "precision", "recall", "confident_fraction")
                },
            }
        )
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\n| library | params | train img/s | steps in {args.minutes:g} min | FID | precision | recall | "
        f"confident | sample s/img (DDIM {args.steps}) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['lib']} | {r['params']:,} | {r['train_images_per_s']:.0f} | {r['train_steps']} | "
            f"{r['fid']:.2f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['confident_fraction']:.3f} | "
            f"{r['sample_s_per_image']:.3f} |"
        )
    print(f"\nreal-data reference FID at n={args.n}: {results[0]['fid_reference']:.2f}")


if __name__ == "__main__":
    main()
