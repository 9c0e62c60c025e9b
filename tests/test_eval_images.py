"""Tests for image evaluation: the cached feature classifier, evaluate_images on real MNIST and on
noise, input checks (shapes, npz files, missing classifier) and the FID Inception network with
random weights."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data.images import ImageSet, load_image_dataset
from ddpmkit.errors import CheckpointError, ConfigError, DataError
from ddpmkit.eval.classifier import (
    cached_shapes,
    dataset_key,
    default_cache_dir,
    load_classifier,
    train_classifier,
)
from ddpmkit.eval.images import evaluate_images, format_table
from ddpmkit.eval.inception import FEATURE_DIM, FIDInceptionV3, inception_features, load_inception
from ddpmkit.eval.sample_files import load_samples_npz

from .conftest import SHARED_DATA


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory) -> Path:
    """A tiny MNIST classifier (1 epoch on 5000 images, ~5 s, ~94% accurate) in a temporary cache."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set DDPMKIT_SHARED_DATA)")
    cache = tmp_path_factory.mktemp("classifiers")
    info = train_classifier(
        "mnist",
        data_dir=SHARED_DATA,
        cache_dir=cache,
        epochs=1,
        width=8,
        batch_size=32,
        lr=5e-3,
        max_train_images=5000,
        max_test_images=2000,
        progress=False,
    )
    assert info["test_accuracy"] > 0.85
    return cache


def _nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------------- classifier
def test_classifier_cache_layout_and_reload(mnist_cache):
    assert cached_shapes("mnist", mnist_cache) == ["28x28x1"]
    folder = mnist_cache / "mnist" / "28x28x1"
    info = json.loads((folder / "classifier.json").read_text())
    assert info["class_names"] == [str(d) for d in range(10)] and info["test_images"] == 2000
    clf = load_classifier("mnist", mnist_cache)
    assert clf.features.shape == (2000, 128) and clf.sigma.shape == (128, 128)
    assert clf.sigma.dtype == torch.float64
    feats, probs = clf.embed(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))
    assert feats.shape == (3, 128) and torch.allclose(probs.sum(1), torch.ones(3))


def test_corrupt_classifier_files_are_checkpoint_errors(mnist_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(mnist_cache, cache)
    info = cache / "mnist" / "28x28x1" / "classifier.json"
    info.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the classifier"):
        load_classifier("mnist", cache)
    info.write_text(json.dumps({"format": "ddpmkit-classifier-1"}))
    with pytest.raises(CheckpointError, match="image_size"):
        load_classifier("mnist", cache)


def test_dataset_key_for_folders_is_sanitised_and_path_specific(tmp_path):
    a, b = tmp_path / "my faces!", tmp_path / "other" / "my faces!"
    ka, kb = dataset_key(f"folder:{a}"), dataset_key(f"folder:{b}")
    assert ka.startswith("folder-my-faces-") and ka != kb and "/" not in ka
    assert dataset_key("mnist") == "mnist"


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "classifiers"


def _shapes_folder(root: Path, n: int, size: int = 16) -> np.ndarray:
    """n images of one coloured disc or square each (random colour, place, radius) on white."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for i in range(n):
        cy, cx, r = *rng.integers(4, size - 4, 2), rng.integers(2, 5)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        mask = disc if i % 2 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        img = np.full((size, size, 3), 255, np.uint8)
        img[mask] = rng.integers(0, 200, 3)
        Image.fromarray(img).save(root / f"{i:03d}.png")
        images.append(img)
    return np.stack(images)


def test_unlabelled_folder_trains_exemplar_features_that_rank_real_above_noise_and_colour_shift(tmp_path):
    """A folder without classes gets an exemplar network (each image its own class); its FID ranks
    the real images below noise and a channel permutation, and no class figures are made up."""
    (tmp_path / "imgs").mkdir()
    real = _shapes_folder(tmp_path / "imgs", 48)
    dataset, cache = f"folder:{tmp_path / 'imgs'}", tmp_path / "cache"
    info = train_classifier(dataset, cache_dir=cache, epochs=40, batch_size=48, progress=False)
    assert info["task"] == "exemplars" and info["class_names"] == [] and info["arch"]["num_classes"] == 48
    assert info["test_accuracy"] > 0.5  # 48 classes: chance is 2%
    noise = np.random.default_rng(1).integers(0, 256, real.shape, dtype=np.uint8)
    ev = {name: evaluate_images(x, dataset, cache_dir=cache, reference_draws=1)
          for name, x in (("real", real), ("noise", noise), ("colour", real[..., [2, 0, 1]]))}  # fmt: skip
    assert ev["real"]["fid"] < ev["colour"]["fid"] and ev["real"]["fid"] < ev["noise"]["fid"]
    assert ev["real"]["recall"] > ev["colour"]["recall"] and ev["real"]["recall"] > ev["noise"]["recall"]
    # (precision of noise is not asserted: 48 images give k-NN radii wide enough to let it in here;
    # on 1686 Twemoji images it is 0, README "Your own colour images")
    assert "confident_fraction" not in ev["real"] and "class_counts" not in ev["real"]
    table = format_table(ev["real"])
    rows = [line.split("  ")[0] for line in table.splitlines()]
    assert "FID (exemplar-net features)" in rows
    assert not any(r.startswith(("class ", "confident")) for r in rows)


def test_a_single_class_cannot_train_a_classifier(tmp_path, monkeypatch):
    from ddpmkit.eval import classifier

    (tmp_path / "imgs").mkdir()
    _shapes_folder(tmp_path / "imgs", 8)
    x, y = torch.zeros(8, 3, 16, 16, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64)
    one = ImageSet(x, y, ("a",), "")
    monkeypatch.setattr(classifier, "load_image_dataset", lambda *a, **k: one)
    with pytest.raises(DataError, match="single class"):
        train_classifier(f"folder:{tmp_path / 'imgs'}", cache_dir=tmp_path / "cache", progress=False)


# ------------------------------------------------------------------------------- evaluate_images
def test_real_test_images_score_near_zero_and_noise_far_away(mnist_cache):
    test = load_image_dataset("mnist", split="test", data_dir=SHARED_DATA)
    real = _nhwc(test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:500]])
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    ok = evaluate_images(real, "mnist", data_dir=SHARED_DATA, cache_dir=mnist_cache)
    bad = evaluate_images(noise, "mnist", data_dir=SHARED_DATA, cache_dir=mnist_cache)
    json.dumps(ok)  # JSON-able
    assert bad["fid"] > 20 * ok["fid"]
    assert ok["fid"] < 3 * ok["fid_reference"]  # real images score like the real reference
    assert ok["precision"] > 0.6 and ok["recall"] > 0.6
    assert bad["precision"] < 0.05 and bad["recall"] < 0.05
    assert len(ok["class_counts"]) == 10  # the histogram counts the samples inside the data alone
    assert sum(ok["class_counts"].values()) == round(500 * (1 - ok["outside_fraction"]))
    assert ok["inception_fid"] is None and any("--inception-weights" in n for n in ok["notes"])
    table = format_table(ok)
    assert "FID (classifier features)" in table and "real reference" in table and "class 7" in table


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 (N, C, H, W) images."""
    k = torch.exp(-(torch.arange(-4, 5.0) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = torch.nn.functional.conv2d(images.float(), k, padding=(0, 4))
    x = torch.nn.functional.conv2d(x, k.transpose(2, 3), padding=(4, 0))
    return x.round().clamp(0, 255).to(torch.uint8)


def test_noise_blank_and_blur_score_worse_than_real_on_every_number(mnist_cache):
    """Every figure `ddpm eval` prints must tell these from real digits: a softmax classifier alone
    calls noise 98% "confident", so its verdicts count only inside the real k-NN manifold. At n = 500
    a fraction's standard error is <= 0.023: the margins below are ~8 of them."""
    test = load_image_dataset("mnist", split="test", data_dir=SHARED_DATA)
    real = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(2))[:500]]
    cases = {
        "noise": torch.randint(
            0, 256, real.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8
        ),
        "blank": torch.zeros_like(real),
        "blur": _blur(real, 1.5),
    }
    ok = evaluate_images(_nhwc(real), "mnist", data_dir=SHARED_DATA, cache_dir=mnist_cache, reference_draws=1)
    for name, images in cases.items():
        bad = evaluate_images(_nhwc(images), "mnist", data_dir=SHARED_DATA, cache_dir=mnist_cache,
                              reference_draws=1)  # fmt: skip
        assert bad["fid"] > 5 * ok["fid"], name
        for key in ("precision", "recall", "confident_fraction"):
            assert bad[key] < ok[key] - 0.2, (name, key, bad[key], ok[key])
        assert bad["outside_fraction"] > ok["outside_fraction"] + 0.2, name
        assert sum(bad["class_counts"].values()) < 0.8 * sum(ok["class_counts"].values()), name


def test_shape_mismatch_is_a_config_error(mnist_cache):
    samples = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ConfigError, match="samples are 32x32x3 but the mnist classifier takes 28x28x1"):
        evaluate_images(samples, "mnist", data_dir=SHARED_DATA, cache_dir=mnist_cache)
    with pytest.raises(ConfigError, match="uint8"):
        evaluate_images(np.zeros((8, 28, 28, 1), dtype=np.float32), "mnist", cache_dir=mnist_cache)


def test_missing_classifier_names_the_command(tmp_path):
    samples = np.zeros((8, 28, 28, 1), dtype=np.uint8)
    with pytest.raises(CheckpointError, match="ddpm train-classifier --dataset fashion-mnist"):
        evaluate_images(samples, "fashion-mnist", data_dir=SHARED_DATA, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------ npz files
def test_load_samples_npz_kinds_and_errors(tmp_path):
    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    arr, kind = load_samples_npz(save("img.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8)))
    assert kind == "images" and arr.shape == (4, 28, 28, 1)
    arr, kind = load_samples_npz(save("gray.npz", arr_0=np.zeros((4, 8, 8), np.uint8)))
    assert kind == "images" and arr.shape == (4, 8, 8, 1)
    arr, kind = load_samples_npz(save("pts.npz", arr_0=np.zeros((10, 2), np.float32)))
    assert kind == "points"
    bad = {
        "missing.npz": None,
        "noarr.npz": {"x": np.zeros((4, 2), np.float32)},
        "float.npz": {"arr_0": np.zeros((4, 28, 28, 1), np.float32)},
        "rank.npz": {"arr_0": np.zeros((4,), np.uint8)},
        "nchw.npz": {"arr_0": np.zeros((4, 1, 28, 28), np.uint8)},
        "empty.npz": {"arr_0": np.zeros((0, 28, 28, 1), np.uint8)},
    }
    for name, arrays in bad.items():
        path = tmp_path / name if arrays is None else save(name, **arrays)
        with pytest.raises(DataError):
            load_samples_npz(path)
    np.save(tmp_path / "plain.npy", np.zeros((4, 28, 28, 1), np.uint8))
    with pytest.raises(DataError, match="not an .npz"):
        load_samples_npz(tmp_path / "plain.npy")
    np.savez(tmp_path / "objects.npz", arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read"):
        load_samples_npz(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="is not an .npz archive"):
        load_samples_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="looks like"):
        load_samples_npz(tmp_path / "nchw.npz")


# ------------------------------------------------------------------------------------ inception
def test_inception_with_random_weights_gives_2048_features(tmp_path):
    net = FIDInceptionV3()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception.pth")  # pytorch-fid's format: a plain state_dict
    loaded = load_inception(tmp_path / "pt_inception.pth")
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = inception_features(loaded, images)
    assert feats.shape == (2, FEATURE_DIM) and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # pooled ReLU outputs


def test_inception_rejects_wrong_files(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="not an FID Inception state_dict"):
        load_inception(tmp_path / "wrong.pth")
    with open(tmp_path / "pickled.pth", "wb") as f:  # arbitrary pickled objects are refused
        pickle.dump({"x": Path("/")}, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_inception(tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_inception(tmp_path / "absent.pth")


@pytest.mark.slow
def test_inception_fid_end_to_end_with_a_small_test_split(mnist_cache, tmp_path, monkeypatch):
    """evaluate_images with a (random-weight) Inception file: figures for samples and reference, and
    the test-split statistics cached beside the classifier. The test split is cut to 6 images."""
    import ddpmkit.eval.images as ev

    torch.save(FIDInceptionV3().state_dict(), tmp_path / "pt_inception.pth")
    real_load = ev.load_image_dataset

    def small_test_split(name, *, split, **kw):
        data = real_load(name, split=split, **kw)
        if split == "test":
            data = ImageSet(
                images=data.images[:6], labels=data.labels[:6], class_names=data.class_names, name=name
            )
        return data

    monkeypatch.setattr(ev, "load_image_dataset", small_test_split)
    samples = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    out = evaluate_images(
        samples,
        "mnist",
        data_dir=SHARED_DATA,
        cache_dir=mnist_cache,
        inception_weights=tmp_path / "pt_inception.pth",
    )
    assert out["inception_fid"] >= 0 and out["inception_fid_reference"] >= 0
    assert math.isfinite(out["inception_fid"]) and not any("--inception-weights" in n for n in out["notes"])
    assert len(list((mnist_cache / "mnist" / "28x28x1").glob("inception-*.safetensors"))) == 1
