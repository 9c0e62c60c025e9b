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
