"""Networks `model(x_t, t, **cond)`, and the registry that builds them from a `ModelConfig`.

A model knows nothing of schedules or objectives. Each family has a section in `ModelConfig`
(`model.mlp`, `model.unet`, `model.autoencoder`,
`model.diffusers_unet`) and a builder here; `kind="auto"` picks the MLP for
points (D,) and the U-Net for images (C, H, W). A new family adds a config section and one registry line.
`build_network(run_cfg, shape)` is the one place that builds a run's network (training, resume,
loading): its output width follows the run's variance option (2x the data's channels when learned).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import LEARNED_VARIANCES, ModelConfig, RunConfig
from ..errors import ConfigError
from .mlp import MLP


def _mlp(cfg: ModelConfig, data_shape: tuple[int, ...], out_channels: int | None = None) -> nn.Module:
    if len(data_shape) != 1:
        raise ConfigError(f"the MLP model takes points of shape (D,), got data of shape {data_shape}")
    m = cfg.mlp
    return MLP(
        dim=data_shape[0],
        hidden=m.hidden,
        depth=m.depth,
        emb_dim=m.emb_dim,
        input_scale=m.input_scale,
        num_classes=cfg.num_classes,
        out_dim=out_channels,
    )


def _unet(cfg: ModelConfig, data_shape: tuple[int, ...], out_channels: int | None = None) -> nn.Module:
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ConfigError(f"the U-Net takes square images (C, H, W), got data of shape {data_shape}")
    from .unet import UNet

    u = cfg.unet
    return UNet(
        image_size=data_shape[1],
        in_channels=data_shape[0],
        base_channels=u.base_channels,
        channel_mult=tuple(u.channel_mult),
        num_res_blocks=u.num_res_blocks,
        attn_resolutions=tuple(u.attn_resolutions),
        dropout=u.dropout,
        block=u.block,
        attention=u.attention,
        num_groups=u.num_groups,
        num_classes=cfg.num_classes,
        patch_size=u.patch_size,
        head_channels=u.head_channels,
        out_channels=out_channels,
    )


def _autoencoder(cfg: ModelConfig, data_shape: tuple[int, ...], out_channels: int | None = None) -> nn.Module:
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ConfigError(
            f"the autoencoder takes square images (C, H, W), and these data have shape "
            f"{data_shape}: train it on an image dataset (--dataset mnist, folder:PATH, ...)"
        )
    from .autoencoder import Autoencoder

    a = cfg.autoencoder
    return Autoencoder(
        image_size=data_shape[1],
        in_channels=data_shape[0],
        latent_channels=a.latent_channels,
        factor=a.factor,
        base_channels=a.base_channels,
        channel_mult=tuple(a.channel_mult),
        num_res_blocks=a.num_res_blocks,
        num_groups=a.num_groups,
    )


def _diffusers_unet(
    cfg: ModelConfig, data_shape: tuple[int, ...], out_channels: int | None = None
) -> nn.Module:
    from .diffusers_unet import build

    return build(cfg, data_shape, out_channels)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "unet": _unet,
    "autoencoder": _autoencoder,
    "diffusers_unet": _diffusers_unet,  # diffusers' UNet2DModel (the `diffusers` extra)
}


def build_model(cfg: ModelConfig, data_shape: tuple[int, ...], out_channels: int | None = None) -> nn.Module:
    """A model for data of shape (D,) (points) or (C, H, W) (images); its output has `out_channels`
    channels (coordinates for points), by default as many as the data."""
    kind = cfg.kind if cfg.kind != "auto" else ("mlp" if len(data_shape) == 1 else "unet")
    return MODELS[kind](cfg, data_shape, out_channels)


def build_network(cfg: RunConfig, data_shape: tuple[int, ...]) -> nn.Module:
    """The network of a run: `build_model` with the output width its diffusion needs (the objective's
    prediction, and as many channels again for a learned variance)."""
    learned = cfg.diffusion.variance in LEARNED_VARIANCES
    return build_model(cfg.model, data_shape, data_shape[0] * (2 if learned else 1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
