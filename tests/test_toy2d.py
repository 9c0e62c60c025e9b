import numpy as np
import pytest

from ddpmkit.config import DataConfig
from ddpmkit.data import POINT_DATASETS, build_dataset, draw_points
from ddpmkit.data.toy2d import datasaurus, read_points_csv
from ddpmkit.errors import DataError


def test_datasaurus_dino_has_the_published_statistics():
    pts = datasaurus("dino")
    assert pts.shape == (142, 2)
    np.testing.assert_allclose(pts.mean(0), [54.263, 47.832], atol=1e-3)
    np.testing.assert_allclose(pts.std(0, ddof=1), [16.765, 26.935], atol=1e-3)


def test_dino_normalisation_of_the_seed_notebooks():
    pts = draw_points("dino", 20000, seed=0)
    raw = datasaurus("dino")
    expected = np.stack([(raw[:, 0] / 54 - 1) * 4, (raw[:, 1] / 48 - 1) * 4], 1).mean(0)
    # jitter 0.15 in raw units has mean 0: the mean over 20000 draws is within a few SE
    np.testing.assert_allclose(pts.mean(0), expected, atol=0.06)


@pytest.mark.parametrize("name", POINT_DATASETS)
def test_point_datasets(name):
    a, b = draw_points(name, 1000, seed=1), draw_points(name, 1000, seed=1)
    assert a.shape == (1000, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_points(name, 1000, seed=2))


def test_standardised_training_data_and_inverse():
    ds = build_dataset(DataConfig(dataset="moons", num_points=4000), seed=0)
    x = ds.x.double()
    assert abs(float(x.mean())) < 1e-6 and float(x.std(0).sub(1).abs().max()) < 1e-3
    back = ds.space.to_data(ds.x)
    np.testing.assert_allclose(back, draw_points("moons", 4000, seed=0), atol=1e-5)


@pytest.mark.parametrize(
    "text,n",
    [
        ("x,y\n1,2\n3,4\n", 2),
        ("1,2\n3,4\n5,6\n", 3),
        ("1\t2\n3\t4\n", 2),
        ("# comment\n1;2\n3;4\n", 2),
        ("\ufeffa,b\n1,2\n3,4\n", 2),
    ],
)
def test_csv_formats(tmp_path, text, n):
    (tmp_path / "p.csv").write_text(text)
    assert read_points_csv(tmp_path / "p.csv").shape == (n, 2)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "empty"),
        ("x,y\n", "need at least 2"),
        ("1,2\nfoo,3\n", "line 2"),
        ("1,2\n3,nan\n", "NaN"),
        ("1,2,3\n4,5,6\n", "2 columns"),
    ],
)
def test_bad_csv(tmp_path, text, needle):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(DataError, match=needle):
        read_points_csv(tmp_path / "p.csv")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset(DataConfig(dataset="dragon"))
