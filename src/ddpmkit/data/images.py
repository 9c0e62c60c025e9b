"""Image datasets as uint8 tensors: MNIST, Fashion-MNIST (IDX files), scikit-learn's 8x8 digits, folders.

Every loader returns an `ImageSet` of uint8 images shaped (N, C, H, W). `to_model_range` scales them
linearly to [-1, 1] as in Ho et al. 2020, Sec. 3.3, and `from_model_range` maps samples back.

Dataset names (`IMAGE_DATASETS`, plus `folder:PATH`):

* `mnist`, `fashion-mnist`: the four standard IDX files (LeCun et al., http://yann.lecun.com/exdb/mnist/;
  Xiao et al. 2017), gzipped or not, in `data_dir` or `data_dir/<name>`. `download=True` fetches the
  missing ones from a mirror and checks them against the torchvision md5s.
* `digits`: `sklearn.datasets.load_digits` (1797 8x8 images, bundled, no download). Values 0..16 are
  scaled to 0..255; train/test are a fixed 80/20 split (a seed-0 permutation).
* `folder:PATH`: every image under PATH (recursive; hidden files skipped). When every image sits in a
  subfolder and there are at least two, the subfolders are the classes (sorted). When PATH holds both
  `train/` and `test/`, those are the splits; otherwise both splits are all the images. Files that
  cannot be read are skipped with a `DataWarning` naming the first few (`strict=True` refuses
  them); byte-identical files are reported the same way. The size defaults to the images' own
  when they all share one square size (else 32).

IDX file reading, lookup and download (with md5 verification) live in `idx.py`.

Problems with files or options raise `DataError` / `ConfigError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError, DataWarning
from .idx import (  # the noqa names are re-exported: they lived here before idx.py was split out
    DEFAULT_MIRRORS,  # noqa: F401
    IDX_FILES,  # noqa: F401
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IDX_MD5,  # noqa: F401
    _find_or_fetch,
    _idx_root,
    _one_line,
    download_file,  # noqa: F401
    read_idx,
)
from .pixels import GRAY_MODES, RESIZES, fit_square, parse_colour, square, to_mode

IMAGE_DATASETS = ("mnist", "fashion-mnist", "digits")
FOLDER_PREFIX = "folder:"
HF_PREFIX = "hf:"  # Hugging Face datasets (data/hf.py)
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
_DIGITS = tuple(str(d) for d in range(10))
CLASS_NAMES = {
    "mnist": _DIGITS,
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "digits": _DIGITS,
}
DIGITS_TRAIN_FRACTION = 0.8
DIGITS_SPLIT_SEED = 0
DEFAULT_FOLDER_SIZE = 32
WHITE = (255, 255, 255)


@dataclass
class ImageSet:
    """A loaded image dataset.

    Attributes:
        images: (N, C, H, W) uint8 in [0, 255], C = 1 or 3.
        labels: (N,) int64 indices into `class_names`, or None when the data has no classes.
        class_names: one name per class, or None.
        name: the name it was loaded by ("mnist", "folder:/data/faces", ...).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels is not None and self.labels.shape != self.images.shape[:1]:
            raise DataError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class ImageOptions:
    """What every image source is given besides the name and the split."""

    data_dir: str | Path | None = None
    image_size: int | None = None
    channels: int | None = None
    download: bool = False
    mirror: str | None = None
    strict: bool = False
    resize: str = "crop"
    background: str = "white"


def _idx_source(name: str, split: str, o: ImageOptions) -> ImageSet:
    return _load_idx(name, split, o.data_dir, o.image_size, o.channels, o.download, o.mirror)


def _digits_source(name: str, split: str, o: ImageOptions) -> ImageSet:
    return _load_digits(split, o.image_size, o.channels)


def _folder_source(name: str, split: str, o: ImageOptions) -> ImageSet:
    return _load_folder(name, split, o.image_size, o.channels, o.strict, o.resize, o.background)


def _hf_source(name: str, split: str, o: ImageOptions) -> ImageSet:
    from .hf import load_hf  # lazy: `datasets` is an optional extra

    return load_hf(name, split, o.image_size, o.channels, DEFAULT_FOLDER_SIZE)


# The image sources: name -> (recognises(dataset name), load(name, split, ImageOptions) -> ImageSet).
# data.SOURCES lists them beside the points source, flat; a new source is one loader and one line.
IMAGE_SOURCES: dict[str, tuple] = {
    "idx": (lambda n: n in ("mnist", "fashion-mnist"), _idx_source),
    "digits": (lambda n: n == "digits", _digits_source),
    "folder": (lambda n: n.startswith(FOLDER_PREFIX), _folder_source),
    "hf": (lambda n: n.startswith(HF_PREFIX), _hf_source),
}


def image_source(name: str) -> str | None:
    """The IMAGE_SOURCES key that loads `name`, or None."""
    return next((k for k, (recognises, _) in IMAGE_SOURCES.items() if recognises(name)), None)


def is_image_dataset(name: str) -> bool:
    """True for the names in IMAGE_DATASETS, any "folder:PATH" and any "hf:NAME"."""
    return isinstance(name, str) and image_source(name) is not None


def load_image_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    mirror: str | None = None,
    strict: bool = False,
    resize: str = "crop",
    background: str = "white",
) -> ImageSet:
    """Load an image dataset into memory.

    Args:
        name: "mnist", "fashion-mnist", "digits", "folder:PATH" or "hf:NAME|PATH" (data/hf.py).
        split: "train" or "test" (MNIST's t10k files; see the module docstring for digits and folders).
        data_dir: folder with the IDX files (mnist / fashion-mnist only; also searched: data_dir/<name>).
        image_size: output side S. None keeps 28 (IDX) or 8 (digits) and gives 32 for folders.
            Other sizes resize with PIL (bilinear, antialiased when shrinking); folders first resize the
            shorter side to S and then center-crop S x S. Folders: None keeps the images' own size
            when they all share one square size, else 32.
        channels: 1 or 3. None gives 1, except folders: 3 unless every image is grayscale.
        download: fetch missing IDX files from `mirror` (default DEFAULT_MIRRORS[name]) into data_dir.
        mirror: base URL that the IDX file names are appended to.
        strict: folders: refuse (DataError) unreadable files instead of skipping them.
        resize: folders, non-square images: "crop" (shorter side to S, center crop) or "pad" (longer
            side to S, padded with `background`).
        background: folders: the colour transparency is flattened onto (and "pad" pads with).

    Returns:
        An ImageSet with images (N, C, S, S) uint8.
    """
    _check_options(name, split, image_size, channels)
    _, load = IMAGE_SOURCES[image_source(name)]
    return load(
        name,
        split,
        ImageOptions(data_dir, image_size, channels, download, mirror, strict, resize, background),
    )


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1] (Ho et al. 2020, Sec. 3.3: scaled linearly)."""
    return u8.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 in [0, 255]; values outside are clamped, then rounded."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def _check_options(name: str, split: str, image_size: int | None, channels: int | None) -> None:
    if not isinstance(name, str) or not is_image_dataset(name):
        raise ConfigError(
            f"unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)} "
            f"{FOLDER_PREFIX}PATH or {HF_PREFIX}NAME"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"image_size must be an integer >= 1, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")


# ----------------------------------------------------------------------------------------- IDX files


def _load_idx(
    name: str,
    split: str,
    data_dir: str | Path | None,
    image_size: int | None,
    channels: int | None,
    download: bool,
    mirror: str | None,
) -> ImageSet:
    root = _idx_root(name, data_dir, download)
    images_path, labels_path = _find_or_fetch(name, split, root, download, mirror)
    images = read_idx(images_path, magic=IDX_IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(labels_path, magic=IDX_LABELS_MAGIC)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataError(f"{images_path} holds no images")
    if labels.max() >= len(CLASS_NAMES[name]):
        raise DataError(
            f"{labels_path} has label {labels.max()}, but {name} has {len(CLASS_NAMES[name])} classes"
        )
    return ImageSet(
        images=_gray_to_tensor(images, image_size, channels),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=CLASS_NAMES[name],
        name=name,
    )


# ------------------------------------------------------------------------------------ digits, folders


def _check_fits(n: int, channels: int, size: int) -> None:
    """Refuse (ConfigError) a resized image set that would not fit in memory (twice: built + copied)."""
    from ..memory import check_fits

    check_fits(f"{n} images of {size}x{size}x{channels}", 2 * n * channels * size * size)


def _gray_to_tensor(arr: np.ndarray, image_size: int | None, channels: int | None) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, C, S, S) uint8, resized when image_size differs from H, W."""
    if image_size is not None and arr.shape[1:] != (image_size, image_size):
        _check_fits(len(arr), channels or 1, image_size)
        arr = np.stack([fit_square(Image.fromarray(a), image_size) for a in arr])
    x = torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(1)  # (N, 1, S, S)
    return x.repeat(1, 3, 1, 1) if channels == 3 else x


def _load_digits(split: str, image_size: int | None, channels: int | None) -> ImageSet:
    from sklearn.datasets import load_digits  # lazy: importing scikit-learn takes about a second

    bunch = load_digits()
    u8 = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(u8))
    n_train = int(DIGITS_TRAIN_FRACTION * len(u8))
    idx = order[:n_train] if split == "train" else order[n_train:]
    return ImageSet(
        images=_gray_to_tensor(u8[idx], image_size, channels),
        labels=torch.from_numpy(bunch.target[idx].astype(np.int64)),
        class_names=CLASS_NAMES["digits"],
        name="digits",
    )


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


def _load_image(
    path: Path, size: int, channels: int, resize: str = "crop", background: tuple[int, int, int] = WHITE
) -> np.ndarray:
    """(S, S) or (S, S, 3) uint8 pixels of one file; transparency is flattened onto `background`."""
    with _image_errors(path), Image.open(path) as im:
        return square(to_mode(im, channels, background), size, resize, background)


SHOWN = 3  # file names a warning lists


def _colour(background: str) -> tuple[int, int, int]:
    try:
        return parse_colour(background)
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"background must be a colour (white, #808080, ...), got {background!r}") from None


def _skip_or_refuse(bad: list[tuple[Path, DataError]], total: int, where: Path, strict: bool) -> None:
    if not bad:
        return
    names = ", ".join(str(p.relative_to(where)) for p, _ in bad[:SHOWN]) + (
        ", ..." if len(bad) > SHOWN else ""
    )
    if strict:
        raise DataError(f"{len(bad)} of the {total} image files under {where} cannot be read ({names}); "
                        f"first: {bad[0][1]}")  # fmt: skip
    warnings.warn(f"skipped {len(bad)} unreadable image file(s) of {total} under {where}: {names} "
                  "(data.strict = true refuses them)", DataWarning, stacklevel=3)  # fmt: skip


def _warn_duplicates(files: list[Path], where: Path) -> None:
    """Byte-identical files: a model trained on them sees those images twice as often."""
    seen: dict[str, Path] = {}
    dups = []
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest in seen:
            dups.append((f, seen[digest]))
        else:
            seen[digest] = f
    if dups:
        rel = lambda f: str(f.relative_to(where))  # noqa: E731
        shown = ", ".join(f"{rel(a)} = {rel(b)}" for a, b in dups[:SHOWN]) + (
            ", ..." if len(dups) > SHOWN else ""
        )
        warnings.warn(
            f"{len(dups)} duplicate image file(s) under {where}: {shown}", DataWarning, stacklevel=3
        )


def _native_size(sizes: set[tuple[int, int]]) -> int:
    """The images' own side when they all share one square size, else DEFAULT_FOLDER_SIZE."""
    if len(sizes) == 1 and (w := next(iter(sizes)))[0] == w[1]:
        return w[0]
    return DEFAULT_FOLDER_SIZE


def _load_folder(
    name: str,
    split: str,
    image_size: int | None,
    channels: int | None,
    strict: bool = False,
    resize: str = "crop",
    background: str = "white",
) -> ImageSet:
    if resize not in RESIZES:
        raise ConfigError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    rgb = _colour(background)
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
    every = sorted({f for fs in listing.values() for f in fs})
    headers, bad = {}, []
    for f in every:  # headers only: modes and sizes decided over all splits, so that they agree
        try:
            headers[f] = _image_header(f)
        except DataError as e:
            bad.append((f, e))
    size = image_size or _native_size({headers[f][1] for f in headers})
    if channels is None:
        channels = 1 if all(mode in GRAY_MODES for mode, _ in headers.values()) else 3
    files = [f for f in listing[root] if f in headers]
    _check_fits(len(files), channels, size)
    pixels, kept = [], []
    for f in files:
        try:
            pixels.append(_load_image(f, size, channels, resize, rgb))
            kept.append(f)
        except DataError as e:  # a header that reads, data that does not (a truncated file)
            bad.append((f, e))
    in_split = set(listing[root])
    _skip_or_refuse([b for b in bad if b[0] in in_split], len(in_split), root, strict)
    if not kept:
        raise DataError(f"none of the {len(listing[root])} image files in {root} can be read")
    _warn_duplicates(kept, root)
    class_names = _folder_classes({r: [f for f in fs if f in headers] for r, fs in listing.items()})
    arr = np.stack(pixels)
    images = torch.from_numpy(arr)
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2).contiguous()
    labels = None
    if class_names is not None:
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in kept], dtype=torch.int64)
    return ImageSet(images=images, labels=labels, class_names=class_names, name=name)
