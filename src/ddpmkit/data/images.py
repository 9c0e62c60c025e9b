"""Image datasets as uint8 tensors: MNIST, Fashion-MNIST (IDX files), scikit-learn's 8x8 digits, folders.

Every loader returns an `ImageSet` of uint8 images shaped (N, C, H, W). `to_model_range` scales them
linearly to [-1, 1] as in Ho et al. 2020, Sec. 3.3, and `from_model_range` maps samples back.

Dataset names (`IMAGE_DATASETS`, plus `folder:PATH`):

* `mnist`, `fashion-mnist`: the four standard IDX files (LeCun et al., http://yann.lecun.com/exdb/mnist/;
  Xiao et al. 2017), gzipped or not, in `data_dir` or `data_dir/<name>`. `download=True` fetches the
  missing ones from a mirror and checks them against the torchvision md5s.
* `digits`: `sklearn.datasets.load_digits` (1797 8x8 images, bundled, no download). Values 0..16 are
  scaled to 0..255; train/test are a fixed 80/20 split (a seed-0 permutation).
* `folder:PATH`: every image under PATH, the subfolders as classes, `train/` and `test/` as the
  splits when both are there (data/folder.py says how).

IDX file reading, lookup and download (with md5 verification) live in `idx.py`.

Problems with files or options raise `DataError` / `ConfigError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from .idx import (  # the noqa names are re-exported: they lived here before idx.py was split out
    DEFAULT_MIRRORS,  # noqa: F401
    IDX_FILES,  # noqa: F401
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IDX_MD5,  # noqa: F401
    _find_or_fetch,
    _idx_root,
    download_file,  # noqa: F401
    read_idx,
)
from .pixels import fit_square

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
    from .folder import load_folder  # folder.py builds on this module's ImageSet and constants

    return load_folder(name, split, o)


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


# ------------------------------------------------------------------------------------------- digits


def check_fits(n: int, channels: int, size: int) -> None:
    """Refuse (ConfigError) a resized image set that would not fit in memory (twice: built + copied)."""
    from ..memory import check_fits

    check_fits(f"{n} images of {size}x{size}x{channels}", 2 * n * channels * size * size)


def _gray_to_tensor(arr: np.ndarray, image_size: int | None, channels: int | None) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, C, S, S) uint8, resized when image_size differs from H, W."""
    if image_size is not None and arr.shape[1:] != (image_size, image_size):
        check_fits(len(arr), channels or 1, image_size)
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
