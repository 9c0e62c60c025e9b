"""Is `ddpm eval`'s classifier right about conditional samples? Per class, the fraction of a
class-conditional run's samples that the default (cached) classifier assigns to the requested class,
beside the same fraction by an independent classifier (k-nearest neighbours, k = 3, on the raw
pixels of all training images: another model family, another feature space), their agreement, and
the fraction inside the real data's k-NN manifold (where the default classifier's verdicts count).

    python benchmarks/classifier_check.py SAMPLES.npz --dataset mnist --data-dir ../shared/data/mnist \
        --cache-dir cache/classifiers

SAMPLES.npz: `ddpm sample RUN --class all -n 100 --out SAMPLES.npz` (it holds the labels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ddpmkit.data.images import load_image_dataset
from ddpmkit.eval.classifier import load_classifier
from ddpmkit.eval.fid import in_manifold
from ddpmkit.eval.sample_files import load_sample_labels, load_samples_npz


def knn_labels(queries: torch.Tensor, train: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Majority label of the 3 nearest training images by pixel L2 (all three differ: the nearest's)."""
    q, ref = queries.flatten(1).float() / 255, train.flatten(1).float() / 255
    out = []
    for start in range(0, len(q), 256):
        near = labels[torch.cdist(q[start : start + 256], ref).topk(3, largest=False).indices]  # (b, 3)
        out.append(torch.where(near[:, 1] == near[:, 2], near[:, 1], near[:, 0]))
    return torch.cat(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", type=Path)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--cache-dir", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    arr, _ = load_samples_npz(args.samples)
    requested, _ = load_sample_labels(args.samples)
    if requested is None:
        raise SystemExit(f"{args.samples} has no labels: sample with --class all")
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    requested = torch.from_numpy(requested)
    clf = load_classifier(args.dataset, args.cache_dir, image_size=x.shape[-1], channels=x.shape[1])
    feats, probs = clf.embed(x)
    default = probs.argmax(1)
    inside = in_manifold(clf.features, feats)
    train = load_image_dataset(args.dataset, split="train", data_dir=args.data_dir, image_size=x.shape[-1],
                               channels=x.shape[1])  # fmt: skip
    test = load_image_dataset(args.dataset, split="test", data_dir=args.data_dir, image_size=x.shape[-1],
                              channels=x.shape[1])  # fmt: skip
    knn = knn_labels(x, train.images, train.labels)
    knn_test = (
        (knn_labels(test.images[:2000], train.images, train.labels) == test.labels[:2000]).double().mean()
    )
    clf_test = clf.info["test_accuracy"]
    print(f"{args.samples}: {len(x)} samples; default classifier test accuracy {clf_test:.2%}, "
          f"pixel 3-NN {float(knn_test):.2%} (2000 test images)")  # fmt: skip
    print("| class | n | default: requested | 3-NN: requested | agree | inside the data |")
    print("|---|---|---|---|---|---|")
    for k in requested.unique().tolist():
        m = requested == k
        name = clf.class_names[k]
        row = [(default[m] == k), (knn[m] == k), (default[m] == knn[m]), inside[m]]
        print(
            f"| {name} | {int(m.sum())} | "
            + " | ".join(f"{float(r.double().mean()):.1%}" for r in row)
            + " |"
        )
    row = [(default == requested), (knn == requested), (default == knn), inside]
    print(f"| all | {len(x)} | " + " | ".join(f"{float(r.double().mean()):.1%}" for r in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
