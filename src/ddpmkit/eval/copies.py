"""Are the samples copies of training images? The nearest-neighbour ratio test.

For each sample, its nearest and second-nearest training images by L2 distance; the sample is
counted as a copy when nearest / second-nearest < 1/3 (Carlini et al. 2023, "Extracting training
data from diffusion models", Sec. 4; Somepalli et al. 2023; the criterion sail-sg/DiffMemorize
uses). A sample that is merely close to the data has many near neighbours (ratio near 1); a copy
has one neighbour far nearer than all others. A sample at distance 0 is a copy whatever its second
neighbour (two identical training images give 0 / 0).

Distances are measured twice: on pixels scaled to [0, 1] (flattened), and in a feature space
(`ddpm eval` passes its classifier's features), where a copy shifted by a pixel or recoloured
slightly is still near. `copy_fraction` in `ddpm eval`'s result is the pixel one; the features' is
`copy_fraction_features`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fid import _pairwise_distances

COPY_RATIO = 1.0 / 3.0


@dataclass
class Neighbours:
    """Per sample: index of its nearest training image, the two smallest distances, their ratio."""

    index: torch.Tensor  # (N,) int64
    nearest: torch.Tensor  # (N,) float64
    second: torch.Tensor  # (N,) float64
    ratio: torch.Tensor  # (N,) float64; 0 for a sample at distance 0

    def copies(self, threshold: float = COPY_RATIO) -> torch.Tensor:
        """(N,) bool: the samples that pass the ratio test."""
        return self.ratio < threshold

    def copy_fraction(self, threshold: float = COPY_RATIO) -> float:
        return float(self.copies(threshold).double().mean())


def nearest_two(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 256) -> Neighbours:
    """Nearest and second-nearest rows of `reference` (M, D) for each row of `queries` (N, D), by
    Euclidean distance in float64 (chunks of `chunk` queries: memory ~ chunk * M * 8 bytes)."""
    if len(reference) < 2:
        raise ValueError(f"the ratio test needs >= 2 reference images, got {len(reference)}")
    ref = reference.double()
    idx, d1, d2 = [], [], []
    for start in range(0, len(queries), chunk):
        vals, ind = _pairwise_distances(queries[start : start + chunk].double(), ref).topk(
            2, dim=1, largest=False
        )
        idx.append(ind[:, 0])
        d1.append(vals[:, 0])
        d2.append(vals[:, 1])
    nearest, second = torch.cat(d1), torch.cat(d2)
    ratio = torch.where(nearest > 0, nearest / second.clamp(min=1e-300), torch.zeros_like(nearest))
    return Neighbours(torch.cat(idx), nearest, second, ratio)


def pixel_vectors(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C*H*W) float64 in [0, 1]."""
    return images_u8.reshape(len(images_u8), -1).double() / 255.0


def copy_report(
    samples_u8: torch.Tensor,
    train_u8: torch.Tensor,
    sample_feats: torch.Tensor | None = None,
    train_feats: torch.Tensor | None = None,
) -> tuple[dict, Neighbours]:
    """The copy figures of `ddpm eval` (JSON-able) and the pixel neighbours (for the picture).

    Args:
        samples_u8, train_u8: uint8 (N, C, H, W) and (M, C, H, W), the same C, H, W.
        sample_feats, train_feats: (N, D), (M, D) features, or None to skip the feature test.
    """
    if samples_u8.shape[1:] != train_u8.shape[1:]:
        raise ValueError(f"samples {tuple(samples_u8.shape[1:])} and training images "
                         f"{tuple(train_u8.shape[1:])} differ in shape")  # fmt: skip
    pix = nearest_two(pixel_vectors(samples_u8), pixel_vectors(train_u8))
    out = {
        "copy_fraction": pix.copy_fraction(),
        "copy_ratio_threshold": COPY_RATIO,
        "copy_train_images": len(train_u8),
        "nearest_pixel_l2_median": float(pix.nearest.median()),
        "nearest_index": pix.index.tolist(),
        "nearest_ratio": [round(float(r), 4) for r in pix.ratio],
    }
    if sample_feats is not None and train_feats is not None:
        out["copy_fraction_features"] = nearest_two(sample_feats, train_feats).copy_fraction()
    return out, pix


def copy_picture(
    samples_u8: torch.Tensor, train_u8: torch.Tensor, neighbours: Neighbours, path, *, pairs: int = 16
) -> None:
    """The `pairs` samples nearest to a training image (smallest ratio first), each beside it:
    rows of (sample, nearest training image), titled with the ratio and flagged when a copy."""
    from ..viz import image_table

    order = torch.argsort(neighbours.ratio)[:pairs]
    hwc = lambda x: x.permute(0, 2, 3, 1).numpy()  # noqa: E731
    cells = [[hwc(samples_u8[i : i + 1]), hwc(train_u8[neighbours.index[i] : neighbours.index[i] + 1])]
             for i in order.tolist()]  # fmt: skip
    rows = [f"{'COPY ' if neighbours.ratio[i] < COPY_RATIO else ''}r={float(neighbours.ratio[i]):.2f}"
            for i in order.tolist()]  # fmt: skip
    image_table(cells, rows, ["sample", "nearest training image"], path,
                title="samples nearest to a training image (r = nearest / second-nearest L2)")  # fmt: skip
