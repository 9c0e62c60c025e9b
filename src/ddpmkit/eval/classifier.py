"""A small CNN classifier whose pooled features give a dataset-specific FID, precision and recall.

Inception-v3 features (the standard FID) are tuned to ImageNet photos and cost ~6 GFLOPs per image at
299x299; for 8..64 pixel digits and clothes a small network trained on the dataset itself measures
what matters (does it look like a digit, which one) at a tiny fraction of the cost, like the
"LeNet FID" used for MNIST in the GAN literature. The numbers are comparable only between runs
evaluated with the same cached classifier, so every evaluation reports a real-data reference too.

Cache layout (all safetensors + JSON, written to a temp folder and renamed into place):
    <cache_dir>/<dataset-key>/<S>x<S>x<C>/classifier.safetensors   weights (incl. BatchNorm statistics)
                                          classifier.json          architecture, dataset, accuracy, ...
                                          reference.safetensors    test-split features: mu, sigma
                                                                   (float64), features, labels
`<dataset-key>` is the dataset name, or for folder:PATH a sanitised folder name plus a hash of the
absolute path. One classifier per image shape, so a 32x32 MNIST model and a 28x28 one can coexist.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import FOLDER_PREFIX, ImageSet, load_image_dataset, to_model_range
from ..errors import CheckpointError, ConfigError, DataError
from ..io import atomic_write_text, load_tensors, save_tensors
from .fid import feature_statistics

FORMAT = "ddpmkit-classifier-1"
WEIGHTS, INFO, REFERENCE = "classifier.safetensors", "classifier.json", "reference.safetensors"
MIN_SIZE, MAX_SIZE = 8, 64
INFO_KEYS = (
    "format",
    "dataset",
    "image_size",
    "channels",
    "class_names",
    "arch",
    "test_accuracy",
    "test_images",
)
MIN_EPOCHS, MIN_STEPS = 3, 1400  # epochs=None: 3 epochs of MNIST; small sets get more epochs


def default_cache_dir() -> Path:
    """$DDPMKIT_CACHE/classifiers, else $XDG_CACHE_HOME/ddpmkit/classifiers, else ~/.cache/ddpmkit/..."""
    root = (
        os.environ.get("DDPMKIT_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpmkit"
    )
    return Path(root).expanduser() / "classifiers"


def dataset_key(dataset: str) -> str:
    """Folder name for a dataset's classifiers: the name itself, or for folder:PATH a sanitised
    folder name plus the first 8 hex digits of sha1(absolute path)."""
    if not dataset.startswith(FOLDER_PREFIX):
        return dataset
    path = Path(dataset[len(FOLDER_PREFIX) :]).expanduser().resolve()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name).strip("-.") or "root"
    return f"folder-{stem[:40]}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def shape_key(image_size: int, channels: int) -> str:
    return f"{image_size}x{image_size}x{channels}"


def train_command(dataset: str, image_size: int | None = None, channels: int | None = None) -> str:
    cmd = f"ddpm train-classifier --dataset {shlex.quote(dataset)}"
    if image_size is not None:
        cmd += f" --image-size {image_size}"
    if channels is not None:
        cmd += f" --channels {channels}"
    return cmd


# ----------------------------------------------------------------------------------------- network
def _conv_bn(c_in: int, c_out: int, *, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallConvNet(nn.Module):
    """Conv-BN-ReLU stack with two stride-2 stages, global average pooling and a linear head.

    Works for any input side >= 8 (S -> S/2 -> S/4). `features(x)` is the pooled (N, feature_dim)
    vector used for FID and precision/recall; `forward(x)` gives (N, num_classes) logits.
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(in_channels, w),  # (N, w, S, S)
            _conv_bn(w, 2 * w, stride=2),  # (N, 2w, S/2, S/2)
            _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, stride=2),  # (N, 4w, S/4, S/4)
            _conv_bn(4 * w, 4 * w),
            _conv_bn(4 * w, feature_dim, k=1),  # (N, feature_dim, S/4, S/4)
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, S, S) in [-1, 1] -> (N, feature_dim)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Classifier:
    """A trained classifier with its cached test-split reference features.

    Attributes:
        model: the network, in eval mode.
        info: the contents of classifier.json.
        mu, sigma: (D,), (D, D) float64 statistics of the test-split features.
        features: (M, D) float32 test-split features; labels: (M,) int64.
        path: the folder it was loaded from.
    """

    model: SmallConvNet
    info: dict[str, Any]
    mu: torch.Tensor
    sigma: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    path: Path

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, *, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and class probabilities of uint8 images.

        Args:
            images: (N, C, S, S) uint8 with (S, C) the classifier's image size and channels.

        Returns:
            features (N, D) float32 and probs (N, num_classes) float32.
        """
        return _embed(self.model, images, batch_size)


@torch.inference_mode()
def _embed(model: SmallConvNet, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    device = next(model.parameters()).device
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(to_model_range(images[start : start + batch_size]).to(device))
        feats.append(f.float().cpu())
        probs.append(model.head(f).softmax(1).float().cpu())
    return torch.cat(feats), torch.cat(probs)


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


def _subset(data: ImageSet, limit: int | None, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data.images, data.labels
    if limit is not None and limit < len(images):
        idx = torch.randperm(len(images), generator=g)[:limit]
        images, labels = images[idx], labels[idx]
    return images, labels


def _load_labelled(dataset: str, split: str, data_dir, image_size, channels) -> ImageSet:
    data = load_image_dataset(
        dataset, split=split, data_dir=data_dir, image_size=image_size, channels=channels
    )
    if data.labels is None or data.class_names is None:
        raise DataError(
            f"{dataset} has no class labels, so no classifier can be trained and there is no "
            "classifier FID / precision / recall for it: put the images in one subfolder per "
            "class (at least two)"
        )
    return data


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
    from tqdm.auto import tqdm

    steps_per_epoch = math.ceil(len(x) / batch_size)
    if epochs is None:
        epochs = max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    total, step = epochs * steps_per_epoch, 0
    bar = tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True)
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
        dataset: a labelled image dataset: "mnist", "fashion-mnist", "digits" or "folder:PATH".
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
    start_time = time.perf_counter()
    train = _load_labelled(dataset, "train", data_dir, image_size, channels)
    test = _load_labelled(dataset, "test", data_dir, image_size, channels)
    c, s, s2 = train.shape
    if s != s2 or not MIN_SIZE <= s <= MAX_SIZE:
        raise ConfigError(f"the classifier takes square images of side {MIN_SIZE}..{MAX_SIZE}, got {s}x{s2}")
    g = torch.Generator().manual_seed(seed)
    x_u8, y = _subset(train, max_train_images, g)
    test_u8, test_y = _subset(test, max_test_images, g)
    arch = {
        "in_channels": c,
        "num_classes": len(train.class_names),
        "width": width,
        "feature_dim": feature_dim,
    }
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = SmallConvNet(**arch)
    epochs = _fit(
        model,
        to_model_range(x_u8),
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_shift=max_shift,
        generator=g,
        progress=progress,
        desc=f"classifier {dataset}",
    )
    feats, probs = _embed(model, test_u8, 500)
    accuracy = float((probs.argmax(1) == test_y).double().mean())
    mu, sigma = feature_statistics(feats)
    info = {
        "format": FORMAT,
        "dataset": dataset,
        "dataset_key": dataset_key(dataset),
        "image_size": s,
        "channels": c,
        "class_names": list(train.class_names),
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


# ----------------------------------------------------------------------------------------- loading
def cached_shapes(dataset: str, cache_dir: str | Path | None = None) -> list[str]:
    """Shape keys ("28x28x1", ...) of the complete classifiers cached for a dataset."""
    root = Path(cache_dir or default_cache_dir()) / dataset_key(dataset)
    if not root.is_dir():
        return []
    files = (INFO, WEIGHTS, REFERENCE)
    return sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and all((p / f).is_file() for f in files)
    )


def _pick_shape(
    dataset: str, root: Path, shapes: list[str], image_size: int | None, channels: int | None
) -> str:
    if not shapes:
        raise CheckpointError(
            f"no {dataset} classifier in {root}; train one with "
            f"`{train_command(dataset, image_size, channels)}`"
        )
    fits = [
        k
        for k in shapes
        if (image_size is None or k.startswith(f"{image_size}x{image_size}x"))
        and (channels is None or k.endswith(f"x{channels}"))
    ]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        want = "x".join(str(v) if v is not None else "?" for v in (image_size, image_size, channels))
        raise ConfigError(
            f"samples are {want} but the {dataset} classifier takes {' or '.join(shapes)}; "
            f"train one for this shape with `{train_command(dataset, image_size, channels)}`"
        )
    raise ConfigError(
        f"{dataset} has classifiers for {', '.join(fits)} in {root}: give the image size and channels"
    )


def load_classifier(
    dataset: str,
    cache_dir: str | Path | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    device: str | torch.device = "cpu",
) -> Classifier:
    """Load a cached classifier and its test-split reference features.

    Args:
        dataset: the name it was trained for.
        cache_dir: root of the classifier cache (default `default_cache_dir()`).
        image_size, channels: the shape it must take; None accepts the only cached one.

    Raises:
        CheckpointError: none cached for the dataset (the message names the command to run), or
            unreadable / inconsistent files.
        ConfigError: classifiers exist but none for the requested shape.
    """
    root = Path(cache_dir or default_cache_dir()) / dataset_key(dataset)
    path = root / _pick_shape(dataset, root, cached_shapes(dataset, cache_dir), image_size, channels)
    try:
        info = json.loads((path / INFO).read_text())
        missing = [k for k in INFO_KEYS if k not in info]
        if missing:
            raise KeyError(", ".join(missing))
        model = SmallConvNet(**info["arch"])
        state = load_tensors(path / WEIGHTS)
        model.load_state_dict(state)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"cannot read the classifier in {path} ({type(e).__name__}: {e}); "
            f"retrain it with `{train_command(dataset)}`"
        ) from None
    except RuntimeError as e:
        raise CheckpointError(f"{path / WEIGHTS} does not match {INFO}: {str(e).splitlines()[0]}") from None
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path / INFO} has format {info.get('format')!r}, expected {FORMAT!r}")
    ref = load_tensors(path / REFERENCE)
    if not {"mu", "sigma", "features", "labels"} <= ref.keys():
        raise CheckpointError(f"{path / REFERENCE} lacks some of mu, sigma, features, labels")
    return Classifier(
        model=model.to(device).eval(),
        info=info,
        mu=ref["mu"].double(),
        sigma=ref["sigma"].double(),
        features=ref["features"],
        labels=ref["labels"],
        path=path,
    )
