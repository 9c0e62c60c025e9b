"""Training the feature classifier: `train_classifier` fits a `SmallConvNet` on a labelled image
dataset's train split, measures its test accuracy and caches it with the test-split reference features.

The network, the `Classifier` it is loaded as, the cache layout and `load_classifier` are in
classifier_model.py; they are re-exported here, so `ddpmkit.eval.classifier` offers the whole API.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import FOLDER_PREFIX, ImageSet, load_image_dataset, to_model_range
from ..errors import ConfigError, DataError
from ..io import atomic_write_text, save_tensors
from .classifier_model import (  # the noqa names are re-exported for `from .classifier import ...`
    FORMAT,
    INFO,
    INFO_KEYS,  # noqa: F401
    REFERENCE,
    WEIGHTS,
    Classifier,  # noqa: F401
    SmallConvNet,
    _embed,
    cached_shapes,  # noqa: F401
    dataset_key,
    default_cache_dir,
    load_classifier,  # noqa: F401
    shape_key,
    train_command,  # noqa: F401
)
from .fid import feature_statistics

MIN_SIZE, MAX_SIZE = 8, 64
MIN_EPOCHS, MIN_STEPS = 3, 1400  # epochs=None: 3 epochs of MNIST; small sets get more epochs
MAX_EXEMPLARS = 4096  # a folder without classes: at most this many of its images become classes


# ---------------------------------------------------------------------------------------- training
def _random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by its own integer (dy, dx) in [-max_shift, max_shift], edges replicated."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")  # (N, C, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=g)
    rows = (dy + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx + torch.arange(w))[:, None, :]  # (N, 1, W)
    out = padded[torch.arange(n)[:, None, None], :, rows, cols]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def _lr_at(step: int, total: int, lr: float) -> float:
    """One-cycle: linear warm-up over the first 5% of steps, then cosine decay to 0."""
    warm = max(1, total // 20)
    if step < warm:
        return lr * (step + 1) / warm
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _subset(
    images: torch.Tensor, labels: torch.Tensor | None, limit: int | None, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if limit is not None and limit < len(images):
        idx = torch.randperm(len(images), generator=g)[:limit]
        images, labels = images[idx], None if labels is None else labels[idx]
    return images, labels


def exemplar_task(images: torch.Tensor, limit: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-supervised task for images without classes (Exemplar-CNN, Dosovitskiy et al. 2014):
    every image is its own class, seen under random shifts. Telling each image from all the others
    needs its shapes and colours, so the features measure those; they come from the user's own
    images rather than from another set's classes. (A rotation-prediction network, RotNet, was the
    other candidate: on Twemoji it reached 59% and its features let blank images in as 100%
    precision; README, "Your own colour images".) At most `limit` images
    (a random subset) become classes."""
    if len(images) > limit:
        images = images[torch.randperm(len(images), generator=g)[:limit]]
    return images, torch.arange(len(images))


def _task(train: ImageSet, dataset: str) -> str:
    """The classifier's task: "classes" (the labels, at least two) or "exemplars" (no labels)."""
    if train.labels is None or train.class_names is None:
        return "exemplars"
    if len(train.class_names) < 2:
        raise DataError(f"{dataset} has a single class: put the images in one subfolder per class "
                        "(at least two), or in one folder without subfolders (exemplar_task)")  # fmt: skip
    return "classes"


def _check_options(epochs, batch_size, lr, width, feature_dim, max_shift, max_train_images, max_test_images):
    checks = (
        ("epochs", epochs, 1, True),
        ("batch_size", batch_size, 1, False),
        ("width", width, 1, False),
        ("feature_dim", feature_dim, 2, False),
        ("max_shift", max_shift, 0, False),
        ("max_train_images", max_train_images, 1, True),
        ("max_test_images", max_test_images, 2, True),
    )
    for name, value, low, optional in checks:
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lr must be > 0, got {lr!r}")


def _fit(
    model: SmallConvNet,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int | None,
    batch_size: int,
    lr: float,
    max_shift: int,
    generator: torch.Generator,
    progress: bool,
    desc: str,
) -> int:
    """Cross-entropy training with AdamW and a one-cycle schedule; returns the epochs run.

    Args:
        x: (N, C, S, S) in [-1, 1]; y: (N,) class indices.
        epochs: None picks max(MIN_EPOCHS, enough for MIN_STEPS steps).
    """
    from ..progress import bar as progress_bar

    steps_per_epoch = math.ceil(len(x) / batch_size)
    if epochs is None:
        epochs = max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    total, step = epochs * steps_per_epoch, 0
    bar = progress_bar(total=total, desc=desc, disable=not progress, dynamic_ncols=True)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(_random_shift(x[idx], max_shift, generator)), y[idx])
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return epochs


def train_classifier(
    dataset: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    width: int = 16,
    feature_dim: int = 128,
    max_shift: int = 1,
    max_train_images: int | None = None,
    max_test_images: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the feature classifier on the train split, test it, cache it with test-split statistics.

    Args:
        dataset: "mnist", "fashion-mnist", "digits", "folder:PATH", "hf:NAME". With classes (a
            folder's subfolders) it learns them; without, `exemplar_task` (its test accuracy is
            on the exemplars, shifted).
        data_dir, image_size, channels: as for `load_image_dataset`.
        cache_dir: root of the classifier cache (default `default_cache_dir()`).
        epochs: passes over the train split; None: 3, or more for small datasets so that training
            takes at least 1400 steps (MNIST: 3 epochs, 2-3 min on one CPU thread; digits: ~120).
        batch_size, lr, seed: AdamW with a one-cycle schedule; the seed fixes init and order.
        width, feature_dim: network size (see SmallConvNet).
        max_shift: random-translation augmentation in pixels (0 turns it off).
        max_train_images, max_test_images: random subsets (quick tests); None uses every image.
        progress: show a tqdm bar.

    Returns:
        The classifier.json contents plus "path" (the folder written) and "seconds".
    """
    _check_options(epochs, batch_size, lr, width, feature_dim, max_shift, max_train_images, max_test_images)
    from ..checkpoint import check_writable

    check_writable(Path(cache_dir or default_cache_dir()))  # an unwritable cache, said before the training
    start_time = time.perf_counter()
    load = dict(data_dir=data_dir, image_size=image_size, channels=channels)
    train = load_image_dataset(dataset, split="train", **load)
    test = load_image_dataset(dataset, split="test", **load)
    task = _task(train, dataset)
    c, s, s2 = train.shape
    if s != s2 or not MIN_SIZE <= s <= MAX_SIZE:
        raise ConfigError(f"the classifier takes square images of side {MIN_SIZE}..{MAX_SIZE}, got {s}x{s2}")
    g = torch.Generator().manual_seed(seed)
    x_u8, y = _subset(train.images, train.labels, max_train_images, g)
    test_u8, test_y = _subset(test.images, test.labels, max_test_images, g)
    train_x, train_y, check_x, check_y = x_u8, y, test_u8, test_y
    if task == "exemplars":  # tested on the exemplars under fresh shifts (test images are no class)
        train_x, train_y = exemplar_task(x_u8, MAX_EXEMPLARS, g)
        check_x, check_y = _random_shift(train_x, max(1, max_shift), g), train_y
        test_y = torch.full((len(test_u8),), -1, dtype=torch.int64)
    arch = {
        "in_channels": c,
        "num_classes": len(train.class_names) if task == "classes" else len(train_y),
        "width": width,
        "feature_dim": feature_dim,
    }
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = SmallConvNet(**arch)
    epochs = _fit(
        model,
        to_model_range(train_x),
        train_y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_shift=max_shift,
        generator=g,
        progress=progress,
        desc=f"classifier {dataset}",
    )
    feats, probs = _embed(model, test_u8, 500)  # the reference features: the test split's
    if check_x is not test_u8:
        probs = _embed(model, check_x, 500)[1]
    accuracy = float((probs.argmax(1) == check_y).double().mean())
    mu, sigma = feature_statistics(feats)
    info = {
        "format": FORMAT,
        "dataset": dataset,
        "dataset_key": dataset_key(dataset),
        "image_size": s,
        "channels": c,
        "task": task,  # classes: the dataset's labels; exemplars: each image its own class (no labels)
        "class_names": list(train.class_names) if task == "classes" else [],  # exemplars: images
        "arch": arch,
        "test_accuracy": accuracy,
        "test_images": len(test_u8),
        # folders without train/ and test/ use the same images for both splits
        "held_out_test": not (
            dataset.startswith(FOLDER_PREFIX)
            and len(train) == len(test)
            and torch.equal(train.images, test.images)
        ),
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "max_shift": max_shift,
            "train_images": len(x_u8),
        },
        "seconds": round(time.perf_counter() - start_time, 1),
    }
    path = _save(
        Path(cache_dir or default_cache_dir()) / dataset_key(dataset) / shape_key(s, c),
        model,
        info,
        {"mu": mu, "sigma": sigma, "features": feats, "labels": test_y},
    )
    return {**info, "path": str(path)}


def _save(final: Path, model: nn.Module, info: dict, reference: dict[str, torch.Tensor]) -> Path:
    """Write the three files into a temp folder beside `final`, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    try:
        save_tensors(tmp / WEIGHTS, model.state_dict(), {"format": FORMAT})
        save_tensors(tmp / REFERENCE, reference, {"format": FORMAT})
        atomic_write_text(tmp / INFO, json.dumps(info, indent=2) + "\n")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final
