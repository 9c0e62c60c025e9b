"""diffusers' `UNet2DModel` as a ddpmkit network: `model(x_t, t, y=None)` like every other family.

The wrapper adds nothing to the network's computation: its state dict is the UNet2DModel's under
`net.`, so `ddpm export` writes it back unchanged and `ddpm import` loads a diffusers folder's weights
as they are. Class labels follow ddpmkit's convention when `null_label` (the embedding's last row is
the null label that `y=None` selects, for classifier-free guidance); an imported model whose class
embedding has no such row needs labels on every call.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import ConfigError
from ..model_config import DiffusersUNetConfig

DIFFUSERS_RANGE = ">=0.30"  # the UNet2DModel options and block names used here; tested with 0.42.1


def require_diffusers():
    """The `diffusers` module, or a ConfigError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("model.kind diffusers_unet needs the diffusers package: "
                          "pip install 'ddpmkit[diffusers]'") from None  # fmt: skip
    return diffusers


def unet2d_kwargs(cfg: DiffusersUNetConfig, data_shape, out_channels: int, num_classes: int) -> dict:
    """UNet2DModel's keyword arguments for this section, data shape (C, S, S) and label count."""
    kwargs = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "null_label"}
    for k in ("block_out_channels", "down_block_types", "up_block_types"):
        kwargs[k] = tuple(kwargs[k])
    embeds = (num_classes + int(cfg.null_label)) if num_classes else None
    return {**kwargs, "sample_size": data_shape[1], "in_channels": data_shape[0],
            "out_channels": out_channels, "num_class_embeds": embeds}  # fmt: skip


class DiffusersUNet(nn.Module):
    """`UNet2DModel(**kwargs)` called as `model(x_t, t, y)`; `net` is the diffusers module itself."""

    def __init__(self, kwargs: dict, num_classes: int = 0, null_label: bool = True):
        super().__init__()
        self.net = require_diffusers().UNet2DModel(**kwargs)
        self.num_classes, self.null_label = num_classes, null_label

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None and not self.num_classes:
            raise ValueError("this model was built without class labels (model.num_classes = 0); drop y")
        if self.num_classes and y is None:
            if not self.null_label:
                raise ValueError("this model's class embedding has no null label: give class labels y")
            y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        t = t.to(x.device).expand(len(x)) if t.ndim else t.to(x.device).repeat(len(x))
        return self.net(x, t, class_labels=y).sample


def build(cfg, data_shape: tuple[int, ...], out_channels: int | None = None) -> nn.Module:
    """The registry's builder: cfg is the run's ModelConfig."""
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ConfigError(
            f"diffusers' UNet2DModel takes square images (C, H, W), got data of shape {data_shape}"
        )
    levels = len(cfg.diffusers_unet.block_out_channels) - 1
    if data_shape[1] % (2**levels):
        raise ConfigError(f"model.diffusers_unet: {levels + 1} levels halve the image {levels} times, which "
                          f"needs a side divisible by {2**levels}, not {data_shape[1]}")  # fmt: skip
    kwargs = unet2d_kwargs(cfg.diffusers_unet, data_shape, out_channels or data_shape[0], cfg.num_classes)
    return DiffusersUNet(kwargs, cfg.num_classes, cfg.diffusers_unet.null_label)
