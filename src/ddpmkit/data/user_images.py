"""Images and masks that a user hands to `ddpm inpaint` / `ddpm edit` / `ddpm interpolate`.

They are checked against the run's image shape (C, H, W) and never resized or converted behind the
user's back: a wrong size or mode is a DataError that says what was expected. Images are returned
as uint8 (N, H, W, C), masks as bool (H, W) or (N, H, W) with True where the model fills in.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

MODES = {1: ("L",), 3: ("RGB",)}  # PIL modes accepted for 1- and 3-channel models
NAMED_MASKS = ("left", "right", "top", "bottom", "center")


def read_image(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One PNG/JPEG/... image as uint8 (1, H, W, C), which must be (C, H, W) = `shape`."""
    c, h, w = shape
    im = _open(path)
    if im.mode not in MODES[c]:
        hint = "a grayscale (mode L)" if c == 1 else "an RGB"
        raise DataError(
            f"{path} is a mode {im.mode} image; this model draws {c}-channel images: give {hint} image"
        )
    if im.size != (w, h):
        raise DataError(f"{path} is {im.size[0]}x{im.size[1]} pixels; this model draws {w}x{h} images")
    return np.asarray(im, dtype=np.uint8).reshape(1, h, w, c)


def check_batch(
    arr: np.ndarray, mask: np.ndarray | None, shape: tuple[int, int, int], where: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch (arr_0 of an .npz: uint8 (N, H, W, C)) and its optional mask ((H, W) or (N, H, W),
    nonzero = fill in), checked against the run's (C, H, W); the mask comes back bool."""
    c, h, w = shape
    if arr.dtype != np.uint8 or arr.shape[1:] != (h, w, c):
        raise DataError(f"{where} holds {arr.dtype} images of shape {arr.shape[1:]}; this model draws uint8 "
                        f"(H, W, C) = {(h, w, c)}")  # fmt: skip
    if mask is None:
        return arr, None
    mask = _binary(mask, f"{where}'s mask")
    if mask.shape not in ((h, w), (len(arr), h, w)):
        raise DataError(f"{where}'s mask is {mask.shape}; expected (H, W) or (N, H, W) = {(len(arr), h, w)}")
    return arr, mask


def read_mask(spec: str, size: tuple[int, int]) -> np.ndarray:
    """The region to fill in, bool (H, W): a named half (left, right, top, bottom), the centre
    square (half the side), or a PNG of the image's size, white (nonzero) = fill in, black = keep."""
    h, w = size
    m = np.zeros((h, w), dtype=bool)
    if spec in NAMED_MASKS:
        if spec == "left":
            m[:, : w // 2] = True
        elif spec == "right":
            m[:, w // 2 :] = True
        elif spec == "top":
            m[: h // 2] = True
        elif spec == "bottom":
            m[h // 2 :] = True
        else:
            m[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = True
        return m
    if not Path(spec).exists():
        raise DataError(f"mask {spec!r} is neither one of {', '.join(NAMED_MASKS)} nor an image file")
    im = _open(spec)
    if im.size != (w, h):
        raise DataError(f"mask {spec} is {im.size[0]}x{im.size[1]} pixels; the images are {w}x{h}")
    return _binary(np.asarray(im.convert("L")), f"mask {spec}")


def _binary(mask: np.ndarray, what: str) -> np.ndarray:
    values = np.unique(mask)
    if mask.ndim not in (2, 3) or len(values) > 2 or not set(values.tolist()) <= {0, values.max()}:
        raise DataError(f"{what} must be binary (black = keep, white = fill in), found {len(values)} "
                        f"distinct values")  # fmt: skip
    return mask.astype(bool)


MAX_PIXELS = 4096 * 4096  # an input image larger than the largest model side squared is refused unread


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():  # a decompression bomb is refused, not loaded with a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)  # the header only: sizes are checked before the pixels are read
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise DataError(
                    f"image {path} is {im.size[0]}x{im.size[1]} pixels, more than any model here draws"
                )
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombWarning, Image.DecompressionBombError) as e:  # fmt: skip
        raise DataError(f"cannot read image {path}: {str(e)[:200]}") from None
    return im
