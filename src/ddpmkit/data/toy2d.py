"""2-D point distributions: the Datasaurus dino (and the other 12 Datasaurus Dozen shapes), moons,
circles, spiral/swissroll, 8 Gaussians, a line, any CSV of x,y points, and `datasaurus`: all 13
shapes as one labelled set for class-conditional models.

Every distribution is a sampler `draw(n, rng) -> (n, 2) float64` in the dataset's own
coordinates, so that training data and independent reference draws (for the metric's noise
floor) come from one piece of code. The dino follows the seed notebooks (tiny-diffusion):
jitter 0.15, then x = (x/54 - 1) * 4, y = (y/48 - 1) * 4.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError

POINT_DATASETS = ("dino", "moons", "circles", "spiral", "swissroll", "8gaussians", "line")
# the Datasaurus Dozen (Matejka & Fitzmaurice 2017): the dino and 12 shapes with the same summary statistics
DATASAURUS = ("dino", "away", "h_lines", "v_lines", "x_shape", "star", "high_lines", "dots", "circle",
              "bullseye", "slant_up", "slant_down", "wide_lines")  # fmt: skip
LABELLED_POINTS = {"datasaurus": DATASAURUS}  # labelled sets: name -> the point datasets of its classes
Sampler = Callable[[int, np.random.Generator], np.ndarray]
MAX_ABS = 1e15  # CSV values beyond this overflow float32 once squared (for the data's std)


@cache
def datasaurus(name: str = "dino") -> np.ndarray:
    """The 142 raw (x, y) points of one Datasaurus Dozen set, from the TSV shipped in the package."""
    text = resources.files("ddpmkit.data").joinpath("DatasaurusDozen.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    pts = np.array([[float(x), float(y)] for d, x, y in rows if d == name])
    if len(pts) == 0:
        raise DataError(f"no Datasaurus set named {name!r}")
    return pts


def _datasaurus_shape(name: str) -> Sampler:
    """One Datasaurus set, resampled with jitter 0.15 and scaled as the dino of the seed notebooks."""

    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        raw = datasaurus(name)
        pts = raw[rng.integers(0, len(raw), size=n)] + rng.normal(size=(n, 2)) * 0.15
        return np.stack([(pts[:, 0] / 54 - 1) * 4, (pts[:, 1] / 48 - 1) * 4], axis=1)

    return draw


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    upper = rng.random(n) < 0.5
    a = rng.random(n) * math.pi
    x = np.where(upper, np.cos(a), 1 - np.cos(a))
    y = np.where(upper, np.sin(a), 0.5 - np.sin(a))
    return np.stack([x, y], 1) + rng.normal(size=(n, 2)) * 0.05


def _circles(n: int, rng: np.random.Generator) -> np.ndarray:
    r = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    a = rng.random(n) * 2 * math.pi
    return np.stack([r * np.cos(a), r * np.sin(a)], 1) + rng.normal(size=(n, 2)) * 0.03


def _spiral(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved arms of an Archimedean spiral."""
    s = np.sqrt(rng.random(n)) * 3 * math.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * np.stack([s * np.cos(s), s * np.sin(s)], 1) / (3 * math.pi)
    return pts + rng.normal(size=(n, 2)) * 0.02


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    """The 2-D section of the Swiss roll: t = 1.5 pi (1 + 2u), (t cos t, t sin t) / 10."""
    s = 1.5 * math.pi * (1 + 2 * rng.random(n))
    return np.stack([s * np.cos(s), s * np.sin(s)], 1) / 10 + rng.normal(size=(n, 2)) * 0.02


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.integers(0, 8, size=n) * (math.pi / 4)
    return 2 * np.stack([np.cos(a), np.sin(a)], 1) + rng.normal(size=(n, 2)) * 0.1


def _line(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.uniform(-1, 1, size=n)
    return np.stack([x, 0.5 * x], 1) + rng.normal(size=(n, 2)) * 0.01


_SAMPLERS: dict[str, Sampler] = {
    "dino": _datasaurus_shape("dino"),
    "moons": _moons,
    "circles": _circles,
    "spiral": _spiral,
    "swissroll": _swissroll,
    "8gaussians": _eight_gaussians,
    "line": _line,
    **{name: _datasaurus_shape(name) for name in DATASAURUS[1:]},
}


def unknown_dataset(name: str) -> DataError:
    return DataError(
        f"unknown dataset {name!r}; choose one of {', '.join(POINT_DATASETS)}, datasaurus (or one of its "
        f"shapes: {', '.join(DATASAURUS[1:])}), mnist, fashion-mnist, "
        "digits, folder:PATH, or a path to a CSV file of x,y points"
    )


def is_csv(name: str) -> bool:
    return name.lower().endswith((".csv", ".txt", ".tsv")) or Path(name).is_file()


def read_points_csv(path: str | Path) -> np.ndarray:
    """Read x,y points from a CSV file (comma, tab or semicolon; a header row is optional).

    Raises:
        DataError: missing or empty file, a row without exactly two columns, non-numeric, NaN,
            infinite or huge (> MAX_ABS) values (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read CSV file {path}: {e}") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"CSV file {path} is empty")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t ") if len(lines[0]) > 1 else csv.excel
    except csv.Error:
        raise DataError(f"{path} is not a CSV of x,y points (line 1: {lines[0][:40]!r})") from None
    rows = list(csv.reader(lines, dialect))
    pts = []
    for i, row in enumerate(rows):
        row = [c.strip() for c in row if c.strip() != ""]
        try:
            values = [float(c) for c in row]
        except ValueError:
            if i == 0:
                continue  # header
            raise DataError(f"{path}, line {i + 1}: non-numeric value in {','.join(row)!r}") from None
        if len(values) != 2:
            raise DataError(f"{path}, line {i + 1}: expected 2 columns (x,y), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{path}, line {i + 1}: NaN or infinite value")
        if max(abs(v) for v in values) > MAX_ABS:
            raise DataError(f"{path}, line {i + 1}: value beyond +-{MAX_ABS:g} (rescale the data: "
                            "training computes in float32)")  # fmt: skip
        pts.append(values)
    if len(pts) < 2:
        raise DataError(f"CSV file {path} holds {len(pts)} point(s); need at least 2")
    return np.asarray(pts, dtype=np.float64)


def point_sampler(name: str) -> Sampler:
    """The sampler of a named distribution, or of the empirical distribution of a CSV file."""
    if name in _SAMPLERS:
        return _SAMPLERS[name]
    if is_csv(name):
        pts = read_points_csv(name)
        return lambda n, rng: pts[rng.integers(0, len(pts), size=n)]
    raise unknown_dataset(name)


def is_point_dataset(name: str) -> bool:
    return name in _SAMPLERS or name in LABELLED_POINTS or is_csv(name)


def draw_labelled(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points of a labelled set (each class equally likely) and their (n,) int64 labels."""
    classes = LABELLED_POINTS[name]
    labels = rng.integers(0, len(classes), size=n)
    pts = np.empty((n, 2))
    for k, shape in enumerate(classes):
        pts[labels == k] = point_sampler(shape)(int((labels == k).sum()), rng)
    return pts, labels


def draw_points(name: str, n: int, seed: int) -> np.ndarray:
    """n points of a dataset, float64 (n, 2), reproducible for a seed (a labelled set: its mixture)."""
    rng = np.random.default_rng(seed)
    return draw_labelled(name, n, rng)[0] if name in LABELLED_POINTS else point_sampler(name)(n, rng)
