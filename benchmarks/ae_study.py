"""The autoencoder's KL weight (docs/latent.md): train `ddpm train-autoencoder` with several
`model.autoencoder.kl_weight` values for the same minutes, one thread each, two side by side, and
tabulate what each report measures (PSNR on the test split, reconstruction FID and the real floor,
the latents' std) with the KL per latent value of the test images.

    python benchmarks/ae_study.py --dataset mnist --data-dir ../shared/data/mnist \\
        --minutes 3 --cache-dir cache/classifiers 1e-6 1e-4 1e-2

Runs go to --out/<dataset>/kl_<w>; finished runs are not retrained.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import run as call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_study import DDPM, ONE_THREAD, data_dir, study_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_one(weight: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / study_key(args) / f"kl_{weight}"
    if not (run_dir / "metrics.json").is_file():
        cache = ["--train.eval_cache_dir", str(args.cache_dir)] if args.cache_dir else []
        call([*DDPM, "train-autoencoder", "--dataset", args.dataset, *data_dir(args), "--max-minutes",
              str(args.minutes), "--train.threads", "1", "--model.autoencoder.kl_weight", weight, "-q",
              "-o", str(run_dir), "--overwrite", *cache, *args.flags],
             check=True, env=ONE_THREAD)  # fmt: skip
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"kl_weight": float(weight), **m, "kl_per_value": kl_per_value(run_dir)}


def kl_per_value(run_dir: Path, n: int = 1000) -> float:
    """Mean KL(q(z|x) || N(0, I)) per latent value, in nats, over n test images."""
    import torch

    from ddpmkit.data import build_dataset
    from ddpmkit.models.autoencoder import kl_to_standard_normal
    from ddpmkit.run import load_run

    torch.set_num_threads(1)
    run = load_run(run_dir)
    x = build_dataset(run.cfg.data, split="test").x[:n]
    with torch.inference_mode():
        mean, logvar = run.model.encode(x)
    return float(kl_to_standard_normal(mean, logvar).mean() / mean[0].numel())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+", help="KL weights, e.g. 1e-6 1e-4 1e-2")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more train-autoencoder flags")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ae_study")
    args = p.parse_args()
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda w: train_one(w, args), args.weights))
    print("| KL weight | steps | PSNR (dB) | recon FID | floor | latent std | KL nats / value |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fid = f"{r['recon_fid']:.2f}" if "recon_fid" in r else "-"
        floor = f"{r['fid_floor']:.2f}" if r.get("fid_floor") else "-"
        print(f"| {r['kl_weight']:g} | {r['step']} | {r['psnr']:.2f} | {fid} | {floor} "
              f"| {r['latent_std']:.3f} | {r['kl_per_value']:.2f} |")  # fmt: skip
    (args.out / study_key(args) / "kl.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
