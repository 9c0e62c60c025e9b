"""MNIST-style IDX files: reading them, finding a dataset's files in a data folder, downloading.

`read_idx` parses an IDX file (gzipped or raw) into a numpy array and rejects malformed ones.
`_find_or_fetch` locates the (images, labels) files of a split in `data_dir` or `data_dir/<name>`
and, when allowed, fetches the missing ones with `download_file`: an atomic download (temp file +
rename) checked against the torchvision md5s in `IDX_MD5`. The loaders themselves are in images.py.
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
from pathlib import Path

import numpy as np

from ..errors import DataError

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
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK = 1 << 16


def _one_line(obj: object) -> str:
    """str(obj) on one line (error messages must not contain newlines)."""
    return " ".join(str(obj).split()) or type(obj).__name__


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
    from ..progress import bar as progress_bar

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
            with progress_bar(
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
