"""Datasets as in-memory tensors in the model's space, plus the map back to the data's own space.

Points are standardised per coordinate (mean 0, std 1) for training and mapped back for samples;
images are scaled from uint8 to [-1, 1]. `build_dataset(cfg, seed)` is the one entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from .toy2d import POINT_DATASETS, draw_points, is_point_dataset, read_points_csv, unknown_dataset

__all__ = ["Dataset", "build_dataset", "POINT_DATASETS", "draw_points", "is_point_dataset"]


@dataclass
class Dataset:
    """Training data in model space.

    Attributes:
        x: (N, *D) float32: standardised points (N, 2) or images (N, C, H, W) in [-1, 1].
        kind: "points" or "images".
        mean, std: (2,) standardisation of points (None for images).
        labels: (N,) int64 class labels when the dataset has them.
    """

    name: str
    kind: str
    x: torch.Tensor
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)


def to_data_space(
    x: torch.Tensor, kind: str, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
) -> np.ndarray:
    """Model-space samples -> float32 (N, 2) points in the data's coordinates, or uint8 (N, H, W, C)."""
    if kind == "points":
        return (x.float().cpu() * std + mean).numpy().astype(np.float32)
    from .images import from_model_range

    return from_model_range(x.float().cpu()).permute(0, 2, 3, 1).numpy()


def standardize(points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pts = torch.as_tensor(points, dtype=torch.float64)
    mean, std = pts.mean(0), pts.std(0).clamp(min=1e-8)
    return ((pts - mean) / std).float(), mean.float(), std.float()


def build_dataset(cfg: DataConfig, seed: int = 0, split: str = "train") -> Dataset:
    """Load or draw the dataset named by `cfg.dataset` (see DataConfig)."""
    name = cfg.dataset
    if is_point_dataset(name):
        pts = read_points_csv(name) if name not in POINT_DATASETS else draw_points(name, cfg.num_points, seed)
        x, mean, std = standardize(pts)
        return Dataset(name=name, kind="points", x=x, mean=mean, std=std)
    from .images import is_image_dataset, load_image_dataset, to_model_range

    if not is_image_dataset(name):
        raise unknown_dataset(name)
    s = load_image_dataset(
        name,
        split=split,
        data_dir=cfg.data_dir,
        image_size=cfg.image_size,
        channels=cfg.channels,
        download=cfg.download,
        mirror=cfg.mirror,
    )
    return Dataset(
        name=name, kind="images", x=to_model_range(s.images), labels=s.labels, class_names=s.class_names
    )
