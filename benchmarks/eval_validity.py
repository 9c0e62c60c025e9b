"""Can `ddpm eval` be fooled? Every number it prints, for real images (train images, against the
test split's features) and for inputs that must score badly: uniform noise, blank images, Gaussian
blur (sigma 1 and 2 px), a brightness/contrast shift and (RGB) a colour shift, n images each,
with the dataset's cached classifier. `confident (raw)` is the fraction the classifier alone calls
confident (what `ddpm eval` reported before its verdicts were restricted to images inside the
real k-NN manifold); `confident` is the number it reports now.

    python benchmarks/eval_validity.py --dataset mnist --data-dir ../shared/data/mnist \
        --cache-dir cache/classifiers -n 1000
    python benchmarks/eval_validity.py --dataset folder:DIR --cache-dir cache/classifiers -n 1000

For a folder without classes the features are the exemplar network's (`ddpm train-classifier`
trains it; eval.classifier.exemplar_task), which gives no class verdicts ("-").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ddpmkit.data.images import load_image_dataset
from ddpmkit.eval.classifier import load_classifier
from ddpmkit.eval.fid import confident_fraction
from ddpmkit.eval.images import CONFIDENCE, evaluate_images


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 (N, C, H, W) images (channels apart)."""
    r = int(3 * sigma + 0.5)
    k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    n, c, h, w = images.shape
    x = images.float().reshape(n * c, 1, h, w)
    pad, conv = torch.nn.functional.pad, torch.nn.functional.conv2d
    x = conv(pad(x, (r, r, 0, 0), mode="replicate"), k)
    x = conv(pad(x, (0, 0, r, r), mode="replicate"), k.transpose(2, 3))
    return x.reshape(n, c, h, w).round().clamp(0, 255).to(torch.uint8)


def cases(real: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "real (train images)": real,
        "uniform noise": torch.randint(0, 256, real.shape, generator=g, dtype=torch.uint8),
        "blank (all 0)": torch.zeros_like(real),
        "blur sigma 1": blur(real, 1.0),
        "blur sigma 2": blur(real, 2.0),
        "shift 0.6x + 100": (real.float() * 0.6 + 100).clamp(0, 255).to(torch.uint8),
        **({"colour shift (RGB -> BRG)": real[:, [2, 0, 1]]} if real.shape[1] == 3 else {}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(1)
    # real = train images: the classifier's reference features are the test split's
    train = load_image_dataset(args.dataset, split="train", data_dir=args.data_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed + 1))
    real = train.images[order[: args.n]]
    clf = load_classifier(args.dataset, args.cache_dir, image_size=real.shape[-1], channels=real.shape[1])
    rows = []
    for name, images in cases(real, args.seed).items():
        ev = evaluate_images(images.permute(0, 2, 3, 1).numpy(), args.dataset, data_dir=args.data_dir,
                             cache_dir=args.cache_dir, seed=args.seed)  # fmt: skip
        raw = confident_fraction(clf.embed(images)[1], CONFIDENCE)
        top = max(ev["class_counts"].values()) / args.n if "class_counts" in ev else None
        rows.append({"input": name, "fid": ev["fid"], "precision": ev["precision"], "recall": ev["recall"],
                     "confident_raw": raw if top is not None else None,
                     "confident": ev.get("confident_fraction"), "outside": ev["outside_fraction"],
                     "largest_class_share": top})  # fmt: skip
    print(f"{args.dataset}, n = {args.n}, classifier {clf.path} ({clf.info['test_accuracy']:.2%} test acc., "
          f"task {clf.info.get('task', 'classes')})")  # fmt: skip
    print("| input | FID | precision | recall | confident (raw) | confident | outside the data | top class |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r['input']} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{f(r['confident_raw'])} | {f(r['confident'])} | {r['outside']:.3f} | "
              f"{f(r['largest_class_share'])} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
