"""Datasets as in-memory tensors in model space, each with the `DataSpace` that maps samples back.

Points are standardised per coordinate (mean 0, std 1) for training; images are scaled from uint8
to [-1, 1]. `build_dataset(cfg, seed)` is the one entry point; `SOURCES` is the registry that
recognises a dataset name and loads it (a new source is one loader and one line).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig, RunConfig, preset_names
from ..errors import DataError
from .images import IMAGE_SOURCES, is_image_dataset, load_image_dataset
from .latent import LatentSpace, latent_bound, latent_scale, load_autoencoder_run, saved_latent_space
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
    "DataSpace", "PointSpace", "ImageSpace", "LatentSpace", "SPACES", "space_from_state", "preset_for",
    "SOURCES", "build_run_data",
]  # fmt: skip
SPACES["latent"] = LatentSpace


@dataclass
class Dataset:
    """Training data in model space.

    Attributes:
        x: (N, *D) float32: standardised points (N, 2) or images (N, C, H, W) in [-1, 1].
        space: the map between model space and the data's own space (and its pictures).
        labels: (N,) int64 class labels when the dataset has them; class_names their names.
        x_flip: the model-space tensors of the horizontally flipped examples where they are not
            x.flip(-1) (latents), for `data.hflip`; None: flip x.
    """

    name: str
    x: torch.Tensor
    space: DataSpace
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None
    x_flip: torch.Tensor | None = None

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


def build_run_data(
    cfg: RunConfig,
    seed: int = 0,
    split: str = "train",
    resume_dir: Path | None = None,
    progress: bool = False,
    verify: bool = True,
) -> tuple[RunConfig, Dataset]:
    """The data of a training run in its data space (`data.space`), and `cfg` completed by it.

    A latent run encodes the dataset once with the autoencoder of `latent.autoencoder` (checked
    against the data) and computes the latent scale from these training latents; the returned
    config carries the autoencoder's architecture in its `model.autoencoder` section. A resumed
    latent run (`resume_dir`) uses the autoencoder and scale saved in its own model file, so that
    a later change to the autoencoder's run cannot change the data under it (`verify`: check that
    checkpoint's hash). `progress`: bars over the encoding."""
    data = build_dataset(cfg.data, seed, split)
    if cfg.data.space != "latent":
        return cfg, data
    if data.x.ndim != 4:
        raise DataError(f"latent diffusion needs images; {data.name} has data of shape {data.shape}")
    space = saved_latent_space(resume_dir, cfg, verify) if resume_dir is not None else None
    if space is None:
        ae, ae_cfg = load_autoencoder_run(cfg.latent.autoencoder, cfg, data.shape)
        model = dataclasses.replace(cfg.model, autoencoder=ae_cfg.model.autoencoder)
        cfg = dataclasses.replace(cfg, model=model)
        space = LatentSpace(ae, 1.0)
        z = space.encode(data.x, progress)
        space.scale = latent_scale(z)
        x = z * space.scale
        space.bound = latent_bound(x)
    else:
        x = space.to_model(data.x, progress)
    x_flip = space.to_model(data.x.flip(-1), progress) if cfg.data.hflip else None
    return cfg, Dataset(data.name, x, space, data.labels, data.class_names, x_flip)
