"""Data spaces: how data is represented for the model, and how samples go back, look and are saved.

A `DataSpace` replaces the `kind == "points" / "images"` branches: the trainer, the samplers and
the CLI ask the run's space for the map to model space and back, the default clip range of the
predicted x0, how many samples to draw per batch, and how to draw samples, trajectories and the
forward process. Pictures go through `viz` (matplotlib/PIL helpers that import only `io`).
The latent space of an autoencoder is one more class (`latent.py`, its `to_data` decodes) and one
registry line, with no change to samplers, trainer or CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .images import from_model_range, to_model_range
from .toy2d import draw_points


def real_points(dataset: str, n: int, seed: int = 12345) -> np.ndarray:
    """n real points of a point dataset in its own coordinates, reproducible for a seed."""
    return draw_points(dataset, n, seed)


class DataSpace:
    """Base class. Subclasses set the class attributes and implement the maps and pictures.

    Attributes:
        name: the registry name, saved with the weights ("data.space").
        clip_range: range the predicted x0 is clamped to by default, or None.
        sample_batch_size: samples per sampler call when none is asked (None: all at once).
        record_limit: how many samples' reverse trajectories the pictures show at most.
        forward_examples: examples shown in the forward-process picture.
        report_samples: samples drawn for a run's report (None: `sample.num_samples`).
        discrete_8bit: data are 8-bit values scaled to [-1, 1], so bits/dim is defined.
        step_progress: show a progress bar over sampler steps (slow models).
        data_kind: what `to_data` gives, "points" or "images" (a latent space's samples are images).
        can_inpaint: model-space values are the data's own (pixels), so RePaint can keep known ones.
    """

    name: ClassVar[str]
    clip_range: ClassVar[tuple[float, float] | None] = None
    sample_batch_size: ClassVar[int | None] = None
    record_limit: ClassVar[int | None] = None
    forward_examples: ClassVar[int] = 6
    report_samples: ClassVar[int | None] = None
    discrete_8bit: ClassVar[bool] = False
    step_progress: ClassVar[bool] = False
    data_kind: ClassVar[str] = "images"
    can_inpaint: ClassVar[bool] = True

    @property
    def decoder(self) -> str:
        """The t = 0 term of the variational bound on this space (`GaussianDiffusion`'s `decoder`)."""
        return "discretized" if self.discrete_8bit else "gaussian"

    def to_model(self, data: np.ndarray | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_data(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors saved with the weights so that `from_state` rebuilds this space."""
        return {}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], cfg=None) -> DataSpace:
        """The space saved in `tensors` (a run's model file) for the run config `cfg`."""
        return cls()

    def describe(self, n: int, model_shape: tuple[int, ...]) -> str:
        """What n examples of this space are, for the training summary: `1686 images of 3x32x32`."""
        if self.data_kind == "points":
            return f"{n} points"
        return f"{n} {self.data_kind} of {'x'.join(map(str, model_shape))}"

    def to(self, device: torch.device | str) -> DataSpace:
        """Move what the space computes with (a latent space's autoencoder) to `device`."""
        return self

    def pixel_shape(self, model_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one example as `to_model` takes it, for model-space examples of `model_shape`."""
        return tuple(model_shape)

    def examples(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The first n of a dataset's tensors `x` (as `build_dataset` gives them) in model space."""
        return x[:n]

    def reference(self, dataset: str, n: int, seed: int = 12345) -> np.ndarray | None:
        """Real data in the data space drawn beside samples in pictures, or None."""
        return None

    def plot_samples(self, samples: np.ndarray, path: Path, *, dataset: str, title: str = "") -> None:
        raise NotImplementedError

    def animate(
        self, frames: Sequence[torch.Tensor], labels: Sequence[str], path: Path, *, dataset: str
    ) -> None:
        """A GIF of model-space frames (e.g. the reverse trajectory)."""
        raise NotImplementedError

    def plot_forward(self, frames: Sequence[torch.Tensor], titles: Sequence[str], path: Path) -> None:
        """The same examples (model space) noised at several t: frames[i] is (N, *D) at titles[i]."""
        raise NotImplementedError

    def plot_trajectory(
        self, x_t: Sequence[torch.Tensor], x0_pred: Sequence[torch.Tensor], titles: Sequence[str], path: Path
    ) -> None:
        """Reverse-trajectory frames (model space): the state x_t and the predicted x0 per step."""
        raise NotImplementedError

    def plot_table(
        self,
        cells: Sequence[Sequence[np.ndarray]],
        row_titles: Sequence[str],
        col_titles: Sequence[str],
        path: Path,
        *,
        references: Sequence[Sequence[np.ndarray | None]] | None = None,
        title: str = "",
    ) -> None:
        """A table of samples in the data space: cells[r][c] (e.g. rows = classes, columns =
        guidance values), each drawn over references[r][c] where the space has such a picture."""
        raise NotImplementedError


class PointSpace(DataSpace):
    """2-D points, standardised per coordinate for the model: x = (p - mean) / std."""

    name = "points"
    data_kind = "points"
    forward_examples = 2000

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean.float(), std.float()

    @classmethod
    def fit(cls, points: np.ndarray) -> tuple[PointSpace, torch.Tensor]:
        """The space standardising `points` (float64 statistics), and the points in it."""
        pts = torch.as_tensor(points, dtype=torch.float64)
        mean, std = pts.mean(0), pts.std(0).clamp(min=1e-8)
        return cls(mean.float(), std.float()), ((pts - mean) / std).float()

    def to_model(self, data):
        return (torch.as_tensor(data, dtype=torch.float32) - self.mean) / self.std

    def to_data(self, x):
        return (x.float().cpu() * self.std + self.mean).numpy().astype(np.float32)

    def state(self):
        return {"data.mean": self.mean, "data.std": self.std}

    @classmethod
    def from_state(cls, tensors, cfg=None):
        return cls(tensors["data.mean"], tensors["data.std"])

    def reference(self, dataset, n, seed=12345):
        return real_points(dataset, n, seed)

    def plot_samples(self, samples, path, *, dataset, title=""):
        from .. import viz
        from .toy2d import DATASAURUS, datasaurus

        distinct = len(datasaurus(dataset)) if dataset in DATASAURUS else None
        viz.plot_points_samples(samples, self.reference(dataset, len(samples)), path, title, distinct)

    def animate(self, frames, labels, path, *, dataset):
        from .. import viz

        data = [self.to_data(f) for f in frames]
        viz.points_gif(data, labels, path, reference=self.reference(dataset, len(data[-1])))

    def plot_forward(self, frames, titles, path):
        from .. import viz

        suptitle = "forward process q(x_t | x_0) (standardised coordinates)"
        viz.plot_points_strip([f.float().numpy() for f in frames], titles, path, suptitle=suptitle)

    def plot_trajectory(self, x_t, x0_pred, titles, path):
        from .. import viz

        rows = [[self.to_data(f) for f in x0_pred]]
        viz.plot_points_strip([self.to_data(f) for f in x_t], titles, path, suptitle="reverse trajectory",
                              rows=rows, row_titles=["x_t", "predicted x0"])  # fmt: skip

    def plot_table(self, cells, row_titles, col_titles, path, *, references=None, title=""):
        """One panel per cell, over its reference points; a single column is wrapped into rows of 5."""
        from .. import viz

        if len(col_titles) == 1:
            flat = [row[0] for row in cells]
            refs = [row[0] for row in references] if references else [None] * len(flat)
            wrap = lambda xs: [list(xs[i : i + 5]) for i in range(0, len(xs), 5)]  # noqa: E731
            viz.points_table(wrap(flat), wrap(list(row_titles)), path, references=wrap(refs), title=title)
            return
        titles = [[f"{r}, {c}" for c in col_titles] for r in row_titles]
        viz.points_table(cells, titles, path, references=references, title=title)


class ImageSpace(DataSpace):
    """8-bit images (N, C, H, W) scaled linearly to [-1, 1] (Ho et al. 2020, Sec. 3.3)."""

    name = "images"
    clip_range = (-1.0, 1.0)
    sample_batch_size = 256
    record_limit = 16
    report_samples = 64
    discrete_8bit = True
    step_progress = True

    def to_model(self, data):
        data = torch.as_tensor(data)
        return to_model_range(data) if data.dtype == torch.uint8 else data.float()

    def to_data(self, x):
        """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
        return from_model_range(x.float().cpu()).permute(0, 2, 3, 1).numpy()

    def plot_samples(self, samples, path, *, dataset, title=""):
        from .. import viz

        viz.save_image_grid(samples, path, title=title)

    def animate(self, frames, labels, path, *, dataset):
        from .. import viz

        viz.images_gif(frames, path)

    def plot_forward(self, frames, titles, path):
        from .. import viz

        rows = [torch.stack([f[i] for f in frames]) for i in range(len(frames[0]))]
        viz.image_rows(rows, titles, [""] * len(rows), path, title="forward process q(x_t | x_0)")

    def plot_table(self, cells, row_titles, col_titles, path, *, references=None, title=""):
        """Rows of image tiles (e.g. one row per class, one column per guidance value)."""
        from .. import viz

        viz.image_table(cells, row_titles, col_titles, path, title=title)

    def plot_trajectory(self, x_t, x0_pred, titles, path):
        """Rows: x_t and predicted x0 of the first 4 samples; columns: the frames."""
        from .. import viz

        k = min(4, x_t[0].shape[0])
        rows, names = [], []
        for j in range(k):
            rows += [torch.stack([f[j] for f in x_t]), torch.stack([f[j] for f in x0_pred])]
            names += [f"#{j} x_t", f"#{j} x0 pred"]
        viz.image_rows(rows, titles, names, path, title="reverse trajectory: x_t and predicted x0")


# name -> space class; data/__init__.py adds the spaces defined in modules of their own ("latent")
SPACES: dict[str, type[DataSpace]] = {"points": PointSpace, "images": ImageSpace}


def space_class(name: str) -> type[DataSpace]:
    from ..errors import CheckpointError

    if name not in SPACES:
        raise CheckpointError(f"unknown data space {name!r} (this ddpmkit knows {', '.join(SPACES)})")
    return SPACES[name]


def space_from_state(
    tensors: dict[str, torch.Tensor], data_shape: tuple[int, ...], name: str | None = None, cfg=None
) -> DataSpace:
    """The space saved with a run's weights (its name is in the file's metadata; ddpmkit 0.1 saved
    none, and its runs are points when the data shape is (D,), images otherwise)."""
    name = name or ("points" if len(data_shape) == 1 else "images")
    return space_class(name).from_state(tensors, cfg)
