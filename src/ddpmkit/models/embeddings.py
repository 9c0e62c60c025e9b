"""Sinusoidal timestep embedding shared by every model (Vaswani et al. 2017; Ho et al. 2020, Appx. B)."""

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: (N,) timesteps, integer or float.
        dim: embedding width (any positive int; odd widths are zero-padded).
    Returns:
        (N, dim) float32 tensor [cos | sin].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """t -> sinusoidal(dim) -> Linear -> SiLU -> Linear(out_dim), as in the DDPM U-Net."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))
