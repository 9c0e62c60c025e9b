"""`folder:PATH` image sets: every image file under PATH, in memory as uint8 (N, C, S, S).

Recursive, hidden files and folders skipped. When every image sits in a subfolder and there are at
least two, the subfolders are the classes (sorted); when PATH holds both `train/` and `test/`, those
are the splits, otherwise both splits are all the images. Modes and sizes are read from the headers
of every split, so that train and test agree: 1 channel only when every image is grayscale, and the
side defaults to the images' own when they all share one square size (else 32). Transparency is
flattened onto `background`; non-square images are center-cropped or padded (`resize`). Files that
cannot be read are skipped with a `DataWarning` naming the first few (`strict` refuses them), and
byte-identical files are reported the same way.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checks import check_colour
from ..config import RESIZES
from ..errors import ConfigError, DataError, DataWarning
from .idx import _one_line
from .images import (
    DEFAULT_FOLDER_SIZE,
    FOLDER_PREFIX,
    IMAGE_EXTENSIONS,
    SPLITS,
    ImageOptions,
    ImageSet,
    check_fits,
)
from .pixels import GRAY_MODES, square, to_mode

SHOWN = 3  # file names a warning lists


def _image_files(root: Path) -> list[Path]:
    """Image files under root, recursive, sorted; hidden files and folders are skipped."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _folder_classes(listing: dict[Path, list[Path]]) -> tuple[str, ...] | None:
    """Class names when every image is in a subfolder of its root and there are >= 2 of them."""
    names: set[str] = set()
    for root, files in listing.items():
        parts = [f.relative_to(root).parts for f in files]
        if any(len(p) < 2 for p in parts):
            return None
        names.update(p[0] for p in parts)
    return tuple(sorted(names)) if len(names) >= 2 else None


@contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Turn whatever PIL raises for a bad file into one DataError naming the file."""
    try:
        yield
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {_one_line(e)}") from e


def _image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from the file's header."""
    with _image_errors(path), Image.open(path) as im:
        return im.mode, im.size


def _decode(path: Path, data: bytes, size: int, channels: int, resize: str, background) -> np.ndarray:
    """(S, S) or (S, S, 3) uint8 pixels of one file's bytes."""
    with _image_errors(path), Image.open(io.BytesIO(data)) as im:
        return square(to_mode(im, channels, background), size, resize, background)


def _listed(items: list[str]) -> str:
    """The first SHOWN items, comma-separated, "..." when there are more."""
    return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def _skip_or_refuse(bad: list[tuple[Path, DataError]], total: int, where: Path, strict: bool) -> None:
    if not bad:
        return
    names = _listed([str(p.relative_to(where)) for p, _ in bad])
    if strict:
        raise DataError(f"{len(bad)} of the {total} image files under {where} cannot be read ({names}); "
                        f"first: {bad[0][1]}")  # fmt: skip
    warnings.warn(f"skipped {len(bad)} unreadable image file(s) of {total} under {where}: {names} "
                  "(data.strict = true refuses them)", DataWarning, stacklevel=4)  # fmt: skip


def _warn_duplicates(dups: list[tuple[Path, Path]], where: Path) -> None:
    """Byte-identical files: a model trained on them sees those images twice as often."""
    if dups:
        shown = _listed([f"{a.relative_to(where)} = {b.relative_to(where)}" for a, b in dups])
        warnings.warn(
            f"{len(dups)} duplicate image file(s) under {where}: {shown}", DataWarning, stacklevel=4
        )


def _native_size(sizes: set[tuple[int, int]]) -> int:
    """The images' own side when they all share one square size, else DEFAULT_FOLDER_SIZE."""
    if len(sizes) == 1 and (w := next(iter(sizes)))[0] == w[1]:
        return w[0]
    return DEFAULT_FOLDER_SIZE


def load_folder(name: str, split: str, o: ImageOptions) -> ImageSet:
    """The `split` of `folder:PATH` (see the module docstring)."""
    if o.resize not in RESIZES:
        raise ConfigError(f"resize must be one of {', '.join(RESIZES)}, got {o.resize!r}")
    rgb = check_colour("background", o.background)
    path = Path(name[len(FOLDER_PREFIX) :]).expanduser()
    if not path.exists():
        raise DataError(f"image folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"image folder {path} is not a folder")
    has_splits = all((path / s).is_dir() for s in SPLITS)
    roots = {s: path / s if has_splits else path for s in SPLITS}
    listing = {r: _image_files(r) for r in set(roots.values())}
    root = roots[split]
    if not listing[root]:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    headers, bad = {}, []
    for f in sorted({f for fs in listing.values() for f in fs}):  # every split's headers
        try:
            headers[f] = _image_header(f)
        except DataError as e:
            bad.append((f, e))
    size = o.image_size or _native_size({hw for _, hw in headers.values()})
    channels = o.channels or (1 if all(mode in GRAY_MODES for mode, _ in headers.values()) else 3)
    files = [f for f in listing[root] if f in headers]
    check_fits(len(files), channels, size)
    pixels, kept, seen, dups = [], [], {}, []
    for f in files:  # each file read once: decoded and hashed from the same bytes
        try:
            with _image_errors(f):
                data = f.read_bytes()
            pixels.append(_decode(f, data, size, channels, o.resize, rgb))
        except DataError as e:  # a header that reads, data that does not (a truncated file)
            bad.append((f, e))
            continue
        kept.append(f)
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            dups.append((f, seen[digest]))
        seen.setdefault(digest, f)
    in_split = set(listing[root])
    _skip_or_refuse([b for b in bad if b[0] in in_split], len(in_split), root, o.strict)
    if not kept:
        raise DataError(f"none of the {len(in_split)} image files in {root} can be read")
    _warn_duplicates(dups, root)
    class_names = _folder_classes({r: [f for f in fs if f in headers] for r, fs in listing.items()})
    images = torch.from_numpy(np.stack(pixels))
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2).contiguous()
    labels = None
    if class_names is not None:
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in kept], dtype=torch.int64)
    return ImageSet(images=images, labels=labels, class_names=class_names, name=name)
