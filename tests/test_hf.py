"""Hugging Face datasets as labelled image sources (offline: save_to_disk folders and parquet files)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpmkit.cli import main
from ddpmkit.data.images import load_image_dataset
from ddpmkit.errors import DataError

datasets = pytest.importorskip(
    "datasets", reason="the optional `datasets` package (ddpmkit[hf]) is not installed"
)


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "dog", "owl"])}
    )
    columns = {"picture": [Image.fromarray(p) for p in pixels], "kind": [i % 3 for i in range(30)]}
    ds = datasets.Dataset.from_dict(columns, features=features)
    ds.save_to_disk(str(root / "disk"))
    ds.to_parquet(str(root / "data.parquet"))
    plain = datasets.Dataset.from_dict({"x": [Image.fromarray(p) for p in pixels[:4]], "y": [0, 1, 0, 1]})
    plain.save_to_disk(str(root / "plain"))
    return root, pixels


@pytest.mark.parametrize("where", ["disk", "data.parquet"])
def test_columns_and_class_names_are_detected(hf_files, where):
    root, pixels = hf_files
    s = load_image_dataset(f"hf:{root / where}")
    assert s.images.shape == (30, 1, 8, 8) and s.class_names == ("cat", "dog", "owl")
    assert np.array_equal(s.images[:, 0].numpy(), pixels)  # pixels unchanged at their own size
    assert s.labels.tolist() == [i % 3 for i in range(30)]


def test_columns_can_be_named(hf_files):
    root, _ = hf_files
    s = load_image_dataset(f"hf:{root / 'plain'}?image=x&label=y")
    assert s.labels.tolist() == [0, 1, 0, 1] and s.class_names == ("0", "1")
    with pytest.raises(DataError, match="no image column"):
        load_image_dataset(f"hf:{root / 'plain'}?image=nope")


def test_missing_paths_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_dataset(f"hf:{tmp_path / 'nothing.parquet'}")


def test_a_class_conditional_run_on_an_hf_dataset_saves_its_class_names(hf_files, tmp_path):
    root, _ = hf_files
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"hf:{root / 'disk'}", "--cond", "class", "-T", "20", "--steps", "2",
                 "--sample.steps", "3",
                 "--model.base_channels", "8", "--model.channel_mult", "1,2", "--model.attn_resolutions", "4",
                 "--batch-size", "8", "--no-report", "-q", "-o", str(run)]) == 0  # fmt: skip
    import json

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["class_names"] == ["cat", "dog", "owl"] and cfg["model"]["num_classes"] == 3
