"""Noise predictor for 2-D points: an MLP with residual blocks and a sinusoidal time embedding.

Input coordinates can be lifted to sinusoidal features first (`input_scale` > 0, as in
tiny-diffusion): low-dimensional inputs then get the high-frequency detail an MLP otherwise
learns slowly (Tancik et al. 2020, "Fourier features").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import LabelEmbedding, TimeEmbedding, add_label, timestep_embedding


class ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(LN(h)) + W_e emb): a pre-norm residual block conditioned on time."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(self.norm(h))) + self.emb(emb)))


class MLP(nn.Module):
    """forward(x_t: (N, D), t: (N,), y: (N,) labels or None) -> (N, out_dim) (out_dim defaults to D)."""

    def __init__(
        self,
        *,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 128,
        input_scale: float = 25.0,
        num_classes: int = 0,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.dim, self.emb_dim, self.input_scale = dim, emb_dim, input_scale
        in_features = dim * emb_dim if input_scale > 0 else dim
        self.time = TimeEmbedding(emb_dim, emb_dim)
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_dim or dim))
        self.labels = LabelEmbedding(num_classes, emb_dim) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.input_scale > 0:  # (N, D) -> (N, D * emb_dim)
            h = timestep_embedding(x.reshape(-1) * self.input_scale, self.emb_dim).reshape(len(x), -1)
        else:
            h = x
        h = self.inp(h)
        emb = add_label(self.time(t), self.labels, y)  # (N, emb_dim)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
