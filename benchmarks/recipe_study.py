"""The 20-minute recipe study: train variants of an image preset on a fixed wall-clock budget, score each
with `ddpm eval` (n samples, the run's default sampler) and tabulate them (docs/recipe.md).

Each variant is the preset plus a few `ddpm train` flags. Runs go `--parallel` at a time, one thread
each (two side by side on a 2-core machine, as the other benchmarks run); every run directory keeps
its config, train_log.csv, samples.npz and eval.json, so a study can be extended and re-tabulated.

    python benchmarks/recipe_study.py --dataset mnist --data-dir ../shared/data/mnist \\
        --minutes 20 -n 1000 --cache-dir cache/classifiers baseline baseline@1 min_snr
    python benchmarks/recipe_study.py --dataset mnist --table          # the markdown table so far

A name `variant@S` trains `variant` with seed S (the run-to-run noise band comes from such pairs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DDPM = [sys.executable, "-m", "ddpmkit.cli"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PATCH_4 = ["--model.unet.patch_size", "4", "--model.unet.base_channels", "48"]  # 64 px at 16-8-4, 48-96-96

# a space-to-depth stem: 2x2 patches -> 4 channels, the U-Net at 14-7-4, widths 32-64-64 (no 28x28 level)
PATCH_2 = [
    *("--model.unet.patch_size", "2"),
    *("--model.unet.base_channels", "32"),
    *("--model.unet.channel_mult", "[1,2,2]"),
]
# name -> the flags it adds to `ddpm train --preset DATASET` (one change from the preset each, then combos)
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "preset": [],  # the same flags: the preset as it is now (rows after the study changed it)
    "nchw": ["--train.channels_last", "false"],  # the presets before they switched to channels_last
    "min_snr": ["--diffusion.weighting", "min_snr", "--diffusion.weighting_gamma", "5"],
    "plain": ["--diffusion.weighting", "plain"],  # L_simple unweighted (as Improved DDPM trains)
    "gamma_2": ["--diffusion.weighting_gamma", "2"],
    "gamma_10": ["--diffusion.weighting_gamma", "10"],
    "p2": ["--diffusion.weighting", "p2", "--diffusion.weighting_gamma", "1"],
    "eps": ["--objective", "eps"],
    "lr_cosine": ["--train.lr_schedule", "cosine", "--train.lr_min_ratio", "0.05"],
    "lr_2e-3": ["--lr", "2e-3"],
    "warmup_1000": ["--train.warmup_steps", "1000"],
    "warmup_0": ["--train.warmup_steps", "0"],
    "ema_warmup_off": ["--train.ema_warmup", "false"],
    "ema_0.999": ["--train.ema_decay", "0.999"],
    "ema_0.99": ["--train.ema_decay", "0.99"],
    "batch_32": ["--batch-size", "32"],
    "batch_32_lr_2e-3": ["--batch-size", "32", "--lr", "2e-3"],
    "batch_128": ["--batch-size", "128"],
    "T_250": ["-T", "250"],
    "width_24": ["--model.unet.base_channels", "24"],
    "no_attention": ["--model.unet.attn_resolutions", "[]"],
    "depth_2": ["--model.unet.num_res_blocks", "2"],
    "attn_14": ["--model.unet.attn_resolutions", "[14]"],
    "dropout_0.1": ["--model.unet.dropout", "0.1"],
    "cl": ["--train.channels_last", "true"],  # the presets now (explicit, so that old rows stay comparable)
    "hflip": ["--data.hflip", "true"],
    "patch_2": PATCH_2,
    "patch_2_depth_2": [*PATCH_2, "--model.unet.num_res_blocks", "2"],
    "patch_2_mult_124": [*PATCH_2, "--model.unet.channel_mult", "[1,2,4]"],  # widths 32-64-128
    "patch_2_width_24": [*PATCH_2, "--model.unet.base_channels", "24"],  # widths 24-48-48
    # the RGB study (preset rgb: 2x2 patches at 32 px, levels 16-8-4)
    "mult_124": ["--model.unet.channel_mult", "[1,2,4]"],  # widths 32-64-128
    "width_48": ["--model.unet.base_channels", "48"],
    "attn_8": ["--model.unet.attn_resolutions", "[8]"],
    "v": ["--objective", "v"],
    # 64 px on 4x4 patches (widths 48-96-96 at 16-8-4); + a 32-channel full-resolution head (its speckle)
    "patch_4": PATCH_4,
    "patch_4_head": [*PATCH_4, "--model.unet.head_channels", "32"],
    # Improved DDPM (docs/variance.md): a learned variance with L_hybrid; L_vlb with importance-sampled t
    "learned_range_hybrid": ["--variance", "learned_range", "--loss", "hybrid"],
    "vlb_is": ["--variance", "learned_range", "--loss", "vlb", "--train.t_sampler", "loss_second_moment"],
    # a different task: a class-conditional model, scored on n / 10 samples of each class at the preset's
    # guidance weight (`cond_w0`: without guidance)
    "cond": ["--cond", "class"],
    "cond_w0": ["--cond", "class", "--sample.guidance", "0"],
}


def study_key(args: argparse.Namespace) -> str:
    """The study's folder under --out: the dataset's name, a folder's last path parts."""
    if args.dataset.startswith("folder:"):
        return "_".join(Path(args.dataset.removeprefix("folder:")).parts[-2:])
    return args.dataset


def data_dir(args: argparse.Namespace) -> list[str]:
    return [] if args.dataset.startswith("folder:") else ["--data-dir", str(args.data_dir)]


def parse_name(name: str) -> tuple[str, int]:
    base, _, seed = name.partition("@")
    if base not in VARIANTS and "+" not in base:
        raise SystemExit(f"unknown variant {base!r}; known: {', '.join(VARIANTS)} (join with +)")
    return base, int(seed or 0)


def flags_of(base: str) -> list[str]:
    return [f for part in base.split("+") for f in VARIANTS[part]]


def run_one(name: str, args: argparse.Namespace) -> dict:
    base, seed = parse_name(name)
    run_dir = args.out / study_key(args) / name
    trained = (run_dir / "model.safetensors").is_file() and (run_dir / "train_log.csv").is_file()
    if not trained:
        keep = ["--train.checkpoint_every", str(args.every), "--train.keep_last", "1000"]
        train = [*DDPM, "train", "--preset", args.preset, "--dataset", args.dataset, *data_dir(args),
                 "--max-minutes", str(args.minutes), "--train.threads", "1", "--seed", str(seed),
                 "--no-report", "-q", "-o", str(run_dir), "--overwrite", *(keep * bool(args.every)),
                 *flags_of(base)]  # fmt: skip
        subprocess.run(train, check=True, env=ONE_THREAD)
    if not (run_dir / "eval.json").is_file():
        ev = score(run_dir, run_dir.parent / f"{name}.npz", args)  # beside the run: its files stay its own
        (run_dir / "eval.json").write_text(json.dumps(ev))
    if args.every and not (run_dir / "curve.json").is_file():
        (run_dir / "curve.json").write_text(json.dumps(curve(run_dir, args), indent=1))
    if args.every:
        plot_curve(json.loads((run_dir / "curve.json").read_text()), run_dir / "curve.png", args.dataset)
    return summary(name, run_dir)


def score(run_dir: Path, samples: Path, args: argparse.Namespace) -> dict:
    """`ddpm sample` n images from a run with its default sampler, then `ddpm eval` them (its JSON)."""
    from ddpmkit.checkpoint import load_config

    classes = load_config(run_dir).model.num_classes  # conditional: the same n, an equal share per class
    n = ["-n", str(args.n // classes), "--class", "all"] if classes else ["-n", str(args.n)]
    sample = [*DDPM, "sample", str(run_dir), *n, "--threads", "1", "--out", str(samples), "--overwrite", "-q"]
    subprocess.run(sample, check=True, env=ONE_THREAD)
    cache = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    evaluate = [*DDPM, "eval", str(samples), "--dataset", args.eval_dataset or args.dataset, *data_dir(args),
                "--threads", "1", "--json", "-q", *cache]  # fmt: skip
    done = subprocess.run(evaluate, check=True, env=ONE_THREAD, capture_output=True, text=True)
    return json.loads(done.stdout)


def curve(run_dir: Path, args: argparse.Namespace) -> list[dict]:
    """Score every checkpoint of a run (its EMA weights, as `ddpm sample` uses): quality against
    training time, from one run at a constant learning rate."""
    from ddpmkit.checkpoint import list_checkpoints, load_checkpoint, load_config, save_model
    from ddpmkit.io import read_metadata

    cfg = load_config(run_dir)
    space = read_metadata(run_dir / "model.safetensors")["space"]
    seconds = {
        int(r["step"]): float(r["elapsed_s"]) for r in csv.DictReader((run_dir / "train_log.csv").open())
    }
    points = []
    for path in list_checkpoints(run_dir):
        step = int(path.name.split("-")[1])
        at = run_dir.parent / f"{run_dir.name}.step-{step}"  # a run directory: this checkpoint's weights
        at.mkdir(exist_ok=True)
        tensors, _ = load_checkpoint(path)
        save_model(at, cfg, {k: v for k, v in tensors.items() if k.split(".")[0] in ("model", "ema", "data")},
                   step, space)  # fmt: skip
        ev = score(at, at.parent / f"{at.name}.npz", args)
        near = min(seconds, key=lambda s: abs(s - step))
        points.append({"step": step, "minutes": round(seconds[near] / 60, 1), "fid": ev["fid"],
                       "confident": ev["confident_fraction"], "recall": ev["recall"],
                       "precision": ev["precision"]})  # fmt: skip
        print(json.dumps(points[-1]), flush=True)
    return points


def plot_curve(points: list[dict], path: Path, dataset: str) -> None:
    """FID and the confident fraction against training minutes (one run's checkpoints)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p["minutes"] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.plot(minutes, [p["fid"] for p in points], "o-")
    a.set(xlabel="training minutes (1 thread)", ylabel="FID (classifier features)", title=f"{dataset}: FID")
    b.plot(minutes, [p["confident"] for p in points], "o-")
    b.set(xlabel="training minutes (1 thread)", ylabel="fraction", title="classified with confidence >= 0.9")
    for ax in (a, b):
        ax.axvline(20, color="gray", ls="--", lw=1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(name: str, run_dir: Path) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    rows = list(csv.DictReader((run_dir / "train_log.csv").open()))
    done = sorted((run_dir / "checkpoints").glob("step-*"))  # the final step (the log has every 50th)
    steps = int(done[-1].name.split("-")[1]) if done else int(rows[-1]["step"])
    rates = [float(r["images_per_s"]) for r in rows[1:]] or [float(rows[-1]["images_per_s"])]
    return {"name": name, "steps": steps, "images_per_s": sorted(rates)[len(rates) // 2],
            "fid": ev["fid"], "confident": ev.get("confident_fraction"), "recall": ev["recall"],
            "precision": ev["precision"], "fid_reference": ev.get("fid_reference"),
            "copy_fraction": ev.get("copy_fraction"), "class_accuracy": ev.get("class_accuracy")}  # fmt: skip


def table(out: Path) -> str:
    found = sorted(p.parent for p in out.glob("*/eval.json"))
    lines = ["| variant | steps | images/s | FID | FID real | confident >= 0.9 | recall | precision "
             "| copies |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run_dir in found:
        s = summary(run_dir.name, run_dir)
        ref = "-" if s["fid_reference"] is None else f"{s['fid_reference']:.2f}"
        copies = "-" if s["copy_fraction"] is None else f"{s['copy_fraction']:.3f}"
        conf = "-" if s["confident"] is None else f"{s['confident']:.3f}"
        lines.append(f"| {s['name']} | {s['steps']} | {s['images_per_s']:.0f} | {s['fid']:.2f} | {ref} | "
                     f"{conf} | {s['recall']:.3f} | {s['precision']:.3f} | "
                     f"{copies} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", help=f"names (`a+b` combines, `@S` seeds): {', '.join(VARIANTS)}")
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or folder:PATH")
    p.add_argument("--preset", help="the preset the variants change (default: the dataset's)")
    p.add_argument("--eval-dataset", help="the dataset `ddpm eval` scores against (default: --dataset)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--cache-dir", type=Path, default=None, help="classifier cache of `ddpm eval`")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("-n", type=int, default=1000, help="samples scored per run")
    p.add_argument("--every", type=int, default=0,
                   help="also checkpoint every N steps and score each checkpoint (curve.json)")  # fmt: skip
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "recipe")
    p.add_argument("--table", action="store_true", help="print the table of finished runs and stop")
    args = p.parse_args()
    args.preset = args.preset or args.dataset
    for name in args.variants:
        parse_name(name)
    if not args.table:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            for s in pool.map(lambda n: run_one(n, args), args.variants):
                print(json.dumps(s), flush=True)
        print(f"{len(args.variants)} runs in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print(table(args.out / study_key(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
