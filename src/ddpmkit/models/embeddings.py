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


class LabelEmbedding(nn.Module):
    """Class labels -> a learned vector added to the time embedding (the class-conditional DDPM of
    Ho & Salimans 2022). Row `num_classes` is the null label: `y=None` selects it, the unconditional
    model that classifier-free guidance mixes with the conditional one."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """y: (n,) int64 labels in [0, num_classes], or None for the null label. Returns (n, dim)."""
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y.to(device))


def add_label(emb: torch.Tensor, labels: LabelEmbedding | None, y: torch.Tensor | None) -> torch.Tensor:
    """emb + the embedding of y for a class-conditional model; a model without labels refuses y."""
    if labels is None:
        if y is not None:
            raise ValueError("this model was built without class labels (model.num_classes = 0); drop y")
        return emb
    return emb + labels(y, emb.shape[0], emb.device)
