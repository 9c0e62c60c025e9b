"""Pixel helpers shared by the image sources (folders, Hugging Face, IDX resizing)."""

from __future__ import annotations

import numpy as np
from PIL import Image

GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")  # PIL modes of gray images


def fit_square(im: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size`, center-crop size x size: (size, size) or (size, size, 3)."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)  # antialiased when shrinking
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def pad_square(im: Image.Image, size: int, fill: tuple[int, int, int] | int) -> np.ndarray:
    """Resize the longer side to `size`, pad the other to size x size with `fill`, centered."""
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = Image.new(im.mode, (size, size), fill)
    canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas)


def to_mode(im: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """First frame, transparency flattened onto `background`, then L (1 channel) or RGB (3)."""
    im.seek(0)  # first frame of an animated GIF / WebP
    if "A" in im.getbands() or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, background + (255,)), im.convert("RGBA"))
    return im.convert("L" if channels == 1 else "RGB")


def square(im: Image.Image, size: int, resize: str, background: tuple[int, int, int]) -> np.ndarray:
    """`im` (in its final mode) as size x size pixels by the resize policy (config.RESIZES)."""
    if resize == "pad":
        fill = round(0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2])
        return pad_square(im, size, fill if im.mode == "L" else background)
    return fit_square(im, size)
