"""Side-by-side: ddpmkit's MNIST recipe vs Hugging Face diffusers and denoising-diffusion-pytorch,
each trained for the same wall-clock budget on this machine, sampled with the same sampler and budget
(DDPM ancestral or DDIM eta 0, S steps), and all scored by `ddpm eval` on the same number of samples.

The peers live in their own virtualenv (benchmarks/out/peers-venv; never project dependencies),
set up as ../shared/peers/README.md describes. Run from the repository root:

    python benchmarks/bench_peers.py --data-dir ../shared/data/mnist --minutes 5 -n 500 --steps 50
    python benchmarks/bench_peers.py --dataset folder:../shared/data/twemoji/twemoji_32 --preset rgb \
        --libs ddpmkit,diffusers --minutes 20 -n 1000 --threads 1 --parallel   # both at once

On 2 cores, two 1-thread libraries can train side by side (`--libs ddpmkit` in one shell,
`--libs diffusers` in another), then `--score-only` tabulates all three.

Writes benchmarks/out/peers/*.npz|json and prints a Markdown table (copy it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


LIBS = ("ddpmkit", "diffusers", "lucidrains")
NAMES = {"ddpmkit": "ddpmkit", "diffusers": "diffusers", "lucidrains": "denoising-diffusion-pytorch"}


def run_ddpmkit(args, ddpm: str) -> None:
    """Train `--preset mnist` with the CLI, then sample in-process (timing the sampling loop only)."""
    import numpy as np
    import torch

    from ddpmkit.config import SampleConfig
    from ddpmkit.models import count_parameters
    from ddpmkit.run import generate, load_run

    run = args.out / "ddpmkit-run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run, never a previous one's checkpoints
    sh(ddpm, "train", "--preset", args.preset, "--dataset", args.dataset, *data_dir(args),
       "--max-minutes", str(args.minutes), "--seed", str(args.seed),
       "--train.threads", str(args.threads), "--train.preview_every", "0", "--train.checkpoint_every", "0",
       "--train.log_every", "10",
       "--no-report", "-q", "-o", str(run))  # fmt: skip
    log = (run / "train_log.csv").read_text().splitlines()[1:]
    steps_done, elapsed = int(log[-1].split(",")[0]), float(log[-1].split(",")[-1])
    torch.set_num_threads(args.threads)
    loaded = load_run(run)
    options = SampleConfig(sampler=args.sampler, steps=args.steps)  # DDIM: eta 0; clip: the space's default
    t0 = time.perf_counter()  # the sampling loop only, as peer_train.py times it
    x, _ = generate(loaded, args.n, options, seed=0, progress=False)
    sample_s = time.perf_counter() - t0
    np.savez(args.out / "ddpmkit.npz", arr_0=loaded.space.to_data(x))
    info = {
        "lib": "ddpmkit",
        "params": count_parameters(loaded.model),
        "train_steps": steps_done,
        "train_images_per_s": steps_done * loaded.cfg.train.batch_size / elapsed,
        "sampler": f"{args.sampler.upper()} {args.steps} steps",
        "sample_s_per_image": sample_s / args.n,
    }
    (args.out / "ddpmkit.json").write_text(json.dumps(info, indent=2))


def run_peer(args, lib: str) -> None:
    py = ensure_peers_venv()
    source = ["--folder", str(train_folder(args))] if is_folder(args) else ["--data-dir", args.data_dir]
    sh(str(py), str(HERE / "peer_train.py"), "--lib", lib, *source, "--minutes",
       str(args.minutes), "-n", str(args.n), "--steps", str(args.steps), "--sampler", args.sampler,
       "--threads", str(args.threads), "--out", str(args.out / f"{lib}.npz"))  # fmt: skip


def is_folder(args) -> bool:
    return args.dataset.startswith("folder:")


def data_dir(args) -> list[str]:
    return [] if is_folder(args) else ["--data-dir", args.data_dir]


def train_folder(args) -> Path:
    """The images ddpmkit trains on: PATH/train when PATH holds train/ and test/, else PATH."""
    root = Path(args.dataset.removeprefix("folder:"))
    return root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root


def score(args, ddpm: str, libs: list[str]) -> list[dict]:
    results = []
    extra = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    for lib in libs:
        info = json.loads((args.out / f"{lib}.json").read_text())
        out = sh(ddpm, "eval", str(args.out / f"{lib}.npz"), "--dataset", args.dataset, *data_dir(args),
                 "--threads", str(args.threads), "--json", "-q", *extra)  # fmt: skip
        metrics = json.loads(out)
        keys = ("fid", "fid_reference", "precision", "recall", "confident_fraction", "copy_fraction")
        results.append({**info, **{k: metrics.get(k) for k in keys}})
    return results


def write_grids(libs: list[str], out: Path, path: Path) -> None:
    """The first 64 samples of every library, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(libs), figsize=(3.2 * len(libs), 3.5), squeeze=False)
    for ax, lib in zip(axes[0], libs, strict=True):
        a = np.load(out / f"{lib}.npz")["arr_0"][:64]  # (n, S, S, C)
        k = int(np.ceil(np.sqrt(len(a))))
        a = np.concatenate([a, np.zeros((k * k - len(a), *a.shape[1:]), a.dtype)])
        side = a.shape[1]
        grid = a.reshape(k, k, *a.shape[1:]).transpose(0, 2, 1, 3, 4).reshape(k * side, k * side, -1)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_title(NAMES[lib])
        ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", help="mnist or folder:PATH (PATH/train is trained on)")
    p.add_argument("--preset", default="mnist", help="ddpmkit's preset (rgb for colour folders)")
    p.add_argument("--data-dir", help="MNIST's files (mnist)")
    p.add_argument("--parallel", action="store_true", help="train the libraries at the same time")
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                   help="ddpm: ancestral sampling on the respaced chain; ddim: eta 0")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", help="classifier cache for `ddpm eval`")
    p.add_argument("--seed", type=int, default=0, help="ddpmkit's training seed")
    p.add_argument("--libs", default=",".join(LIBS), help="comma-separated subset to train and sample")
    p.add_argument("--score-only", action="store_true", help="only score samples already written")
    args = p.parse_args()
    libs = [lib for lib in args.libs.split(",") if lib]
    if unknown := set(libs) - set(LIBS):
        p.error(f"unknown libraries {sorted(unknown)}; choose from {', '.join(LIBS)}")
    if not is_folder(args) and not args.data_dir:
        p.error("--data-dir is needed for mnist")
    args.out = OUT if not is_folder(args) else OUT / Path(args.dataset.removeprefix("folder:")).name
    args.out.mkdir(parents=True, exist_ok=True)
    ddpm = str(Path(sys.executable).with_name("ddpm"))
    if not args.score_only:
        def train(lib: str) -> None:
            run_ddpmkit(args, ddpm) if lib == "ddpmkit" else run_peer(args, lib)

        with ThreadPoolExecutor(len(libs) if args.parallel else 1) as pool:
            list(pool.map(train, libs))
    results = score(args, ddpm, libs)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    write_grids(libs, args.out, args.out / "samples.png")
    print("\n| library | params | train img/s | steps in budget | FID | precision | recall | confident | "
          "copies | sampler | sample s/img |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in results:
        print(
            f"| {NAMES[r['lib']]} | {r['params']:,} | {r['train_images_per_s']:.0f} | {r['train_steps']} | "
            f"{r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {f(r['confident_fraction'])} | "
            f"{f(r['copy_fraction'])} | {r['sampler']} | {r['sample_s_per_image']:.3f} |"
        )
    print(f"\nreal-data reference FID at n={args.n}: {results[0]['fid_reference']:.2f}")


if __name__ == "__main__":
    main()
