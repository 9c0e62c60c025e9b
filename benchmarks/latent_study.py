"""Latent vs pixel diffusion, side by side (docs/latent.md): train the dataset's pixel preset and a
latent run (`ddpm train --latent AE_RUN`) for the same wall-clock minutes, one thread each, at the
same time; score both with `ddpm sample` (n, each run's default sampler) + `ddpm eval`; then time
sampling per image at the same number of model calls in one process (the latent figure includes
decoding), and read training images/s from each run's log.

    python benchmarks/latent_study.py --dataset mnist --data-dir ../shared/data/mnist \\
        --ae benchmarks/out/latent/ae_mnist --minutes 20 -n 1000 --cache-dir cache/classifiers

The autoencoder is trained beforehand (`ddpm train-autoencoder`) and reused: its minutes are in its
own train_log.csv. Results go to --out/<dataset>/study.json; runs already trained are not retrained.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_study import DDPM, ONE_THREAD, data_dir, score, study_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(arm: str, run_dir: Path, args: argparse.Namespace) -> list[str]:
    common = ["--dataset", args.dataset, *data_dir(args), "--max-minutes", str(args.minutes),
              "--train.threads", "1", "--seed", str(args.seed), "--no-report", "-q", "-o", str(run_dir),
              "--overwrite"]  # fmt: skip
    if arm == "pixel":
        return [*DDPM, "train", "--preset", args.pixel_preset, *common, *args.pixel_flags]
    return [*DDPM, "train", "--latent", str(args.ae), *common, *args.latent_flags]


def train_both(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    runs = {arm: out / arm for arm in ("pixel", "latent")}
    todo = [a for a, d in runs.items() if not (d / "model.safetensors").is_file()]
    def one(arm: str) -> None:
        subprocess.run(train_cmd(arm, runs[arm], args), check=True, env=ONE_THREAD)

    with ThreadPoolExecutor(2) as pool:  # side by side: the same minutes on a shared machine
        list(pool.map(one, todo))
    return runs


def images_per_s(run_dir: Path) -> tuple[float, int]:
    """Median training images/s over the log, and the final step."""
    rows = list(csv.DictReader((run_dir / "train_log.csv").open()))
    done = sorted((run_dir / "checkpoints").glob("step-*"))
    step = int(done[-1].name.split("-")[1]) if done else int(rows[-1]["step"])
    return statistics.median(float(r["images_per_s"]) for r in rows[1:] or rows), step


def sampling_ms(runs: dict[str, Path], n: int, steps: int, sampler: str, repeats: int = 3) -> dict:
    """ms per image of `generate` + `to_data` (decoding, for the latent run), one thread, the arms
    alternated `repeats` times in this one process (median)."""
    import torch

    from ddpmkit.run import generate, load_run

    torch.set_num_threads(1)
    loaded = {arm: load_run(d) for arm, d in runs.items()}
    times: dict[str, list[float]] = {arm: [] for arm in runs}
    for _ in range(repeats):
        for arm, run in loaded.items():
            cond = {"y": torch.arange(n) % run.cfg.model.num_classes} if run.cfg.model.num_classes else None
            t0 = time.perf_counter()
            x, _ = generate(run, n, seed=0, sampler=sampler, steps=steps, guidance=0.0, cond=cond,
                            progress=False)  # fmt: skip
            run.space.to_data(x)
            times[arm].append((time.perf_counter() - t0) / n * 1e3)
    return {arm: statistics.median(t) for arm, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--ae", type=Path, required=True, help="the `ddpm train-autoencoder` run")
    p.add_argument("--pixel-preset", default=None, help="default: the dataset's preset")
    p.add_argument("--pixel-flags", type=shlex.split, default=[], help="extra `ddpm train` flags, quoted")
    p.add_argument("--latent-flags", type=shlex.split, default=[], help="the latent arm's, quoted")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-dataset", default=None)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--speed-n", type=int, default=256, help="samples per timing")
    p.add_argument("--speed-steps", type=int, default=20, help="ddim steps of the timing (1 model call each)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "latent_study")
    args = p.parse_args()
    from ddpmkit.data import preset_for

    args.pixel_preset = args.pixel_preset or preset_for(args.dataset)
    out = args.out / study_key(args)
    out.mkdir(parents=True, exist_ok=True)
    runs = train_both(args, out)
    result: dict[str, dict] = {}
    with ThreadPoolExecutor(2) as pool:  # score both at once, one thread each
        evals = dict(zip(runs, pool.map(lambda a: _score(runs[a], args), runs), strict=True))
    speed = sampling_ms(runs, args.speed_n, args.speed_steps, "ddim")
    for arm, run_dir in runs.items():
        ips, step = images_per_s(run_dir)
        ev = evals[arm]
        result[arm] = {"steps": step, "train_images_per_s": round(ips, 1),
                       "sample_ms_per_image": round(speed[arm], 2), **{k: ev.get(k) for k in (
                           "fid", "fid_reference", "precision", "recall", "confident_fraction",
                           "copy_fraction")}}  # fmt: skip
    result["ratios"] = {
        "sampling_speedup": round(speed["pixel"] / speed["latent"], 2),
        "training_images_per_s": round(result["latent"]["train_images_per_s"]
                                       / result["pixel"]["train_images_per_s"], 2),
    }  # fmt: skip
    result["setup"] = {"minutes": args.minutes, "n": args.n, "ae": str(args.ae), "pixel": args.pixel_preset,
                       "speed": f"ddim {args.speed_steps} steps, {args.speed_n} samples, 1 thread, "
                                "latent includes decoding"}  # fmt: skip
    (out / "study.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def _score(run_dir: Path, args: argparse.Namespace) -> dict:
    """`ddpm eval` of n samples drawn with the run's default sampler; samples already drawn from
    the run's final weights are kept (so the classifier may be trained after the samples)."""
    if not (run_dir / "eval.json").is_file():
        samples = run_dir.parent / f"{run_dir.name}.npz"
        weights = run_dir / "model.safetensors"
        fresh = samples.is_file() and samples.stat().st_mtime > weights.stat().st_mtime
        ev = evaluate(samples, args) if fresh else score(run_dir, samples, args)
        (run_dir / "eval.json").write_text(json.dumps(ev))
    return json.loads((run_dir / "eval.json").read_text())


def evaluate(samples: Path, args: argparse.Namespace) -> dict:
    cache = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    cmd = [*DDPM, "eval", str(samples), "--dataset", args.eval_dataset or args.dataset, *data_dir(args),
           "--threads", "1", "--json", "-q", *cache]  # fmt: skip
    return json.loads(subprocess.run(cmd, check=True, env=ONE_THREAD, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    sys.exit(main())
