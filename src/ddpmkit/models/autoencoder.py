"""A small convolutional autoencoder with a KL bottleneck, for latent diffusion (Rombach et al. 2022).

The encoder maps an image (C, H, W) in [-1, 1] to a diagonal Gaussian q(z | x) over latents
(latent_channels, H/f, W/f); the decoder maps a latent back to the image. The layout is CompVis'
`AutoencoderKL` made small: a conv stem, `num_res_blocks` residual blocks per level and a stride-2
convolution between levels (log2 f of them) in the encoder, the mirror with nearest-neighbour
upsampling in the decoder; no attention (at 7x7-16x16 latents the receptive field covers the image).
Sizes that f does not divide (28 px at f = 8) are padded by replication to the next multiple and
the decoder's output is cropped back, so any image size works.

`forward(x)` returns (reconstruction, mean, logvar) of a reparameterised draw z = mean + std * eps
(eps from the global RNG, like dropout, so that a resumed run repeats it); `encode` / `decode` are
what a latent space uses. It knows nothing of diffusion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice
from ..config import AE_FACTORS
from ..errors import ConfigError

LOGVAR_RANGE = (-30.0, 20.0)  # CompVis' clamp of the posterior log-variance


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch dimension, in nats:
    0.5 * sum(mean^2 + var - 1 - logvar) (Kingma & Welling 2014, Appx. B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3 (+ 1x1 skip where the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(math.gcd(groups, cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(math.gcd(groups, cout), cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """x (N, C, H, W) in [-1, 1]  <->  z (N, latent_channels, ceil(H/f), ceil(W/f))."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        latent_channels: int = 4,
        factor: int = 4,
        base_channels: int = 16,
        channel_mult: tuple[int, ...] = (),
        num_res_blocks: int = 1,
        num_groups: int = 8,
    ):
        super().__init__()
        check_choice("model.autoencoder.factor", factor, AE_FACTORS)
        levels = int(math.log2(factor)) + 1
        mult = tuple(channel_mult) or tuple(min(2**i, 4) for i in range(levels))
        if len(mult) != levels:
            raise ConfigError(f"model.autoencoder.channel_mult needs {levels} entries for factor {factor} "
                              f"(one per level), got {list(mult)}")  # fmt: skip
        self.image_size, self.in_channels, self.factor = image_size, in_channels, factor
        self.latent_channels = latent_channels
        widths = [base_channels * m for m in mult]
        groups = num_groups

        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(_ResBlock(ch, w, groups))
                ch = w
            if i < levels - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [_ResBlock(ch, ch, groups), nn.GroupNorm(math.gcd(groups, ch), ch), nn.SiLU(),
                nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]  # fmt: skip
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch, 3, padding=1), _ResBlock(ch, ch, groups)]
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks):
                dec.append(_ResBlock(ch, w, groups))
                ch = w
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
        dec += [nn.GroupNorm(math.gcd(groups, ch), ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def padded_size(self) -> int:
        return math.ceil(self.image_size / self.factor) * self.factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.padded_size // self.factor
        return (self.latent_channels, s, s)

    def _check(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ConfigError(f"the autoencoder takes images of shape (N, {', '.join(map(str, want))}), "
                              f"got {tuple(x.shape)}")  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x): (mean, logvar), each (N, latent_channels, h, w)."""
        self._check(x)
        pad = self.padded_size - self.image_size
        if pad:  # replicate to a multiple of f: left/top get half, right/bottom the rest
            x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), mode="replicate")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_channels, h, w) -> images (N, C, H, W), unclamped."""
        x = self.decoder(z)
        pad = self.padded_size - self.image_size
        if pad:
            lo = pad // 2
            x = x[..., lo : lo + self.image_size, lo : lo + self.image_size]
        return x

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, **cond) -> tuple[torch.Tensor, ...]:
        """(reconstruction of a posterior draw, mean, logvar). `t` and `cond` are ignored: the
        signature is the model contract's, so the memory estimate and the trainer call it alike."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)  # reparameterisation
        return self.decode(z), mean, logvar
