"""Data spaces: the maps to model space and back are inverse, the saved state rebuilds the space,
and every space draws its pictures."""

import numpy as np
import pytest
import torch

from ddpmkit.data import SPACES, ImageSpace, PointSpace, space_from_state


def test_point_space_standardises_and_maps_back():
    pts = np.random.default_rng(0).normal([50.0, -3.0], [10.0, 0.5], size=(4000, 2))
    space, x = PointSpace.fit(pts)
    assert x.dtype == torch.float32 and abs(float(x.double().mean())) < 1e-6
    assert float(x.double().std(0).sub(1).abs().max()) < 1e-3
    np.testing.assert_allclose(space.to_data(x), pts, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(space.to_model(pts), x, rtol=1e-5, atol=1e-5)
    assert space.clip_range is None and space.sample_batch_size is None


def test_image_space_maps_uint8_to_the_unit_interval_and_back():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    space = ImageSpace()
    x = space.to_model(u8)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0 and space.clip_range == (-1.0, 1.0)
    back = space.to_data(x)  # uint8 (N, H, W, C)
    assert back.dtype == np.uint8 and back.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(back, u8.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("saved_name", [None, "points"])
def test_the_saved_state_rebuilds_the_space(saved_name):
    space, _ = PointSpace.fit(np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]]))
    rebuilt = space_from_state(space.state(), (2,), saved_name)  # None: a run of ddpmkit 0.1
    assert isinstance(rebuilt, PointSpace)
    torch.testing.assert_close(rebuilt.mean, space.mean) and torch.testing.assert_close(
        rebuilt.std, space.std
    )
    assert isinstance(space_from_state({}, (1, 8, 8), None), ImageSpace)
    assert set(SPACES) == {"points", "images", "latent"}  # latent: data/latent.py


def test_every_space_draws_its_pictures(tmp_path):
    pts, _ = PointSpace.fit(np.random.default_rng(1).normal(size=(300, 2)))
    frames = [torch.randn(300, 2) for _ in range(3)]
    pts.plot_samples(pts.to_data(frames[0]), tmp_path / "p.png", dataset="moons", title="t")
    pts.animate(frames, ["a", "b", "c"], tmp_path / "p.gif", dataset="moons")
    pts.plot_forward(frames, ["a", "b", "c"], tmp_path / "pf.png")
    pts.plot_trajectory(frames, frames, ["a", "b", "c"], tmp_path / "pt.png")
    img = ImageSpace()
    frames = [torch.rand(6, 1, 8, 8) * 2 - 1 for _ in range(3)]
    img.plot_samples(img.to_data(frames[0]), tmp_path / "i.png", dataset="digits")
    img.animate(frames, ["a", "b", "c"], tmp_path / "i.gif", dataset="digits")
    img.plot_forward(frames, ["a", "b", "c"], tmp_path / "if.png")
    img.plot_trajectory(frames, frames, ["a", "b", "c"], tmp_path / "it.png")
    for name in ("p.png", "p.gif", "pf.png", "pt.png", "i.png", "i.gif", "if.png", "it.png"):
        assert (tmp_path / name).stat().st_size > 100, name
