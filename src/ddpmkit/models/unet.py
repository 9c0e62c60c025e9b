"""A small DDPM U-Net noise predictor for images from 8x8 to 64x64.

The layout follows the DDPM U-Net (Ho et al. 2020, Appx. B) as rewritten in improved-diffusion
(Nichol & Dhariwal 2021): a sinusoidal timestep embedding fed through an MLP, `num_res_blocks`
residual blocks per resolution level with concatenated skip connections, self-attention at chosen
feature-map sizes and in the middle block, stride-2 convolutions to downsample and nearest-neighbour
upsampling to the skip's size (so odd sizes such as 28 -> 14 -> 7 -> 4 -> 7 work). Residual blocks
condition on time by FiLM, `h = norm(h) * (1 + scale) + shift` (Perez et al. 2018; improved-diffusion's
`use_scale_shift_norm`). Options:

* `block="convnext"`: ConvNeXt blocks (Liu et al. 2022) with the time embedding added after the
  depthwise convolution, as in lucidrains' denoising-diffusion-pytorch.
* `patch_size=p > 1`: a space-to-depth stem (`pixel_unshuffle`; Hoogeboom et al. 2023's "simple
  diffusion", DiT's patches): the network runs on (p^2 C, H/p, W/p) and its output is shuffled back, so
  the costliest, widest-activation level is skipped.
* `head_channels=c > 0` (with `patch_size > 1`): a residual full-resolution head after the shuffle back,
  so that a patch's pixels are not drawn by one linear map (4x4 patches' grid speckle; docs/recipe.md).
* `attention="linear"`: "efficient attention" (Shen et al. 2021; Katharopoulos et al. 2020), linear in
  the number of positions; the default is exact softmax attention (Vaswani et al. 2017) through
  `torch.nn.functional.scaled_dot_product_attention`.

The last convolution of every residual block, of every attention block and of the output head starts
at zero (improved-diffusion's `zero_module`): each block starts as an identity map (a 1x1 conv where
the width changes) and the untrained network outputs 0. The model is a plain `nn.Module`,
`forward(x_t, t) -> (N, out_channels, H, W)`; it knows nothing of noise schedules. It runs in either
memory format; `train.channels_last` (NHWC) trains 8% faster on one CPU thread and 12% on two
(oneDNN's native layout; docs/recipe.md), so the image presets use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ATTENTIONS, BLOCKS, check_choice
from ..errors import ConfigError
from .embeddings import LabelEmbedding, TimeEmbedding, add_label


def _zero(module: nn.Module) -> nn.Module:
    """Zero all parameters of `module` and return it (improved-diffusion's `zero_module`)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, Eq. 1).

    Args:
        q, k, v: (B, heads, L, d) queries, keys and values for L positions.
    Returns:
        (B, heads, L, d).
    """
    return F.scaled_dot_product_attention(q, k, v)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Efficient attention (Shen et al. 2021, Eq. 2): softmax_d(q) (softmax_L(k)^T v), O(L d^2).

    Args:
        q, k, v: (B, heads, L, d).
    Returns:
        (B, heads, L, d).
    """
    q = q.softmax(dim=-1)  # each query: a distribution over the d "global context" features
    k = k.softmax(dim=-2)  # each key feature: a distribution over the L positions
    context = k.transpose(-2, -1) @ v  # (B, heads, d, d)
    return q @ context  # (B, heads, L, d)


ATTENTION_FNS = {"full": full_attention, "linear": linear_attention}


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int, *, num_heads: int, num_groups: int, attention: str = "full"):
        super().__init__()
        check_choice("attention", attention, ATTENTIONS)
        self.num_heads = num_heads
        self.attend = ATTENTION_FNS[attention]
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, d, h * w)  # (B, 3, nh, d, L)
        q, k, v = qkv.transpose(-2, -1).unbind(1)  # each (B, nh, L, d)
        out = self.attend(q, k, v).transpose(-2, -1).reshape(b, c, h, w)  # (B, nh, d, L) -> (B, C, H, W)
        return x + self.proj(out)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, FiLM by the time embedding, SiLU, dropout, conv3x3 (+ 1x1 skip)."""

    def __init__(self, in_ch: int, out_ch: int, *, emb_dim: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(num_groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (N, in_ch, H, W); emb: (N, emb_dim), already passed through SiLU."""
        h = self.conv1(F.silu(self.norm1(x)))  # (N, out_ch, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # each (N, out_ch, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift  # FiLM
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ConvNeXtBlock(nn.Module):
    """Depthwise conv7x7 (+ time embedding), GroupNorm(1), pointwise MLP x`mult`, GELU (+ 1x1 skip)."""

    def __init__(self, in_ch: int, out_ch: int, *, emb_dim: int, dropout: float, mult: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(in_ch, in_ch, 7, padding=3, groups=in_ch)
        self.emb = nn.Linear(emb_dim, in_ch)
        self.norm = nn.GroupNorm(1, in_ch)  # LayerNorm over (C, H, W)
        self.pw1 = nn.Conv2d(in_ch, mult * out_ch, 1)
        self.dropout = nn.Dropout(dropout)
        self.pw2 = _zero(nn.Conv2d(mult * out_ch, out_ch, 1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (N, in_ch, H, W); emb: (N, emb_dim), already passed through SiLU."""
        h = self.dwconv(x) + self.emb(emb)[:, :, None, None]  # (N, in_ch, H, W)
        h = self.pw2(self.dropout(F.gelu(self.pw1(self.norm(h)))))  # (N, out_ch, H, W)
        return self.skip(x) + h


class _Step(nn.Module):
    """One residual block, then attention if this resolution has it."""

    def __init__(self, block: nn.Module, attn: nn.Module | None):
        super().__init__()
        self.block = block
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.block(x, emb))


class _DownLevel(nn.Module):
    """Residual steps at one resolution, then optional stride-2 conv3x3; every output becomes a skip."""

    def __init__(self, steps: list[_Step], channels: int, downsample: bool):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.downsample = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if downsample else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for step in self.steps:
            h = step(h, emb)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)  # (N, C, ceil(H/2), ceil(W/2))
            skips.append(h)
        return h


class _UpLevel(nn.Module):
    """Residual steps that each consume a concatenated skip, then optional nearest upsample + conv3x3."""

    def __init__(self, steps: list[_Step], channels: int, upsample: bool):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.upsample = nn.Conv2d(channels, channels, 3, padding=1) if upsample else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for step in self.steps:
            h = step(torch.cat([h, skips.pop()], dim=1), emb)  # (N, C + C_skip, H, W) -> (N, C', H, W)
        if self.upsample is not None:
            # Upsample to the next skip's size rather than x2, so that 7 -> 4 -> 7 round-trips.
            h = self.upsample(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return h


def _resolutions(image_size: int, levels: int) -> list[int]:
    """Feature-map side length at each level: a stride-2 conv3x3 with padding 1 maps s to ceil(s / 2)."""
    sizes = [image_size]
    for _ in range(levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class UNet(nn.Module):
    """DDPM U-Net: (x_t, t, y) -> a tensor shaped like x_t (e.g. the predicted noise eps).

    Args:
        image_size: side length H = W of the (square) inputs.
        in_channels: channels of x_t (1 for MNIST, 3 for RGB).
        out_channels: channels of the output; defaults to in_channels.
        base_channels: width of the first level; level i has base_channels * channel_mult[i] channels.
        channel_mult: one multiplier per resolution level; len(channel_mult) - 1 downsamplings.
        num_res_blocks: residual blocks per level on the way down (one more on the way up, as in DDPM).
        attn_resolutions: feature-map side lengths that get self-attention after each block, e.g.
            (7,) for 28x28 inputs with three levels (28, 14, 7).
        dropout: dropout probability inside residual blocks.
        block: residual block type, one of BLOCKS.
        attention: attention type, one of ATTENTIONS.
        num_heads: attention heads; channels at attention levels must divide by it.
        num_groups: GroupNorm groups; every level's width must divide by it.
        mid_attention: put attention between the two residual blocks of the middle block.
        num_classes: > 0 adds a learned label embedding (`forward(x, t, y)`); 0: unconditional.
        patch_size: p > 1 folds each p x p patch into channels first (image_size must divide by p);
            resolutions, including attn_resolutions, are then those of the image_size / p grid.
        head_channels: c > 0 adds the full-resolution residual head after un-patching (needs p > 1).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (7,),
        dropout: float = 0.0,
        block: str = "resnet",
        attention: str = "full",
        num_heads: int = 4,
        num_groups: int = 8,
        mid_attention: bool = True,
        num_classes: int = 0,
        patch_size: int = 1,
        head_channels: int = 0,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        resolutions = _check_config(
            image_size=image_size, patch_size=patch_size, in_channels=in_channels, out_channels=out_channels,
            base_channels=base_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions, dropout=dropout, block=block, attention=attention,
            num_heads=num_heads, num_groups=num_groups, mid_attention=mid_attention,
            head_channels=head_channels,
        )  # fmt: skip
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.patch_size = patch_size
        emb_dim = 4 * base_channels

        def step(cin: int, cout: int, res: int | None = None) -> nn.Module:
            """A residual block (a bare one when res is None), then attention if res is listed."""
            if block == "convnext":
                block_ = ConvNeXtBlock(cin, cout, emb_dim=emb_dim, dropout=dropout)
            else:
                block_ = ResBlock(cin, cout, emb_dim=emb_dim, num_groups=num_groups, dropout=dropout)
            if res is None:
                return block_
            return _Step(block_, attn(cout) if res in attn_resolutions else None)

        def attn(c: int) -> nn.Module:
            return AttentionBlock(c, num_heads=num_heads, num_groups=num_groups, attention=attention)

        self.time_embed = TimeEmbedding(base_channels, emb_dim)
        self.labels = LabelEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        self.input_conv = nn.Conv2d(in_channels * patch_size**2, base_channels, 3, padding=1)
        ch, skip_chs, last = base_channels, [base_channels], len(channel_mult) - 1
        self.down = nn.ModuleList()
        for i, (mult, res) in enumerate(zip(channel_mult, resolutions, strict=True)):
            steps, cout = [], base_channels * mult
            for _ in range(num_res_blocks):
                steps.append(step(ch, cout, res))
                ch = cout
                skip_chs.append(ch)
            self.down.append(_DownLevel(steps, ch, downsample=i != last))
            if i != last:
                skip_chs.append(ch)

        self.mid1 = step(ch, ch)
        self.mid_attn = attn(ch) if mid_attention else nn.Identity()
        self.mid2 = step(ch, ch)

        self.up = nn.ModuleList()
        for i in reversed(range(len(channel_mult))):
            steps, cout = [], base_channels * channel_mult[i]
            for _ in range(num_res_blocks + 1):
                steps.append(step(ch + skip_chs.pop(), cout, resolutions[i]))
                ch = cout
            self.up.append(_UpLevel(steps, ch, upsample=i != 0))

        self.out_norm = nn.GroupNorm(num_groups, ch)
        self.out_conv = _zero(nn.Conv2d(ch, out_channels * patch_size**2, 3, padding=1))
        self.head = None  # the residual full-resolution head: [out, x_t] -> conv, SiLU, zero conv
        if head_channels:
            self.head = nn.Sequential(
                nn.Conv2d(out_channels + in_channels, head_channels, 3, padding=1), nn.SiLU(),
                _zero(nn.Conv2d(head_channels, out_channels, 3, padding=1)),
            )  # fmt: skip

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict from a noisy batch.

        Args:
            x: (N, in_channels, image_size, image_size) noisy images x_t.
            t: (N,) timesteps (integer or float), or a scalar used for the whole batch.
            y: (N,) class labels of a class-conditional U-Net (None: the null label).
        Returns:
            (N, out_channels, image_size, image_size).
        """
        self._check_input(x, t)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        # SiLU once here: every block's time projection is SiLU -> Linear.
        emb = F.silu(add_label(self.time_embed(t), self.labels, y)).to(x.dtype)  # (N, emb_dim)
        x_t = x
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)  # (N, p^2 C, H/p, W/p)
        h = self.input_conv(x)  # (N, base, H/p, W/p)
        skips = [h]
        for level in self.down:
            h = level(h, emb, skips)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)  # (N, C_last, H_min, W_min)
        for level in self.up:
            h = level(h, emb, skips)
        out = self.out_conv(F.silu(self.out_norm(h)))  # (N, p^2 out_channels, H/p, W/p)
        if self.patch_size > 1:
            out = F.pixel_shuffle(out, self.patch_size)  # (N, out, H, W)
        return out if self.head is None else out + self.head(torch.cat([out, x_t], dim=1))

    def _check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ConfigError(
                f"UNet expects input of shape (N, {want[0]}, {want[1]}, {want[2]}) "
                f"(in_channels={self.in_channels}, image_size={self.image_size}), got {tuple(x.shape)}"
            )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ConfigError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")


def _check_config(
    *, image_size: int, patch_size: int, in_channels: int, out_channels: int, base_channels: int,
    channel_mult: tuple[int, ...], num_res_blocks: int, attn_resolutions: tuple[int, ...],
    dropout: float, block: str, attention: str, num_heads: int, num_groups: int, mid_attention: bool,
    head_channels: int = 0,
) -> list[int]:  # fmt: skip
    """Raise ConfigError (one line) for an unusable configuration; return the visited resolutions."""
    check_choice("block", block, BLOCKS)
    check_choice("attention", attention, ATTENTIONS)
    positive = {
        "image_size": image_size, "in_channels": in_channels, "out_channels": out_channels,
        "base_channels": base_channels, "num_res_blocks": num_res_blocks, "num_heads": num_heads,
        "num_groups": num_groups, "patch_size": patch_size,
    }  # fmt: skip
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if image_size % patch_size:
        raise ConfigError(
            f"image_size {image_size} is not divisible by patch_size {patch_size} (model.unet.patch_size)"
        )
    if isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 0:
        raise ConfigError(f"head_channels must be a non-negative integer, got {head_channels!r}")
    if head_channels and patch_size == 1:
        raise ConfigError("head_channels > 0 refines un-patched outputs: it needs patch_size > 1")
    image_size //= patch_size  # the grid the levels run on
    bad_mult = any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult)
    if not channel_mult or bad_mult:
        raise ConfigError(f"channel_mult must be a non-empty tuple of positive ints: {channel_mult!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    levels = len(channel_mult)
    if image_size < 2 ** (levels - 1):
        raise ConfigError(
            f"image_size {image_size} is too small for {levels} levels (channel_mult={channel_mult}): "
            f"use image_size >= {2 ** (levels - 1)} or at most {image_size.bit_length()} levels"
        )
    for mult in channel_mult:
        if (base_channels * mult) % num_groups:
            raise ConfigError(
                f"base_channels * mult = {base_channels} * {mult} = {base_channels * mult} is not "
                f"divisible by num_groups={num_groups}"
            )
    resolutions = _resolutions(image_size, levels)
    unknown = [r for r in attn_resolutions if r not in resolutions]
    if unknown:
        visited = ", ".join(map(str, resolutions))
        raise ConfigError(f"attn_resolutions {unknown} are not visited; this U-Net visits {visited}")
    levels_and_sizes = zip(channel_mult, resolutions, strict=True)
    attn_channels = [base_channels * m for m, r in levels_and_sizes if r in attn_resolutions]
    if mid_attention:
        attn_channels.append(base_channels * channel_mult[-1])
    for c in attn_channels:
        if c % num_heads:
            raise ConfigError(f"attention width {c} is not divisible by num_heads={num_heads}")
    return resolutions
