"""Everything that scores samples or models:

    points.py           sliced Wasserstein-1 distance of 2-D points and its noise floor
    fid.py              Fréchet distance, precision/recall and feature statistics (any feature space)
    classifier.py       the small per-dataset classifier whose features `ddpm eval` uses
    inception.py        Inception-v3 features for standard FID (user-supplied weights)
    images.py           evaluate_images: FID / precision / recall / confidence of image samples
    copies.py           the copy detector: each sample's nearest training images, the 1/3 ratio test
    likelihood.py       bits/dim of the variational bound (Ho et al. 2020, Eq. 5)
    during_training.py  the FID-during-training callback

`score_report` is the registry of the quick scores a run's report writes, by data space.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import LABELLED_POINTS, DataSpace, is_point_dataset
from ..data.spaces import real_points
from ..errors import ConfigError
from .images import evaluate_images, format_table
from .points import distance_with_floor
from .sample_files import load_sample_labels, load_samples_npz


def _points_score(samples: np.ndarray, dataset: str) -> dict:
    """SW1 of 2-D points to the dataset and its noise floor (real vs real)."""
    draw_real = lambda n, seed: real_points(dataset, n, seed)  # noqa: E731
    return distance_with_floor(np.asarray(samples, np.float64), draw_real)


# what a space draws (`DataSpace.data_kind`) -> quick score of its samples (none: the report counts them)
REPORT_SCORES: dict[str, Callable[[np.ndarray, str], dict]] = {"points": _points_score}


def score_report(space: DataSpace, samples: np.ndarray, dataset: str) -> dict:
    """The quick figures of a run's report (points: SW1 and its noise floor)."""
    score = REPORT_SCORES.get(space.data_kind)
    return score(samples, dataset) if score else {"num_samples": len(samples)}


def evaluate_samples_file(path: str | Path, dataset: str, **image_options: Any) -> dict[str, Any]:
    """Score a `ddpm sample` .npz against the real data: 2-D points by SW1 and its noise floor,
    images by `evaluate_images` (FID, precision/recall, confidence; `image_options` go there)."""
    samples, kind = load_samples_npz(path)
    labels, names = load_sample_labels(path)
    if kind != "points":
        return evaluate_images(samples, dataset, labels=labels, **image_options)
    if not is_point_dataset(dataset):
        raise ConfigError(f"{path} holds 2-D points but --dataset {dataset} is not a point set")
    result = {"dataset": dataset, **_points_score(samples, dataset)}
    if labels is not None:  # each class against its own point set (e.g. the 13 Datasaurus shapes)
        names = names or LABELLED_POINTS.get(dataset)
        if names is None:
            raise ConfigError(f"{path} has labels but no class_names, and {dataset} is not a labelled set")
        result["per_class"] = {
            names[k]: _points_score(samples[labels == k], names[k]) for k in np.unique(labels)
        }
    return result


def format_result(result: dict[str, Any]) -> str:
    """A few readable lines for the result of `evaluate_samples_file`."""
    if "swd" not in result:
        return format_table(result)

    def line(r: dict) -> str:
        return (
            f"{r['swd']:.4f}   noise floor (real vs real): {r['swd_floor']:.4f}   ratio: {r['swd_ratio']:.2f}"
        )

    lines = [f"sliced Wasserstein-1 (n={result['n']}): {line(result)}"]
    for name, r in result.get("per_class", {}).items():
        lines.append(f"  {name:<12} (n={r['n']}): {line(r)}")
    return "\n".join(lines)
