"""Tests for ddpmkit.models.unet: shapes at many sizes, attention maths, time conditioning, validation."""

import pytest
import torch
from torch import nn

from ddpmkit.errors import ConfigError
from ddpmkit.models.unet import (
    ATTENTIONS,
    BLOCKS,
    AttentionBlock,
    UNet,
    full_attention,
    linear_attention,
)

# Tiny widths keep the whole file fast on a CPU.
TINY = dict(base_channels=8, num_groups=4, num_heads=2)


def _lowest(size: int, levels: int) -> int:
    for _ in range(levels - 1):
        size = (size + 1) // 2
    return size


def _unzero(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give the zero-initialised layers (block outputs, attention projections, output conv) random weights."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear) and not mod.weight.any():
                mod.weight.normal_(0.0, 0.2, generator=generator)
                mod.bias.normal_(0.0, 0.2, generator=generator)
    return model


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_output_shape_matches_input(size, channels, gen):
    model = UNet(image_size=size, in_channels=channels, attn_resolutions=(_lowest(size, 3),), **TINY)
    x = torch.randn(2, channels, size, size, generator=gen)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.all(out == 0)  # zero-initialised output conv: the untrained model predicts 0


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_and_attentions_on_odd_sizes(block, attention, gen):
    # Four levels on 28x28 visit 28, 14, 7, 4: upsampling 4 -> 7 must land on the skip's size.
    model = UNet(
        image_size=28, in_channels=3, out_channels=2, channel_mult=(1, 2, 2, 2), attn_resolutions=(7, 4),
        block=block, attention=attention, dropout=0.1, **TINY,
    )  # fmt: skip
    _unzero(model, gen)
    out = model(torch.randn(3, 3, 28, 28, generator=gen), torch.tensor([1, 50, 999]))
    assert out.shape == (3, 2, 28, 28)
    assert torch.isfinite(out).all()


def test_default_config_size():
    n = sum(p.numel() for p in UNet(image_size=28).parameters())
    assert 1.0e6 <= n <= 1.5e6


@pytest.mark.parametrize("block", BLOCKS)
def test_time_conditioning_changes_output(block, gen):
    model = _unzero(UNet(image_size=8, block=block, attn_resolutions=(2,), **TINY), gen).eval()
    x = torch.randn(1, 1, 8, 8, generator=gen).expand(2, 1, 8, 8)
    out = model(x, torch.tensor([3, 700]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    # A scalar t means the same t for the whole batch.
    torch.testing.assert_close(model(x, torch.tensor(3)), model(x, torch.tensor([3, 3])))


def test_full_attention_matches_naive_softmax(gen):
    q, k, v = torch.randn(3, 2, 4, 10, 8, generator=gen, dtype=torch.float64).unbind(0)  # (B, h, L, d)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)  # (B, h, L, L)
    torch.testing.assert_close(full_attention(q, k, v), weights @ v)


def test_linear_attention_is_a_row_stochastic_mixing(gen):
    # Efficient attention equals A v for A = softmax_d(q) softmax_L(k)^T, whose rows are
    # probability distributions over positions (Shen et al. 2021, Sec. 3).
    q, k, v = torch.randn(3, 2, 4, 10, 8, generator=gen, dtype=torch.float64).unbind(0)
    weights = q.softmax(dim=-1) @ k.softmax(dim=-2).transpose(-2, -1)  # (B, h, L, L)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10, dtype=torch.float64))
    torch.testing.assert_close(linear_attention(q, k, v), weights @ v)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_attention_block_is_permutation_equivariant(attention, gen):
    block = _unzero(AttentionBlock(8, num_heads=2, num_groups=4, attention=attention), gen).double()
    x = torch.randn(2, 8, 5, 6, generator=gen, dtype=torch.float64)
    perm = torch.randperm(30, generator=gen)

    def permute(a: torch.Tensor) -> torch.Tensor:  # shuffle the H*W positions, keep the (5, 6) shape
        return a.flatten(2)[:, :, perm].reshape(a.shape)

    torch.testing.assert_close(block(permute(x)), permute(block(x)))
    assert not torch.allclose(block(x), x)  # and it does something


def test_channels_last_gives_the_same_output(gen):
    model = _unzero(UNet(image_size=28, **TINY), gen)
    x, t = torch.randn(2, 1, 28, 28, generator=gen), torch.tensor([5, 500])
    expected = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_patch_stem_is_the_inner_unet_between_unshuffle_and_shuffle(channels, gen):
    # patch_size 2 on 28x28: the same network as a plain 14x14 U-Net on the 4 * C channel image of
    # 2x2 patches, its 4 * C output channels shuffled back to pixels (Shi et al. 2016's pixel shuffle).
    kw = dict(channel_mult=(1, 2, 2), attn_resolutions=(7,), **TINY)
    patched = _unzero(UNet(image_size=28, in_channels=channels, patch_size=2, **kw), gen)
    inner = UNet(image_size=14, in_channels=4 * channels, **kw)
    inner.load_state_dict(patched.state_dict())
    x, t = torch.randn(3, channels, 28, 28, generator=gen), torch.tensor([0, 250, 999])
    out = patched(x, t)
    assert out.shape == x.shape and out.abs().sum() > 0
    torch.testing.assert_close(out, torch.nn.functional.pixel_shuffle(inner(pixel_unshuffle(x), t), 2))
    # and each output pixel of a patch has its own channel: the four pixels of a patch differ
    assert not torch.allclose(out[..., 0::2, 0::2], out[..., 1::2, 1::2])


def test_pixel_head_starts_as_the_identity_and_then_mixes_neighbouring_pixels(gen):
    # head_channels > 0: out + conv(silu(conv([out, x_t]))) with the last conv zero at init, so an
    # untrained head leaves the patched U-Net's output unchanged; trained, a pixel's correction depends on
    # its 5x5 neighbourhood (two 3x3 convs) across patch borders (a linear head per patch cannot).
    kw = dict(channel_mult=(1, 2), attn_resolutions=(), patch_size=4, **TINY)
    plain = _unzero(UNet(image_size=16, in_channels=3, **kw), gen)
    headed = UNet(image_size=16, in_channels=3, head_channels=8, **kw)
    missing = headed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("head.") for k in missing)
    x, t = torch.randn(2, 3, 16, 16, generator=gen), torch.tensor([3, 700])
    torch.testing.assert_close(headed(x, t), plain(x, t))
    head = _unzero(headed.head, gen)
    out = torch.randn(2, 3, 16, 16, generator=gen)
    out2 = out.clone()
    out2[:, :, 4, 4] += 1.0  # the first pixel of the patch at (1, 1)
    moved = (head(torch.cat([out2, x], 1)) - head(torch.cat([out, x], 1))).abs().sum(dim=(0, 1)) > 0
    assert moved[3, 3] and moved[2, 6] and not moved[0, 0]  # within 2 pixels, across the patch border
    headed(x, t).square().mean().backward()
    assert all(p.grad is not None for p in headed.head.parameters())


def pixel_unshuffle(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2) by hand: channel c * 4 + 2 * i + j holds pixel (2y + i, 2x + j)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


@pytest.mark.parametrize("block", BLOCKS)
def test_gradient_reaches_every_parameter(block, gen):
    model = _unzero(UNet(image_size=8, in_channels=3, block=block, attn_resolutions=(4, 2), **TINY), gen)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    model(x, torch.tensor([10, 900])).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(block="unet"), "'unet'"),
        (dict(attention="sparse"), "'sparse'"),
        (dict(image_size=3, channel_mult=(1, 2, 2)), "image_size >= 4"),
        (dict(image_size=28, channel_mult=(1, 2, 2, 2, 2, 2)), "image_size >= 32"),
        (dict(base_channels=12, num_groups=8), "num_groups=8"),
        (dict(attn_resolutions=(5,)), "28, 14, 7"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(channel_mult=(1, 0)), "channel_mult"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=-1), "out_channels"),
        (dict(image_size=28.0), "image_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(patch_size=3), "not divisible by patch_size 3"),
        (dict(patch_size=0), "patch_size"),
        (dict(patch_size=2, attn_resolutions=(28,)), "14, 7, 4"),
        (dict(head_channels=8), "needs patch_size > 1"),
        (dict(patch_size=2, head_channels=-1), "head_channels"),
    ],
)
def test_bad_config_raises_one_line_config_error(kwargs, needle):
    kwargs = {"image_size": 28, **kwargs}
    with pytest.raises(ConfigError) as info:
        UNet(**kwargs)
    message = str(info.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize(
    ("shape", "t"),
    [
        ((2, 1, 32, 32), torch.tensor([1, 2])),  # wrong size
        ((2, 3, 28, 28), torch.tensor([1, 2])),  # wrong channels
        ((1, 28, 28), torch.tensor([1])),  # missing batch dimension
        ((2, 1, 28, 28), torch.tensor([1, 2, 3])),  # t does not match the batch
    ],
)
def test_wrong_input_raises_config_error(shape, t):
    model = UNet(image_size=28, **TINY)
    with pytest.raises(ConfigError) as info:
        model(torch.zeros(shape), t)
    assert "\n" not in str(info.value)


def test_full_attention_block_matches_torch_multihead_attention(gen):
    block = _unzero(AttentionBlock(8, num_heads=2, num_groups=4, attention="full"), gen)
    reference = nn.MultiheadAttention(8, num_heads=2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(block.qkv.weight.flatten(1))  # (3C, C, 1, 1) -> (3C, C)
        reference.in_proj_bias.copy_(block.qkv.bias)
        reference.out_proj.weight.copy_(block.proj.weight.flatten(1))
        reference.out_proj.bias.copy_(block.proj.bias)
    x = torch.randn(2, 8, 3, 5, generator=gen)
    tokens = block.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
    attended, _ = reference(tokens, tokens, tokens, need_weights=False)
    expected = x + attended.transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), expected)
