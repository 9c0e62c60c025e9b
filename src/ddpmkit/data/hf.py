"""Hugging Face `datasets` as image sources: `hf:NAME` (downloaded by `datasets` when online),
`hf:PATH` of a local `save_to_disk` folder, or `hf:FILE.parquet` (offline).

The image column is the first `datasets.Image` feature and the label column the first `ClassLabel`
(its names become the class names), else a column named "label" or "labels"; `hf:SPEC?image=COL&label=COL`
names them. A DatasetDict gives its "train"/"test" splits; a single dataset serves both splits (as an
image folder without train/ and test/). `datasets` is the optional extra `ddpmkit[hf]`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import torch

from ..errors import DataError
from .images import HF_PREFIX, ImageSet
from .pixels import GRAY_MODES, fit_square


def load_hf(name: str, split: str, image_size: int | None, channels: int | None, default_size: int):
    """The images (N, C, S, S) uint8, labels and class names of an `hf:` dataset (see the module doc)."""
    spec, _, query = name[len(HF_PREFIX) :].partition("?")
    cols = {k: v[0] for k, v in parse_qs(query).items()}
    ds = _open(spec, split)
    image_col = cols.get("image") or _first(ds, "Image")
    if image_col is None or image_col not in ds.column_names:
        raise DataError(
            f"{name}: no image column (columns: {', '.join(ds.column_names)}); name it with ?image=COL"
        )
    label_col = (
        cols.get("label")
        or _first(ds, "ClassLabel")
        or next((c for c in ("label", "labels") if c in ds.column_names), None)
    )
    if label_col is not None and label_col not in ds.column_names:
        raise DataError(f"{name}: no column {label_col!r} (columns: {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise DataError(f"{name} holds no examples")
    pil = ds[image_col]
    if channels is None:
        channels = 1 if all(im.mode in GRAY_MODES for im in pil) else 3
    sizes = {im.size for im in pil}
    square = len(sizes) == 1 and pil[0].size[0] == pil[0].size[1]
    size = image_size or (pil[0].size[0] if square else default_size)  # one square size: kept
    pixels = np.stack([fit_square(im.convert("L" if channels == 1 else "RGB"), size) for im in pil])
    images = (
        torch.from_numpy(pixels).unsqueeze(1)
        if channels == 1
        else torch.from_numpy(pixels).permute(0, 3, 1, 2)
    )
    labels = names = None
    if label_col is not None:
        values = np.asarray(ds[label_col])
        if not np.issubdtype(values.dtype, np.integer) or values.min() < 0:
            raise DataError(f"{name}: labels in {label_col!r} must be integers >= 0")
        feature = ds.features[label_col]
        names = (
            tuple(feature.names)
            if hasattr(feature, "names")
            else tuple(str(i) for i in range(values.max() + 1))
        )
        labels = torch.from_numpy(values.astype(np.int64))
    return ImageSet(images=images.contiguous(), labels=labels, class_names=names, name=name)


def _open(spec: str, split: str):
    try:
        import datasets
    except ImportError:
        raise DataError("hf: datasets need the `datasets` package: pip install 'ddpmkit[hf]'") from None
    path = Path(spec).expanduser()
    if (path.suffix == ".parquet" or spec.startswith(("/", "./", "~"))) and not path.exists():
        raise DataError(f"{path} does not exist")
    try:
        if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
            files = str(path) if path.is_file() else str(path / "*.parquet")
            return datasets.load_dataset("parquet", data_files=files, split="train")
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path} has splits {', '.join(ds)}, not {split!r}")
                return ds[split]
            return ds
        return datasets.load_dataset(spec, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, ...)
        raise DataError(f"cannot load hf:{spec}: {' '.join(str(e).split())[:300]}") from None


def _first(ds, kind: str) -> str | None:
    """The first column whose feature type is `kind` ("Image", "ClassLabel")."""
    return next((c for c, f in ds.features.items() if type(f).__name__ == kind), None)
