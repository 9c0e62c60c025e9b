"""The KL autoencoder of latent diffusion (models/autoencoder.py): shapes for every factor and odd
sizes, the KL term, the training task, and a trained tiny autoencoder's round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpmkit.config import ConfigError, RunConfig, override
from ddpmkit.data.latent import LatentSpace, latent_scale
from ddpmkit.models import build_network
from ddpmkit.models.autoencoder import Autoencoder, kl_to_standard_normal
from ddpmkit.run import load_run
from ddpmkit.training import train

AE_FLAGS = {
    "data.dataset": "digits",
    "data.image_size": 16,
    "model.kind": "autoencoder",
    "train.task": "autoencoder",
    "model.autoencoder.base_channels": 8,
    "train.batch_size": 32,
    "train.lr": 3e-3,
    "train.warmup_steps": 10,
    "train.ema_decay": 0.9,
    "train.threads": 1,
    "train.log_every": 10,
    "train.preview_every": 0,
}


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (20, 3)])
def test_shapes_for_every_factor_and_odd_sizes(factor, size, channels):
    ae = Autoencoder(image_size=size, in_channels=channels, latent_channels=3, factor=factor, base_channels=8)
    x = torch.rand(2, channels, size, size) * 2 - 1
    mean, logvar = ae.encode(x)
    side = math.ceil(size / factor)  # 28 px at f = 8: padded to 32, latents 4x4
    assert mean.shape == logvar.shape == (2, 3, side, side) == (2, *ae.latent_shape)
    recon, _, _ = ae(x)
    assert recon.shape == x.shape and ae.decode(mean).shape == x.shape


def test_wrong_input_shape_and_factor_are_config_errors():
    ae = Autoencoder(image_size=16, in_channels=3, factor=4, base_channels=8)
    with pytest.raises(ConfigError, match=r"\(N, 3, 16, 16\)"):
        ae.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="factor"):
        Autoencoder(image_size=16, in_channels=3, factor=3)
    with pytest.raises(ConfigError, match="channel_mult needs 3 entries"):
        Autoencoder(image_size=16, in_channels=3, factor=4, channel_mult=(1, 2))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    want = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), want, rtol=1e-5, atol=1e-6)
    assert torch.all(kl_to_standard_normal(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)) == 0)


def test_latent_scale_gives_unit_variance():
    z = torch.randn(500, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.05
    s = latent_scale(z)
    assert abs(s - 1 / float(z.double().std())) < 1e-12
    assert abs(float((z * s).std()) - 1.0) < 1e-6
    with pytest.raises(ConfigError, match="std"):
        latent_scale(torch.zeros(4, 1, 2, 2))


def test_task_and_kind_go_together():
    with pytest.raises(ConfigError, match="together"):
        override(RunConfig(), {"train.task": "autoencoder"})
    with pytest.raises(ConfigError, match="factor"):
        override(RunConfig(), {"model.autoencoder.factor": 16})
    with pytest.raises(ConfigError, match="training task"):
        override(RunConfig(), {"train.task": "nope"})


@pytest.fixture(scope="module")
def trained_ae(tmp_path_factory):
    run = tmp_path_factory.mktemp("ae") / "ae"
    train(override(RunConfig(), {**AE_FLAGS, "train.steps": 300}), run, progress=False)
    return run


def test_trained_autoencoder_round_trip(trained_ae):
    """Reconstructions of held-out digits beat the best image-independent guess (the mean test
    image) by a wide margin: the latents carry the image. 300 steps give ~4x lower MSE; the bar
    is 2x (an untrained decoder is near the mean guess or worse)."""
    from ddpmkit.data import build_dataset

    run = load_run(trained_ae)
    test = build_dataset(run.cfg.data, split="test").x
    space = LatentSpace(run.model, 1.0)
    recon = space.decode(space.encode(test))
    mse = float((recon - test).pow(2).mean())
    mean_guess = float((test.mean(0, keepdim=True) - test).pow(2).mean())
    assert mse < 0.5 * mean_guess, (mse, mean_guess)
    z = space.encode(test)
    assert z.shape[1:] == (4, 4, 4) and torch.isfinite(z).all()


def test_autoencoder_run_files(trained_ae):
    from ddpmkit.eval.autoencoder import write_autoencoder_report

    m = write_autoencoder_report(trained_ae, progress=False)
    assert m["latent_shape"] == [4, 4, 4] and m["compression"] == 4.0
    assert 10 < m["psnr"] < 60 and m["psnr_split"] == "test"
    assert m["latent_scale"] == pytest.approx(1 / m["latent_std"])
    assert "fid_note" in m or "recon_fid" in m
    for name in ("recon.png", "latents.png", "metrics.json"):
        assert (trained_ae / name).is_file(), name


def test_autoencoder_resume_is_bit_exact(tmp_path):
    """The reparameterised draw uses the global RNG, which checkpoints restore."""
    cfg = override(RunConfig(), {**AE_FLAGS, "train.steps": 12, "train.checkpoint_every": 6})
    full = train(cfg, tmp_path / "a", progress=False)
    train(override(cfg, {"train.steps": 6}), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed["loss"] == full["loss"][6:]


def test_build_network_builds_the_autoencoder():
    cfg = override(RunConfig(), AE_FLAGS)
    net = build_network(cfg, (1, 16, 16))
    assert isinstance(net, Autoencoder) and net.latent_shape == (4, 4, 4)
