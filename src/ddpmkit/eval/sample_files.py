"""Samples .npz files as `ddpm sample` writes them and `ddpm eval` reads them: `arr_0` (the
guided-diffusion convention: uint8 (N, H, W, C) images or float (N, 2) points) and, for class-conditional
samples, `labels` with `class_names` (and `guidance` for a sweep). Nothing is pickle-loaded."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError


def load_sample_labels(path: str | Path) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """The `labels` (and `class_names`) of a class-conditional samples .npz, or (None, None).
    A guidance sweep (several `guidance` values) must be evaluated one value at a time."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "labels" not in npz.files:
                return None, None
            if "guidance" in npz.files and len(np.unique(npz["guidance"])) > 1:
                raise ConfigError(f"{path} holds a guidance sweep; sample one guidance value to evaluate it")
            names = tuple(str(n) for n in npz["class_names"]) if "class_names" in npz.files else None
            labels, samples = npz["labels"], len(npz["arr_0"]) if "arr_0" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # object arrays: ValueError
        raise DataError(f"cannot read the labels of {path}: {' '.join(str(e).split())[:300]}") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a 1-D array of integer class indices, got {labels.dtype} "
                        f"{tuple(labels.shape)} (no float or negative labels are guessed at)")  # fmt: skip
    if samples is not None and len(labels) != samples:
        raise DataError(f"{path}: {len(labels)} labels for {samples} samples")
    if len(labels) and (labels.min() < 0 or (names and labels.max() >= len(names))):
        top = f"0..{len(names) - 1}" if names else ">= 0"
        raise DataError(f"{path}: labels must lie in {top}, got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64), names


def load_samples_npz(path: str | Path) -> tuple[np.ndarray, str]:
    """Read `arr_0` of a samples .npz and say what it holds.

    Returns:
        (array, kind): kind "images" for uint8 (N, H, W, C) with C in {1, 3} ((N, H, W) gets C = 1),
        or "points" for float (N, 2).

    Raises:
        DataError: missing / unreadable file, no arr_0, or any other dtype or shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise DataError(f"{path} is not an .npz archive (an .npz written by `ddpm sample` is expected)")
    try:
        npz = np.load(path, allow_pickle=False)  # object arrays (pickles) raise ValueError
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a .npy array, not an .npz archive with arr_0")
        with npz:
            if "arr_0" not in npz.files:
                raise DataError(f"{path} has no arr_0 (it holds {', '.join(npz.files) or 'nothing'})")
            arr = npz["arr_0"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {path} as .npz: {' '.join(str(e).split())}") from None
    where = f"{path}: arr_0 is {arr.dtype} {tuple(arr.shape)}"
    if len(arr) == 0:
        raise DataError(f"{where}: it holds no samples")
    if arr.ndim == 2 and arr.shape[1] == 2 and np.issubdtype(arr.dtype, np.floating):
        bad = int((~np.isfinite(arr).all(axis=1)).sum())
        if bad:
            raise DataError(f"{where}: {bad} of its {len(arr)} points are NaN or infinite")
        return arr, "points"
    if arr.dtype != np.uint8:
        raise DataError(f"{where}; images must be uint8 in [0, 255] (points: float (N, 2))")
    if arr.ndim == 3:
        arr = arr[..., None]  # (N, H, W) -> (N, H, W, 1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        hint = " (that looks like (N, C, H, W))" if arr.ndim == 4 and arr.shape[1] in (1, 3) else ""
        raise DataError(f"{where}; images must be (N, H, W, C) with C = 1 or 3{hint}")
    return arr, "images"
