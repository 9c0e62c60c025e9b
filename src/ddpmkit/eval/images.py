"""Evaluation of generated images: sample-quality metrics, each beside a real-data reference.

* `evaluate_images`: FID in the dataset classifier's feature space (see classifier.py), improved
  precision / recall (Kynkäänniemi et al. 2019), the fraction of samples outside the real features'
  k-NN manifold, and for those inside it the predicted-class histogram and the confident fraction
  (outside, a softmax classifier's verdict means nothing: noise is "confident"); optionally the
  standard Inception FID (Heusel et al. 2017) from a local pytorch-fid weight file. Every figure
  comes with the same figure for N real train images, which is what a perfect model scores at
  this N (FID is biased upwards at small N).
  (The likelihood, `nll_bits_per_dim`, is in likelihood.py.)
* `format_table`: the figures for stdout. (Reading samples .npz files is sample_files.py's.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import load_image_dataset
from ..errors import ConfigError
from ..io import load_tensors, save_tensors
from .classifier import Classifier, load_classifier
from .fid import (
    class_histogram,
    confident_fraction,
    feature_statistics,
    frechet_distance,
    in_manifold,
    precision_recall,
)

CONFIDENCE = 0.9
PR_K = 3
MIN_SAMPLES = PR_K + 1
INCEPTION_NOTE = (
    "inception_fid: pass --inception-weights FILE (pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth) for standard FID; no download is attempted"
)


def _check_samples(samples: np.ndarray, clf: Classifier, dataset: str) -> torch.Tensor:
    """uint8 (N, H, W, C) -> (N, C, H, W) tensor, after checking it against the classifier."""
    h, w, c = samples.shape[1:]
    if (h, w, c) != (clf.image_size, clf.image_size, clf.channels):
        raise ConfigError(
            f"samples are {h}x{w}x{c} but the {dataset} classifier takes "
            f"{clf.image_size}x{clf.image_size}x{clf.channels}"
        )
    return torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2).contiguous()


def _validate(samples: Any) -> np.ndarray:
    if not isinstance(samples, np.ndarray):
        raise ConfigError(f"samples must be a uint8 numpy array (N, H, W, C), got {type(samples).__name__}")
    if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[-1] not in (1, 3):
        what = f"{samples.dtype} {samples.shape}"
        raise ConfigError(f"samples must be a uint8 array (N, H, W, C) with C = 1 or 3, got {what}")
    if samples.shape[1] != samples.shape[2]:
        raise ConfigError(f"samples must be square, got {samples.shape[1]}x{samples.shape[2]}")
    if len(samples) < MIN_SAMPLES:
        raise ConfigError(
            f"need at least {MIN_SAMPLES} samples (precision/recall uses k = {PR_K}), got {len(samples)}"
        )
    return samples


# -------------------------------------------------------------------------------------- metrics
def _figures(feats: torch.Tensor, probs: torch.Tensor, clf: Classifier, real_pr: torch.Tensor) -> dict:
    """The figures of one image set. The classifier's verdicts (confident, class) count only for
    images inside the real features' k-NN manifold: far from its data a softmax classifier is
    confidently wrong (uniform noise scored 98% "confident", all of it labelled 8)."""
    mu, sigma = feature_statistics(feats)
    precision, recall = precision_recall(real_pr, feats, k=PR_K)
    inside = in_manifold(real_pr, feats, k=PR_K)
    figures = {
        "fid": frechet_distance(mu, sigma, clf.mu, clf.sigma),
        "precision": precision,
        "recall": recall,
        "outside_fraction": float((~inside).double().mean()),
    }
    if clf.task == "classes":  # exemplar "classes" are training images, not verdicts
        counts = class_histogram(probs[inside], len(clf.class_names)).tolist()
        figures["confident_fraction"] = confident_fraction(probs, CONFIDENCE, inside)
        figures["class_counts"] = dict(zip(clf.class_names, counts, strict=True))
    return figures


def evaluate_images(
    samples: np.ndarray,
    dataset: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    inception_weights: str | Path | None = None,
    seed: int = 0,
    reference_draws: int = 5,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: bool = False,
    labels: np.ndarray | None = None,
    copies: bool | None = None,
    nearest_picture: str | Path | None = None,
) -> dict[str, Any]:
    """Score generated images against the dataset, each figure beside a real-data reference.

    Args:
        samples: (N, H, W, C) uint8 (the `arr_0` of a samples .npz), N >= 4.
        dataset: the dataset the model was trained on; its classifier must be cached
            (`ddpm train-classifier --dataset NAME`) for this H, W, C.
        data_dir: where its files are (for the N real train images of the reference).
        cache_dir: classifier cache root (default `classifier.default_cache_dir()`).
        inception_weights: pytorch-fid's weight file for the standard Inception FID, or None. On one
            CPU thread Inception takes ~0.3 s per image: ~50 min once for the test-split statistics
            (then cached beside the classifier), ~5 min per 1000 samples; use a GPU `device`.
        seed: picks the real reference images and the real subset for precision / recall.
        reference_draws: the reference figures are averaged over this many random draws of N train
            images (FID at N = 1000 varies by ~30% between draws; "fid_reference_std" is the spread).
        batch_size: images per forward pass; device: where the networks run.
        labels: (N,) the class each sample was drawn for (class-conditional runs): adds
            "class_accuracy", per class the fraction the classifier assigns to that class.
        copies: run the copy detector (copies.py: each sample's nearest training images, the
            fraction that pass the 1/3 ratio test); None: for folders (small sets copy first).
        nearest_picture: a .png path: draw the samples nearest to a training image beside it.

    Returns:
        A JSON-able dict: for each metric M (fid, precision, recall, confident_fraction (confident
        and inside the real k-NN manifold), outside_fraction, class_counts (of the samples
        inside), inception_fid), "M" for the samples and "M_reference" for N real train images
        (the mean over the draws; class counts and Inception FID from the first draw), plus
        fid_reference_std, dataset, n, image_shape, classifier, classifier_test_accuracy, reference,
        notes.
    """
    samples = _validate(samples)
    if isinstance(reference_draws, bool) or not isinstance(reference_draws, int) or reference_draws < 1:
        raise ConfigError(f"reference_draws must be an integer >= 1, got {reference_draws!r}")
    n, size, _, channels = samples.shape
    clf = load_classifier(dataset, cache_dir, image_size=size, channels=channels, device=device)
    x = _check_samples(samples, clf, dataset)  # (N, C, S, S) uint8
    g = torch.Generator().manual_seed(seed)
    train = load_image_dataset(
        dataset, split="train", data_dir=data_dir, image_size=clf.image_size, channels=clf.channels
    )
    m = min(n, len(train))
    # precision/recall compare equal-sized sets: the k-NN radii shrink as a set grows
    real_pr = clf.features[torch.randperm(len(clf.features), generator=g)[: min(n, len(clf.features))]]
    feats, probs = clf.embed(x, batch_size=batch_size)
    ours = _figures(feats, probs, clf, real_pr)
    draws = [train.images[torch.randperm(len(train), generator=g)[:m]] for _ in range(reference_draws)]
    refs = [_figures(*clf.embed(real, batch_size=batch_size), clf, real_pr) for real in draws]
    notes = _reference_notes(dataset, clf, n, m, len(real_pr))
    result = {
        "dataset": dataset,
        "n": n,
        "image_shape": [size, size, channels],
        "classifier": str(clf.path),
        "classifier_test_accuracy": clf.info["test_accuracy"],
        "classifier_task": clf.task,
        "reference": f"{m} random {dataset} train images scored like the samples (mean of "
        f"{reference_draws} draws, seed {seed}), against {clf.info['test_images']} test images",
        "confidence_threshold": CONFIDENCE,
        "precision_recall_k": PR_K,
    }
    result.update(_beside_references(ours, refs))
    result["inception_fid"] = result["inception_fid_reference"] = None
    if inception_weights is None:
        notes.append(INCEPTION_NOTE)
    else:
        result["inception_fid"], result["inception_fid_reference"] = _inception_fids(
            inception_weights, x, draws[0], clf, dataset, data_dir, batch_size, device, progress
        )
        notes.append(
            "inception_fid: against the whole test split, pytorch-fid preprocessing; comparable "
            "only with FIDs computed the same way at the same N"
        )
    if labels is not None:
        result.update(_class_accuracies(probs, labels, clf, dataset, data_dir, batch_size))
    if copies or (copies is None and dataset.startswith("folder:")) or nearest_picture:
        from .copies import copy_picture, copy_report

        report, neighbours = copy_report(
            x, train.images, feats, clf.embed(train.images, batch_size=batch_size)[0]
        )
        result.update(report)
        if nearest_picture:
            copy_picture(x, train.images, neighbours, nearest_picture)
            notes.append(f"the samples nearest to a training image, beside it: {nearest_picture}")
    result["notes"] = notes
    return result


def _reference_notes(dataset: str, clf: Classifier, n: int, m: int, n_real_pr: int) -> list[str]:
    """What the reference figures are, where they differ from the plain case."""
    notes = []
    if m < n:
        notes.append(f"the reference uses all {m} train images (fewer than the {n} samples)")
    if n_real_pr < n:
        notes.append(f"precision/recall use all {n_real_pr} cached test features as the real set")
    if clf.task == "exemplars":
        notes.append(f"{dataset} has no classes: the features are a network's trained to tell its "
                     "images apart (exemplar_task); no class or confidence figures")  # fmt: skip
    if not clf.info.get("held_out_test", True):
        notes.append(f"{dataset} has no separate test split: reference figures are not held out")
    return notes


def _beside_references(ours: dict[str, Any], refs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure M of the samples beside "M_reference", the mean over the reference draws (dicts,
    such as class counts, from the first draw), and the spread of the reference FID over the draws."""
    out: dict[str, Any] = {}
    for key in ours:
        first = refs[0][key]
        out[key] = ours[key]
        out[f"{key}_reference"] = first if isinstance(first, dict) else float(np.mean([r[key] for r in refs]))
    out["fid_reference_std"] = float(np.std([r["fid"] for r in refs], ddof=1)) if len(refs) > 1 else None
    return out


def _class_accuracies(
    probs: torch.Tensor, labels: np.ndarray, clf: Classifier, dataset: str, data_dir, batch_size: int
) -> dict[str, Any]:
    """class_accuracy of the samples, and the same figure for the real test images of those classes."""
    ours = class_accuracy(probs, labels, clf.class_names)
    test = load_image_dataset(dataset, split="test", data_dir=data_dir, image_size=clf.image_size,
                              channels=clf.channels)  # fmt: skip
    real = class_accuracy(
        clf.embed(test.images, batch_size=batch_size)[1], test.labels.numpy(), clf.class_names
    )
    return {"class_accuracy": ours, "class_accuracy_reference": {k: real[k] for k in ours}}


def class_accuracy(probs: torch.Tensor, labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """For samples drawn for requested classes: per class, the fraction the classifier assigns to it."""
    labels = np.asarray(labels)
    if len(labels) != len(probs):
        raise ConfigError(f"{len(labels)} labels for {len(probs)} samples")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ConfigError(f"labels must lie in 0..{len(class_names) - 1} (the classifier's classes)")
    pred = probs.argmax(1).numpy()
    return {class_names[k]: float((pred[labels == k] == k).mean()) for k in np.unique(labels)}


def _inception_fids(
    weights: str | Path,
    x: torch.Tensor,
    real: torch.Tensor,
    clf: Classifier,
    dataset: str,
    data_dir,
    batch_size: int,
    device,
    progress: bool,
) -> tuple[float, float]:
    """Inception FID of the samples and of the real reference, against the whole test split
    (its statistics are cached beside the classifier, keyed by the weight file's hash)."""
    from .inception import inception_features, load_inception

    net = load_inception(weights, device=device)
    digest = hashlib.sha256(Path(weights).expanduser().read_bytes()).hexdigest()[:12]
    cache = clf.path / f"inception-{digest}.safetensors"
    if cache.is_file():
        stats = load_tensors(cache)
    else:
        test = load_image_dataset(
            dataset, split="test", data_dir=data_dir, image_size=clf.image_size, channels=clf.channels
        )
        mu, sigma = feature_statistics(
            inception_features(net, test.images, batch_size=min(batch_size, 100), progress=progress)
        )
        stats = {"mu": mu, "sigma": sigma}
        save_tensors(cache, stats)
    bs = min(batch_size, 100)
    fids = []
    for images in (x, real):
        mu, sigma = feature_statistics(inception_features(net, images, batch_size=bs, progress=progress))
        fids.append(frechet_distance(mu, sigma, stats["mu"], stats["sigma"]))
    return fids[0], fids[1]


def format_table(result: dict[str, Any]) -> str:
    """A readable table of an `evaluate_images` result: metric | samples | real reference."""
    h, w, c = result["image_shape"]
    rows = [("metric", "samples", "real reference")]
    k = result["precision_recall_k"]
    exemplars = result.get("classifier_task") == "exemplars"
    p = result["confidence_threshold"]
    names = [
        ("fid", f"FID ({'exemplar-net' if exemplars else 'classifier'} features)"),
        ("precision", f"precision (k={k})"),
        ("recall", f"recall (k={k})"),
        ("confident_fraction", f"confident (p >= {p}, in the data)"),
        ("inception_fid", "FID (Inception)"),
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    rows += [(label, fmt(result[k]), fmt(result[f"{k}_reference"])) for k, label in names if k in result]
    if result.get("fid_reference_std") is not None:  # the spread of FID between real draws
        rows[1] = (*rows[1][:2], f"{rows[1][2]} ± {result['fid_reference_std']:.2g}")
    rows += [
        (f"class {name}", str(count), str(result["class_counts_reference"][name]))
        for name, count in result.get("class_counts", {}).items()
    ]
    if "outside_fraction" in result:  # the rest of the histogram: 1 - precision of the images
        n = result["n"]
        outside = (round(n * result["outside_fraction"]), round(n * result["outside_fraction_reference"]))
        label = "outside the data" + ("" if exemplars else " (no class)")
        rows.append((label, str(outside[0]), str(outside[1])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{result['dataset']}: {result['n']} samples of {h}x{w}x{c}; classifier test accuracy "
        f"{result['classifier_test_accuracy']:.2%}",
        f"reference: {result['reference']}",
    ]
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}")
        if i == 0:
            lines.append("-" * (sum(widths) + 4))
    if "copy_fraction" in result:
        f, n = result["copy_fraction"], result["n"]
        se = np.sqrt(max(f * (1 - f), 1 / n) / n)  # binomial standard error (floored at 1 in n)
        lines.append(
            f"copies: {f:.1%} ± {se:.1%} of the samples (features: "
            f"{result.get('copy_fraction_features', float('nan')):.1%}) are nearer to one of the "
            f"{result['copy_train_images']} training images than 1/3 of the distance to the next"
        )
    if result.get("class_accuracy"):
        acc = result["class_accuracy"]
        ref = result.get("class_accuracy_reference") or {}
        lines.append("class: classified as the requested class (the classifier on real test images of it)")
        lines += [
            f"  {k:<12} {v:7.1%}  ({ref[k]:.1%})" if k in ref else f"  {k:<12} {v:7.1%}"
            for k, v in acc.items()
        ]
        lines.append(f"  lowest {min(acc.values()):.1%}, mean {np.mean(list(acc.values())):.1%}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def classifier_fid(clf: Classifier, images: torch.Tensor, *, batch_size: int = 500) -> float:
    """FID of uint8 images (N, C, S, S) against the classifier's cached test-split statistics:
    the quick score used during training (no reference draws, no precision/recall)."""
    feats, _ = clf.embed(images, batch_size=batch_size)
    mu, sigma = feature_statistics(feats)
    return frechet_distance(mu, sigma, clf.mu, clf.sigma)
