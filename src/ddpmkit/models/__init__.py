"""Noise-prediction networks. `build_model(cfg, data_shape)` picks the MLP for points, the U-Net
for images (or what `cfg.kind` says)."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .mlp import MLP


def build_model(cfg: ModelConfig, data_shape: tuple[int, ...]) -> nn.Module:
    """A model for data of shape (D,) (points) or (C, H, W) (images)."""
    kind = cfg.kind if cfg.kind != "auto" else ("mlp" if len(data_shape) == 1 else "unet")
    if kind == "mlp":
        if len(data_shape) != 1:
            raise ConfigError(f"the MLP model takes points of shape (D,), got data of shape {data_shape}")
        return MLP(
            dim=data_shape[0],
            hidden=cfg.hidden,
            depth=cfg.depth,
            emb_dim=cfg.emb_dim,
            input_scale=cfg.input_scale,
        )
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ConfigError(f"the U-Net takes square images (C, H, W), got data of shape {data_shape}")
    from .unet import UNet

    return UNet(
        image_size=data_shape[1],
        in_channels=data_shape[0],
        base_channels=cfg.base_channels,
        channel_mult=tuple(cfg.channel_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions),
        dropout=cfg.dropout,
        block=cfg.block,
        attention=cfg.attention,
        num_groups=cfg.num_groups,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
