"""A small CNN classifier whose pooled features give a dataset-specific FID, precision and recall.

This module holds the network (`SmallConvNet`), the loaded `Classifier` with its `embed`, the cache
layout and `load_classifier`; training (`train_classifier`) is in classifier.py.

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
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.images import FOLDER_PREFIX, to_model_range
from ..errors import CheckpointError, ConfigError
from ..io import load_tensors

FORMAT = "ddpmkit-classifier-1"
WEIGHTS, INFO, REFERENCE = "classifier.safetensors", "classifier.json", "reference.safetensors"
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

    @property
    def task(self) -> str:
        """"classes" (the dataset's labels) or "exemplars" (each training image its own class)."""
        return self.info.get("task", "classes")

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
