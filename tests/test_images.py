"""Tests for ddpmkit.data.images: IDX reading and validation, MNIST / Fashion-MNIST content (shared
data), scaling to [-1, 1], sklearn digits, image folders, and downloads from a local HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import images as im
from ddpmkit.errors import ConfigError, DataError, DataWarning

SHARED_DATA = Path(
    os.environ.get("DDPMKIT_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
# Per-class counts from shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def shared_dir(name: str) -> Path:
    folder = SHARED_DATA / name
    files = [f for split in im.IDX_FILES.values() for f in split]
    if not all((folder / f).is_file() for f in files):
        pytest.skip(f"{name} IDX files not found in {folder} (set DDPMKIT_SHARED_DATA to shared/data)")
    return folder


@functools.cache
def load_shared(name: str, split: str) -> im.ImageSet:
    return im.load_image_dataset(name, split=split, data_dir=shared_dir(name))


def error_text(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "error messages must be one line"
    return text


# ------------------------------------------------------------------------------ synthetic IDX files


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    header = (magic or 0x0800 + arr.ndim).to_bytes(4, "big")
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + dims + arr.astype(np.uint8).tobytes()


def write_idx_set(
    folder: Path, split: str = "train", n: int = 12, side: int = 28, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gzipped images + labels of one split; returns the arrays written."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    img_name, lbl_name = im.IDX_FILES[split]
    (folder / img_name).write_bytes(gzip.compress(idx_bytes(images), mtime=0))
    (folder / lbl_name).write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
    return images, labels


# ------------------------------------------------------------------------------ MNIST, Fashion-MNIST


@pytest.mark.parametrize(
    "split, n, counts", [("train", 60000, MNIST_TRAIN_COUNTS), ("test", 10000, MNIST_TEST_COUNTS)]
)
def test_mnist_shapes_labels_and_class_counts(split, n, counts):
    s = load_shared("mnist", split)
    assert s.images.shape == (n, 1, 28, 28) and s.images.dtype == torch.uint8
    assert s.shape == (1, 28, 28) and len(s) == n
    assert s.labels.dtype == torch.int64 and s.labels.bincount().tolist() == counts
    assert s.class_names == tuple("0123456789") and s.name == "mnist"
    assert s.images.min() == 0 and s.images.max() == 255
    if split == "train":
        assert s.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_labels_and_class_counts(split, n):
    s = load_shared("fashion-mnist", split)
    assert s.images.shape == (n, 1, 28, 28)
    assert s.labels.bincount().tolist() == [n // 10] * 10
    assert s.class_names[9] == "Ankle boot" and len(s.class_names) == 10
    if split == "train":
        assert s.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def test_idx_found_in_named_subfolder_and_resized_to_rgb():
    shared_dir("mnist")
    s = im.load_image_dataset("mnist", split="test", data_dir=SHARED_DATA, image_size=32, channels=3)
    assert s.images.shape == (10000, 3, 32, 32)
    assert torch.equal(s.images[:, 0], s.images[:, 2])
    assert s.labels[:5].tolist() == load_shared("mnist", "test").labels[:5].tolist()


def test_uncompressed_idx_and_resize(tmp_path):
    images, labels = write_idx_set(tmp_path, "test", n=5, side=8)
    for f in im.IDX_FILES["test"]:  # keep only the uncompressed form
        (tmp_path / f.removesuffix(".gz")).write_bytes(gzip.decompress((tmp_path / f).read_bytes()))
        (tmp_path / f).unlink()
    s = im.load_image_dataset("mnist", split="test", data_dir=tmp_path)
    assert np.array_equal(s.images[:, 0].numpy(), images) and s.labels.tolist() == labels.tolist()
    constant = np.full((2, 8, 8), 77, np.uint8)  # resizing keeps a constant image constant
    assert torch.all(im._gray_to_tensor(constant, 4, 3) == 77)
    assert im._gray_to_tensor(constant, 4, 3).shape == (2, 3, 4, 4)


# ------------------------------------------------------------------------------ scaling


def test_model_range_round_trip_is_exact():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = im.to_model_range(u8)
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert torch.all(x[..., 1:] > x[..., :-1])
    assert torch.equal(im.from_model_range(x), u8)
    assert torch.equal(im.from_model_range(x.double() + 0.003), u8)  # rounds to the nearest level
    assert im.from_model_range(torch.tensor([-3.0, 2.0])).tolist() == [0, 255]


# ------------------------------------------------------------------------------ digits


def test_digits_split_is_a_deterministic_partition():
    from sklearn.datasets import load_digits

    train = im.load_image_dataset("digits")
    test = im.load_image_dataset("digits", split="test")
    assert train.shape == (1, 8, 8) and len(train) + len(test) == 1797
    assert abs(len(train) / 1797 - 0.8) < 0.01
    assert set(train.labels.tolist()) == set(range(10)) and set(test.labels.tolist()) == set(range(10))
    assert train.images.max() == 255 and train.images.min() == 0
    assert torch.equal(im.load_image_dataset("digits").images, train.images)

    def rows(images, labels):  # one row per image: label, then pixels
        table = np.concatenate([labels.reshape(-1, 1), images.reshape(len(labels), -1)], axis=1)
        return table.astype(np.int64)

    full = load_digits()
    expected = rows(np.rint(full.images * 255 / 16), full.target)
    got = np.concatenate([rows(s.images.numpy(), s.labels.numpy()) for s in (train, test)])
    # Same multiset of rows and 1437 + 360 = 1797: every image is in exactly one split.
    assert np.array_equal(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)])


def test_digits_resize_and_channels():
    s = im.load_image_dataset("digits", split="test", image_size=16, channels=3)
    assert s.images.shape == (360, 3, 16, 16) and s.images.dtype == torch.uint8


# ------------------------------------------------------------------------------ folders


def save(path: Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def test_folder_with_classes(tmp_path):
    save(tmp_path / "cats" / "a.png", Image.new("RGB", (40, 30), (200, 10, 10)))
    save(tmp_path / "dogs" / "b.JPG", Image.new("RGB", (20, 50), (10, 200, 10)), format="JPEG")
    save(tmp_path / "dogs" / "deep" / "c.bmp", Image.new("L", (8, 8), 90))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    (tmp_path / "cats" / ".hidden.png").write_bytes(b"garbage, but hidden")
    s = im.load_image_dataset(f"folder:{tmp_path}")
    assert s.images.shape == (3, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.class_names == ("cats", "dogs") and s.labels.tolist() == [0, 1, 1]
    assert s.images[0, :, 5, 5].tolist() == [200, 10, 10]
    assert torch.all(s.images[2] == 90)
    small = im.load_image_dataset(f"folder:{tmp_path}", image_size=12, channels=1)
    assert small.images.shape == (3, 1, 12, 12)


def test_folder_flat_gray_defaults_to_one_channel(tmp_path):
    save(tmp_path / "x.png", Image.new("L", (64, 48), 30))
    save(tmp_path / "y.BMP", Image.new("L", (10, 10), 60))
    save(tmp_path / "z.jpeg", Image.new("L", (10, 10), 120), quality=100)
    s = im.load_image_dataset(f"folder:{tmp_path}", image_size=16)
    assert s.images.shape == (3, 1, 16, 16) and s.labels is None and s.class_names is None
    assert [int(v) for v in s.images[:, 0, 8, 8]] == [30, 60, 120]
    assert im.load_image_dataset(f"folder:{tmp_path}", channels=3).shape == (3, 32, 32)


def test_folder_resize_shorter_side_then_center_crop(tmp_path):
    stripes = Image.new("RGB", (60, 20), (255, 0, 0))  # red | green | blue thirds
    stripes.paste((0, 255, 0), (20, 0, 40, 20))
    stripes.paste((0, 0, 255), (40, 0, 60, 20))
    save(tmp_path / "wide.png", stripes)
    s = im.load_image_dataset(f"folder:{tmp_path}", image_size=20)
    assert torch.all(s.images[0, 1] == 255) and torch.all(s.images[0, 0] == 0)  # only the center third
    s = im.load_image_dataset(f"folder:{tmp_path}", image_size=10)
    assert s.images.shape == (1, 3, 10, 10) and torch.all(s.images[0, 1, :, 3:7] == 255)


def test_folder_gif_first_frame_and_alpha_on_white(tmp_path):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    save(tmp_path / "clear.png", Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    s = im.load_image_dataset(f"folder:{tmp_path}", image_size=8)
    assert s.images[0, :, 4, 4].tolist() == [255, 0, 0]  # anim.gif sorts first
    assert torch.all(s.images[1] == 255)


def test_folder_class_detection_needs_every_image_in_one_of_two_subfolders(tmp_path):
    save(tmp_path / "only" / "a.png", Image.new("L", (8, 8)))
    save(tmp_path / "only" / "b.png", Image.new("L", (8, 8)))
    assert im.load_image_dataset(f"folder:{tmp_path}").labels is None
    save(tmp_path / "other" / "c.png", Image.new("L", (8, 8)))
    assert im.load_image_dataset(f"folder:{tmp_path}").labels.tolist() == [0, 0, 1]
    save(tmp_path / "top.png", Image.new("L", (8, 8)))
    assert im.load_image_dataset(f"folder:{tmp_path}").labels is None


def test_folder_train_test_subfolders_are_splits_with_shared_classes(tmp_path):
    for cls in ("a", "b", "c"):
        save(tmp_path / "train" / cls / "1.png", Image.new("L", (8, 8), 10))
    save(tmp_path / "test" / "c" / "1.png", Image.new("L", (8, 8), 20))
    save(tmp_path / "test" / "b" / "1.png", Image.new("L", (8, 8), 20))
    train = im.load_image_dataset(f"folder:{tmp_path}")
    test = im.load_image_dataset(f"folder:{tmp_path}", split="test")
    assert len(train) == 3 and len(test) == 2 and torch.all(test.images == 20)
    assert test.class_names == train.class_names == ("a", "b", "c")
    assert test.labels.tolist() == [1, 2]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        im.load_image_dataset(f"folder:{tmp_path / 'nope'}")
    assert "nope" in error_text(e)
    with pytest.raises(DataError, match="no images") as e:
        im.load_image_dataset(f"folder:{tmp_path}")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="not a folder"):
        im.load_image_dataset(f"folder:{tmp_path / 'readme.txt'}")
    save(tmp_path / "good.png", Image.new("RGB", (8, 8)))
    (tmp_path / "bad.png").write_bytes(b"\x00 this is not a png \xff" * 10)
    for channels in (None, 3):  # skipped with a warning that names it; strict refuses it
        with pytest.warns(DataWarning, match=r"skipped 1 unreadable image file\(s\) of 2 .*bad.png"):
            assert len(im.load_image_dataset(f"folder:{tmp_path}", channels=channels)) == 1
        with pytest.raises(DataError, match="bad.png") as e:
            im.load_image_dataset(f"folder:{tmp_path}", channels=channels, strict=True)
        error_text(e)
    (tmp_path / "bad.png").unlink()
    png = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(png, format="PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # header reads
    with pytest.raises(DataError, match="cut.png") as e:
        im.load_image_dataset(f"folder:{tmp_path}", channels=1, strict=True)
    error_text(e)
    (tmp_path / "good.png").unlink()
    with pytest.raises(DataError, match="none of the 1 image files"), pytest.warns(DataWarning):
        im.load_image_dataset(f"folder:{tmp_path}")


def test_folder_pad_policy_and_alpha_background(tmp_path):
    save(tmp_path / "wide.png", Image.new("RGB", (40, 20), (255, 0, 0)))
    save(tmp_path / "clear.png", Image.new("RGBA", (20, 20), (0, 0, 0, 0)))
    s = im.load_image_dataset(f"folder:{tmp_path}", image_size=20, resize="pad", background="#0000ff")
    wide = s.images[1]  # clear.png sorts first
    assert wide[:, 10, 10].tolist() == [255, 0, 0] and wide[:, 0, 10].tolist() == [0, 0, 255]  # padded
    assert torch.all(s.images[0, 2] == 255) and torch.all(s.images[0, 0] == 0)  # alpha onto blue
    crop = im.load_image_dataset(f"folder:{tmp_path}", image_size=20)
    assert torch.all(crop.images[1, 0] == 255)  # crop keeps only red
    with pytest.raises(ConfigError, match="background must be a colour"):
        im.load_image_dataset(f"folder:{tmp_path}", background="not-a-colour")
    with pytest.raises(ConfigError, match="resize must be one of crop, pad"):
        im.load_image_dataset(f"folder:{tmp_path}", resize="stretch")


def test_folder_size_defaults_to_its_own_and_duplicates_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert im.load_image_dataset(f"folder:{tmp_path}").shape == (3, 64, 64)  # not silently 32
    (tmp_path / "copy.png").write_bytes((tmp_path / "1.png").read_bytes())
    with pytest.warns(DataWarning, match=r"1 duplicate image file\(s\) .*: copy.png = 1.png"):
        assert len(im.load_image_dataset(f"folder:{tmp_path}")) == 4
    Image.new("RGB", (40, 30)).save(tmp_path / "odd.png")  # mixed sizes: the default side
    assert im.load_image_dataset(f"folder:{tmp_path}").shape == (3, 32, 32)


# ------------------------------------------------------------------------------ options, bad IDX


@pytest.mark.parametrize(
    "kwargs",
    [dict(name="cifar10"), dict(split="val"), dict(channels=2), dict(image_size=0), dict(image_size=True)],
)
def test_bad_options_raise_config_error(kwargs):
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(ConfigError) as e:
        im.load_image_dataset(kwargs.pop("name"), **kwargs)
    error_text(e)


def test_is_image_dataset():
    assert all(im.is_image_dataset(n) for n in ("mnist", "fashion-mnist", "digits", "folder:x"))
    assert not im.is_image_dataset("dino") and not im.is_image_dataset("folder")


def test_missing_and_empty_data_dirs(tmp_path):
    with pytest.raises(DataError, match="--data-dir") as e:
        im.load_image_dataset("mnist")
    error_text(e)
    with pytest.raises(DataError, match="does not exist.*--download") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path / "missing")
    error_text(e)
    with pytest.raises(DataError, match="empty") as e:
        im.load_image_dataset("fashion-mnist", split="test", data_dir=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in error_text(e) and "--download" in error_text(e)
    write_idx_set(tmp_path, "train")
    (tmp_path / im.IDX_FILES["train"][1]).unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path)
    assert "train-images" not in error_text(e)


def test_truncated_and_non_gzip_files(tmp_path):
    write_idx_set(tmp_path, "train", n=20)
    img = tmp_path / im.IDX_FILES["train"][0]
    whole = img.read_bytes()
    img.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="not a valid gzip file or is truncated") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path)
    assert str(img) in error_text(e)
    img.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataError, match="not a valid gzip file") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path)
    error_text(e)
    img.write_bytes(whole[:10] + bytes(range(256)) * 4)  # gzip header, corrupt deflate stream
    with pytest.raises(DataError, match="not a valid gzip file") as e:
        im.read_idx(img)
    error_text(e)
    short = idx_bytes(np.zeros((20, 28, 28), np.uint8))[:-100]  # intact gzip of a short IDX
    img.write_bytes(gzip.compress(short))
    with pytest.raises(DataError, match="truncated.*15696 bytes.*15596") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path)
    error_text(e)


def test_wrong_magic_count_mismatch_and_label_range(tmp_path):
    images, labels = write_idx_set(tmp_path, "train", n=12)
    img, lbl = (tmp_path / f for f in im.IDX_FILES["train"])
    img.write_bytes(gzip.compress(idx_bytes(images, magic=im.IDX_LABELS_MAGIC)[:4] + idx_bytes(images)[4:]))
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        im.load_image_dataset("mnist", data_dir=tmp_path)
    img.write_bytes(gzip.compress(idx_bytes(images)))
    lbl.write_bytes(gzip.compress(idx_bytes(labels[:11])))
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        im.load_image_dataset("mnist", data_dir=tmp_path)
    lbl.write_bytes(gzip.compress(idx_bytes(labels + 5)))
    with pytest.raises(DataError, match="label 14"):
        im.load_image_dataset("mnist", data_dir=tmp_path)
    raw = tmp_path / "raw-idx"
    raw.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(DataError, match="not an IDX file"):
        im.read_idx(raw)


# ------------------------------------------------------------------------------ downloads


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        QuietHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server over a folder with a small valid MNIST-named IDX set; md5s patched in."""
    served = tmp_path / "served"
    arrays = write_idx_set(served, "train", n=12)
    md5s = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in served.iterdir()}
    monkeypatch.setitem(im.IDX_MD5, "mnist", md5s)
    QuietHandler.requests = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", arrays
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_success_verifies_and_is_not_repeated(tmp_path, mirror):
    url, (images, labels) = mirror
    data = tmp_path / "new" / "mnist-data"
    s = im.load_image_dataset("mnist", data_dir=data, download=True, mirror=url.rstrip("/"))
    assert np.array_equal(s.images[:, 0].numpy(), images) and s.labels.tolist() == labels.tolist()
    assert sorted(p.name for p in data.iterdir()) == sorted(im.IDX_FILES["train"])  # no temp files
    assert len(QuietHandler.requests) == 2
    dead = f"http://127.0.0.1:{closed_port()}/"
    assert len(im.load_image_dataset("mnist", data_dir=data, download=True, mirror=dead)) == 12


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror, monkeypatch):
    url, _ = mirror
    bad = dict(im.IDX_MD5["mnist"], **{im.IDX_FILES["train"][0]: "0" * 32})
    monkeypatch.setitem(im.IDX_MD5, "mnist", bad)
    with pytest.raises(DataError, match="checksum mismatch.*expected md5 0{32}, got [0-9a-f]{32}") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path / "d", download=True, mirror=url)
    assert url in error_text(e)
    assert list((tmp_path / "d").iterdir()) == []


def test_no_download_unless_asked(tmp_path, mirror):
    url, _ = mirror
    with pytest.raises(DataError, match="--download"):
        im.load_image_dataset("mnist", data_dir=tmp_path / "d", mirror=url)
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="--download"):
        im.load_image_dataset("mnist", data_dir=tmp_path / "d", mirror=url)
    assert QuietHandler.requests == [] and list((tmp_path / "d").iterdir()) == []


def test_download_http_error(tmp_path, mirror):
    url, _ = mirror
    with pytest.raises(DataError, match="HTTP 404") as e:
        im.download_file(url + "nothing.gz", tmp_path / "x.gz", "0" * 32)
    assert url + "nothing.gz" in error_text(e) and list(tmp_path.glob("*x.gz*")) == []


def test_download_server_down_or_silent_fails_fast(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/mnist/"
    start = time.perf_counter()
    with pytest.raises(DataError, match="cannot download http://127.0.0.1") as e:
        im.load_image_dataset("mnist", data_dir=tmp_path, download=True, mirror=url)
    error_text(e)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        with pytest.raises(DataError, match="timed out") as e:
            im.download_file(f"http://127.0.0.1:{port}/f.gz", tmp_path / "f.gz", "0" * 32, timeout=0.3)
    error_text(e)
    assert time.perf_counter() - start < 10 and list(tmp_path.iterdir()) == []
