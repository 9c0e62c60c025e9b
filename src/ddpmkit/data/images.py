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
  `train/` and `test/`, those are the splits; otherwise both splits are all the images.

Problems with files or options raise `DataError` / `ConfigError` with a one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError

IMAGE_DATASETS = ("mnist", "fashion-mnist", "digits")
FOLDER_PREFIX = "folder:"
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
DEFAULT_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
IDX_MD5 = {  # torchvision/datasets/mnist.py, MNIST.resources and FashionMNIST.resources
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
IDX_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
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
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
DIGITS_TRAIN_FRACTION = 0.8
DIGITS_SPLIT_SEED = 0
DEFAULT_FOLDER_SIZE = 32
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_CHUNK = 1 << 16


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


def is_image_dataset(name: str) -> bool:
    """True for the names in IMAGE_DATASETS and for any "folder:PATH"."""
    return name in IMAGE_DATASETS or name.startswith(FOLDER_PREFIX)


def load_image_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    mirror: str | None = None,
) -> ImageSet:
    """Load an image dataset into memory.

    Args:
        name: "mnist", "fashion-mnist", "digits" or "folder:PATH".
        split: "train" or "test" (MNIST's t10k files; see the module docstring for digits and folders).
        data_dir: folder with the IDX files (mnist / fashion-mnist only; also searched: data_dir/<name>).
        image_size: output side S. None keeps 28 (IDX) or 8 (digits) and gives 32 for folders.
            Other sizes resize with PIL (bilinear, antialiased when shrinking); folders first resize the
            shorter side to S and then center-crop S x S.
        channels: 1 or 3. None gives 1, except folders: 3 unless every image is grayscale.
        download: fetch missing IDX files from `mirror` (default DEFAULT_MIRRORS[name]) into data_dir.
        mirror: base URL that the IDX file names are appended to.

    Returns:
        An ImageSet with images (N, C, S, S) uint8.
    """
    _check_options(name, split, image_size, channels)
    if name.startswith(FOLDER_PREFIX):
        return _load_folder(name, split, image_size, channels)
    if name == "digits":
        return _load_digits(split, image_size, channels)
    return _load_idx(name, split, data_dir, image_size, channels, download, mirror)


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
            f"or {FOLDER_PREFIX}PATH"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"image_size must be an integer >= 1, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")


def _one_line(obj: object) -> str:
    """str(obj) on one line (error messages must not contain newlines)."""
    return " ".join(str(obj).split()) or type(obj).__name__


# ----------------------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or raw; detected from its first bytes) into a native-endian array.

    Args:
        path: the file.
        magic: the expected magic number (2051 for images, 2049 for labels); None accepts any IDX type.

    Returns:
        An array shaped as the header declares, e.g. (N, 28, 28) uint8 or (N,) uint8.

    Raises:
        DataError: unreadable, not gzip although named .gz, truncated or corrupt gzip, wrong magic,
            or a byte count that disagrees with the declared dimensions.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (its header starts {raw[:4].hex() or 'empty'})")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DataError(f"{path} has IDX magic number {found}, expected {magic}")
    if raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} has an unknown IDX data type 0x{raw[2]:02x}")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path} is truncated: its header needs {offset} bytes, got {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: {'x'.join(map(str, dims))} {dtype.name} needs {expected} "
            f"bytes with the header, got {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a valid gzip file or is truncated ({_one_line(e)})") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or _one_line(e)}") from e
    if path.suffix == ".gz":
        raise DataError(f"{path} is not a valid gzip file (it lacks the gzip magic bytes)")
    return data


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


def _idx_root(name: str, data_dir: str | Path | None, download: bool) -> Path:
    if data_dir is None:
        raise DataError(
            f"{name} needs a data folder: pass --data-dir DIR (add --download to fetch the files into it)"
        )
    root = Path(data_dir).expanduser()
    if not root.exists():
        if not download:
            raise DataError(
                f"data dir {root} does not exist; pass --download to fetch {name} into it, "
                "or --data-dir with a folder that holds the IDX files"
            )
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise DataError(f"cannot create data dir {root}: {e.strerror or _one_line(e)}") from e
    if not root.is_dir():
        raise DataError(f"data dir {root} is not a folder")
    return root


def _find_idx_file(root: Path, name: str, filename: str) -> Path | None:
    """The file as named or uncompressed (name minus .gz), in root or root/<name>."""
    for folder in (root, root / name):
        for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _find_or_fetch(name: str, split: str, root: Path, download: bool, mirror: str | None) -> list[Path]:
    """Paths of the (images, labels) files of a split, downloading the missing ones if allowed."""
    found = {f: _find_idx_file(root, name, f) for f in IDX_FILES[split]}
    missing = [f for f, p in found.items() if p is None]
    if missing and not download:
        empty = " (the folder is empty)" if not any(root.iterdir()) else ""
        raise DataError(
            f"{name} {split} files missing from {root}{empty}: {', '.join(missing)}; pass "
            "--download to fetch them, or --data-dir with a folder that holds them"
        )
    base = (mirror or DEFAULT_MIRRORS[name]).rstrip("/") + "/"
    for f in missing:
        found[f] = download_file(base + f, root / f, IDX_MD5[name][f])
    return [found[f] for f in IDX_FILES[split]]


def download_file(url: str, dest: Path, md5: str, *, timeout: float = 30) -> Path:
    """Download `url` to `dest` atomically (temp file in the same folder + os.replace), checking its md5.

    Args:
        url: http(s) URL.
        dest: final path; its folder is created if needed.
        md5: expected hex digest; on a mismatch nothing is left behind.
        timeout: seconds allowed for connecting and for each read.

    Returns:
        dest.

    Raises:
        DataError: HTTP error, offline, timeout, bad URL, write error, or checksum mismatch.
    """
    from tqdm.auto import tqdm  # only downloads need it

    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DataError(f"cannot write to {dest.parent}: {e.strerror or _one_line(e)}") from e
    tmp, digest = Path(tmp_name), hashlib.md5(usedforsecurity=False)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ddpmkit"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=None,
                leave=False,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if got != md5.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {got}; the download was deleted"
            )
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download {url}: HTTP {e.code} {_one_line(e.reason)}") from e
    except urllib.error.URLError as e:
        raise DataError(f"cannot download {url}: {_one_line(e.reason)}") from e
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise DataError(f"cannot download {url}: {_one_line(e)}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ------------------------------------------------------------------------------------ digits, folders


def _fit_square(im: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size`, center-crop size x size: (size, size) or (size, size, 3)."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)  # antialiased when shrinking
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def _gray_to_tensor(arr: np.ndarray, image_size: int | None, channels: int | None) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, C, S, S) uint8, resized when image_size differs from H, W."""
    if image_size is not None and arr.shape[1:] != (image_size, image_size):
        arr = np.stack([_fit_square(Image.fromarray(a), image_size) for a in arr])
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


def _image_mode(path: Path) -> str:
    with _image_errors(path), Image.open(path) as im:  # reads the header only
        return im.mode


def _load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """(S, S) or (S, S, 3) uint8 pixels of one file; transparency is flattened onto white."""
    with _image_errors(path), Image.open(path) as im:
        im.seek(0)  # first frame of an animated GIF / WebP
        if "A" in im.getbands() or "transparency" in im.info:
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
        return _fit_square(im.convert("L" if channels == 1 else "RGB"), size)


def _load_folder(name: str, split: str, image_size: int | None, channels: int | None) -> ImageSet:
    path = Path(name[len(FOLDER_PREFIX) :]).expanduser()
    if not path.exists():
        raise DataError(f"image folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"image folder {path} is not a folder")
    has_splits = all((path / s).is_dir() for s in SPLITS)
    roots = {s: path / s if has_splits else path for s in SPLITS}
    listing = {r: _image_files(r) for r in set(roots.values())}
    root, files = roots[split], listing[roots[split]]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    class_names = _folder_classes(listing)
    if channels is None:  # decided over all splits so that train and test agree
        every = [f for fs in listing.values() for f in fs]
        channels = 1 if all(_image_mode(f) in _GRAY_MODES for f in every) else 3
    pixels = np.stack([_load_image(f, image_size or DEFAULT_FOLDER_SIZE, channels) for f in files])
    images = (
        torch.from_numpy(pixels).unsqueeze(1)
        if channels == 1
        else (torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
    )  # (N, S, S, 3) -> (N, 3, S, S)
    labels = None
    if class_names is not None:
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in files], dtype=torch.int64)
    return ImageSet(images=images, labels=labels, class_names=class_names, name=name)
