"""Tests for the copy detector: exact neighbours, the ratio test on constructed cases, its calibration
on the Twemoji development set (training images flagged, held-out images not), and `ddpm eval`'s
figures and picture for a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.eval.copies import COPY_RATIO, copy_report, nearest_two, pixel_vectors

from .conftest import SHARED_DATA

TWEMOJI = SHARED_DATA / "twemoji" / "twemoji_32" / "twemoji_32.npz"


def test_nearest_two_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    q, ref = torch.randn(37, 5, generator=g), torch.randn(50, 5, generator=g)
    nb = nearest_two(q, ref, chunk=8)
    d = torch.cdist(q.double(), ref.double())
    two = d.sort(1).values[:, :2]
    assert torch.equal(nb.index, d.argmin(1))
    assert torch.allclose(nb.nearest, two[:, 0]) and torch.allclose(nb.second, two[:, 1])
    assert torch.allclose(nb.ratio, two[:, 0] / two[:, 1])


def test_ratio_test_on_constructed_cases():
    ref = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    queries = torch.tensor([
        [0.0, 0.0],  # a training point itself: distance 0, a copy
        [1.0, 0.0],  # 1 vs ~9.05: ratio 0.11 < 1/3, a copy
        [5.0, 5.0],  # equidistant from all four: ratio 1, not a copy
        [4.0, 0.0],  # 4 vs 6: ratio 0.67, not a copy
    ])  # fmt: skip
    assert nearest_two(queries, ref).copies().tolist() == [True, True, False, False]
    twins = torch.tensor([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])  # a duplicated training point: 0 / 0
    assert nearest_two(torch.tensor([[1.0, 1.0]]), twins).copies().tolist() == [True]
    with pytest.raises(ValueError, match=">= 2 reference"):
        nearest_two(queries, ref[:1])


@pytest.fixture(scope="module")
def twemoji():
    if not TWEMOJI.is_file():
        pytest.skip(f"Twemoji not found at {TWEMOJI}")
    z = np.load(TWEMOJI)
    x = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).contiguous()
    return x[z["split"] == 0], x[z["split"] == 1]


def test_calibration_training_images_are_copies_held_out_ones_are_not(twemoji):
    """Measured on the 1686 / 186 split: train images 100%; train + N(0, 4/255) noise 98.3-99.3%
    over seeds 1-3 (8/255: 91-96%: noise as large as the gap between look-alike emoji); held-out
    test images 0.5% (1 of 186). The bounds leave a margin for other seeds."""
    train, test = twemoji
    g = torch.Generator().manual_seed(1)
    picks = train[torch.randperm(len(train), generator=g)[:300]]
    noisy = (picks.float() + 4 * torch.randn(picks.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    ref = pixel_vectors(train)
    assert nearest_two(pixel_vectors(picks), ref).copy_fraction() == 1.0
    assert nearest_two(pixel_vectors(noisy), ref).copy_fraction() >= 0.95
    assert nearest_two(pixel_vectors(test), ref).copy_fraction() <= 0.03


def test_copy_report_fields_and_shape_check(twemoji):
    train, test = twemoji
    report, nb = copy_report(test[:20], train, torch.randn(20, 4), torch.randn(len(train), 4))
    assert report["copy_ratio_threshold"] == COPY_RATIO and report["copy_train_images"] == len(train)
    assert len(report["nearest_index"]) == 20 and 0 <= report["copy_fraction_features"] <= 1
    with pytest.raises(ValueError, match="differ in shape"):
        copy_report(test[:, :1], train)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small labelled folder of 16 px RGB images and a tiny classifier for it."""
    tmp = tmp_path_factory.mktemp("copies")
    rng = np.random.default_rng(0)
    root = tmp / "pics"
    images = []
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(40):
            img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            img[:, :8] = 40 if c == "a" else 220  # the class shows in the left half
            Image.fromarray(img).save(root / c / f"{i}.png")
            images.append(img)
    name, cache = f"folder:{root}", tmp / "cache"
    assert (
        main(["train-classifier", "--dataset", name, "--cache-dir", str(cache), "--epochs", "1", "-q"]) == 0
    )
    return name, cache, images


def test_eval_on_a_folder_reports_copies_and_draws_them(folder, tmp_path, capsys):
    """Samples that are the folder's own images are all copies."""
    name, cache, images = folder
    np.savez(tmp_path / "s.npz", arr_0=np.stack(images[::4]))
    capsys.readouterr()
    picture = tmp_path / "nearest.png"
    code = main(["eval", str(tmp_path / "s.npz"), "--dataset", name, "--cache-dir", str(cache),
                 "--nearest", str(picture), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "copies: 100.0% ± " in out and picture.is_file()
    assert main(["eval", str(tmp_path / "s.npz"), "--dataset", name, "--cache-dir", str(cache),
                 "--nearest", str(picture), "-q"]) == 2  # fmt: skip


def test_training_on_a_folder_tracks_the_copy_fraction(folder, tmp_path, capsys):
    name, cache, _ = folder
    run = tmp_path / "run"
    code = main(["train", "--dataset", name, "-T", "20", "--sample.steps", "3", "--model.base_channels", "8",
                 "--model.channel_mult", "1,2", "--model.attn_resolutions", "", "--batch-size", "16",
                 "--steps", "2", "--train.threads", "1", "--train.eval_every", "2",
                 "--train.eval_samples", "8", "--train.eval_steps", "3",
                 "--train.eval_cache_dir", str(cache), "--no-report", "-q", "-o", str(run)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    header, row = (run / "eval_log.csv").read_text().splitlines()
    assert header == "step,fid,copy_fraction" and 0.0 <= float(row.split(",")[2]) <= 1.0
