"""Datasets as in-memory tensors in model space, each with the `DataSpace` that maps samples back.

Points are standardised per coordinate (mean 0, std 1) for training; images are scaled from uint8
to [-1, 1]. `build_dataset(cfg, seed)` is the one entry point; `SOURCES` is the registry that
recognises a dataset name and loads it (a new source is one loader and one line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig, preset_names
from ..errors import DataError
from .images import IMAGE_SOURCES, is_image_dataset, load_image_dataset
from .spaces import SPACES, DataSpace, ImageSpace, PointSpace, space_from_state
from .toy2d import (
    DATASAURUS,
    LABELLED_POINTS,
    POINT_DATASETS,
    draw_labelled,
    draw_points,
    is_point_dataset,
    read_points_csv,
    unknown_dataset,
)

__all__ = [
    "Dataset", "build_dataset", "POINT_DATASETS", "DATASAURUS", "LABELLED_POINTS",
    "draw_points", "is_point_dataset", "is_image_dataset",
    "DataSpace", "PointSpace", "ImageSpace", "SPACES", "space_from_state", "preset_for", "SOURCES",
]  # fmt: skip


@dataclass
class Dataset:
    """Training data in model space.

    Attributes:
        x: (N, *D) float32: standardised points (N, 2) or images (N, C, H, W) in [-1, 1].
        space: the map between model space and the data's own space (and its pictures).
        labels: (N,) int64 class labels when the dataset has them; class_names their names.
    """

    name: str
    x: torch.Tensor
    space: DataSpace
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)


MIN_TRAIN_IMAGES = 8  # fewer: refused (a batch, a held-out preview and the EMA need more than a handful)


def _load_points(cfg: DataConfig, seed: int, split: str) -> Dataset:
    name = cfg.dataset
    if name in LABELLED_POINTS:
        pts, labels = draw_labelled(name, cfg.num_points, np.random.default_rng(seed))
        space, x = PointSpace.fit(pts)
        return Dataset(name, x, space, torch.from_numpy(labels), LABELLED_POINTS[name])
    named = name in POINT_DATASETS or name in DATASAURUS
    pts = draw_points(name, cfg.num_points, seed) if named else read_points_csv(name)
    space, x = PointSpace.fit(pts)
    return Dataset(name=name, x=x, space=space)


def _load_images(cfg: DataConfig, seed: int, split: str) -> Dataset:
    s = load_image_dataset(
        cfg.dataset,
        split=split,
        data_dir=cfg.data_dir,
        image_size=cfg.image_size,
        channels=cfg.channels,
        download=cfg.download,
        mirror=cfg.mirror,
        strict=cfg.strict,
        resize=cfg.resize,
        background=cfg.background,
    )
    if split == "train" and len(s) < MIN_TRAIN_IMAGES:
        raise DataError(f"{cfg.dataset}: found {len(s)} image(s); training needs at least {MIN_TRAIN_IMAGES} "
                        "(and a diffusion model learns from thousands)")  # fmt: skip
    space = ImageSpace()
    return Dataset(name=cfg.dataset, x=space.to_model(s.images), space=space, labels=s.labels,
                   class_names=s.class_names)  # fmt: skip


@dataclass(frozen=True)
class Source:
    """A data source: which dataset names it loads, and how (cfg, seed, split) -> Dataset."""

    recognises: Callable[[str], bool]
    load: Callable[[DataConfig, int, str], Dataset]


# One flat registry: the first source that recognises a name loads it. Image sources are the
# IMAGE_SOURCES of images.py (also what `load_image_dataset` dispatches on), all loaded by _load_images.
SOURCES: dict[str, Source] = {
    "points": Source(is_point_dataset, _load_points),
    **{key: Source(recognises, _load_images) for key, (recognises, _) in IMAGE_SOURCES.items()},
}


def build_dataset(cfg: DataConfig, seed: int = 0, split: str = "train") -> Dataset:
    """Load or draw the dataset named by `cfg.dataset` (see DataConfig)."""
    for source in SOURCES.values():
        if source.recognises(cfg.dataset):
            return source.load(cfg, seed, split)
    raise unknown_dataset(cfg.dataset)


def preset_for(dataset: str) -> str:
    """The recipe used when none is named: the dataset's own preset, else "points" for point sets
    and "folder" (tuned on 32 px colour folders, docs/recipe.md) for folders and Hugging Face sets."""
    if dataset in preset_names():
        return dataset
    if is_point_dataset(dataset):
        return "points"
    if is_image_dataset(dataset):
        return "folder"
    raise unknown_dataset(dataset)
