"""Pictures: image grids, loss curves, forward-process strips, 2-D scatter plots, schedule
comparisons and denoising animations. Takes tensors/arrays, never models; every file is written
atomically (rendered to memory, then `atomic_write_bytes`)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x: torch.Tensor | np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one uint8 (H, W, C) picture; x: (N, C, H, W) float in [-1, 1] or uint8 NHWC."""
    imgs = to_uint8(x) if torch.is_tensor(x) else np.asarray(x)
    n, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, nrow)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w
        ] = img
    return grid


def _pil(grid: np.ndarray, scale: int = 1) -> Image.Image:
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _save_pil(img: Image.Image, path: Path, **kwargs) -> None:
    buf = io.BytesIO()
    img.save(buf, format=Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG"), **kwargs)
    atomic_write_bytes(Path(path), buf.getvalue())


def _upscale(h: int) -> int:
    return max(1, 64 // h)  # small images (8x8, 28x28) are enlarged so they can be seen


def grid_image(x, nrow: int | None = None, title: str = "") -> Image.Image:
    """A grid of images, enlarged when small, with `title` in a band above it."""
    grid = make_grid(x, nrow)
    h = x.shape[2] if torch.is_tensor(x) else x.shape[1]
    img = _pil(grid, _upscale(h))
    if title:
        from PIL import ImageDraw

        img = img.convert("RGB")
        band = Image.new("RGB", (max(img.width, 8 * len(title) + 8), img.height + 18), "white")
        band.paste(img, (0, 18))
        ImageDraw.Draw(band).text((4, 3), title, fill="black")
        img = band
    return img


def save_image_grid(x, path: str | Path, nrow: int | None = None, title: str = "") -> None:
    _save_pil(grid_image(x, nrow, title), Path(path))


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_loss(steps: Sequence[float], losses: Sequence[float], path: str | Path) -> None:
    """Loss per step (faint) and its running mean, log scale."""
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6, 3.5))
    losses = np.asarray(losses, dtype=float)
    few = len(losses) < 10  # a short run: markers, so that one logged point still shows
    ax.plot(steps, losses, alpha=0.6 if few else 0.3, lw=0.8, marker="o" if few else None, label="logged")
    if len(losses) >= 10:
        k = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.asarray(steps)[k - 1 :], smooth, lw=1.8, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.98, not 9.8x10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}" if _few_decades(ax) else ""))
    ax.legend()
    ax.grid(alpha=0.3)
    _save_fig(fig, Path(path))


def _few_decades(ax) -> bool:
    """A log axis spanning less than a decade or so: label its minor ticks too (else none show)."""
    lo, hi = ax.get_ylim()
    return lo > 0 and hi / lo < 20


def t_label(t: float, sep: str = " ") -> str:
    """`t = 998.7` for a fractional t (Karras grids), `t = 999` for an integer one."""
    t = float(t)
    return f"t{sep}={sep}{t:.0f}" if t == round(t) else f"t{sep}={sep}{t:.1f}"


def _lim(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    m = 0.15 * (hi - lo)
    return (lo[0] - m[0], hi[0] + m[0]), (lo[1] - m[1], hi[1] + m[1])


def plot_points_strip(
    frames: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    reference: np.ndarray | None = None,
    suptitle: str | None = None,
    rows: Sequence[Sequence[np.ndarray]] = (),
    row_titles: Sequence[str] = (),
) -> None:
    """A row of scatter plots (e.g. the data noised at several t); `rows` adds more rows of frames
    below it (e.g. the predicted x0 under x_t), labelled by `row_titles` (one per row, first too)."""
    grid = [frames, *rows]
    xl, yl = _lim(np.concatenate(list(frames)))  # shared axes: the first row's extent
    aspect = min(max((yl[1] - yl[0]) / (xl[1] - xl[0]), 0.4), 2.5)  # panel height / width
    size = (2.6 * len(frames), (2.6 * aspect + 0.5) * len(grid))
    fig, axes = plt.subplots(len(grid), len(frames), figsize=size, squeeze=False)
    for r, row in enumerate(grid):
        for c, (ax, pts) in enumerate(zip(axes[r], row, strict=True)):
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8", lw=0)
            ax.scatter(pts[:, 0], pts[:, 1], s=2, lw=0, alpha=0.7)
            ax.set_title(titles[c] if r == 0 else "", fontsize=9)
            ax.set(xlim=xl, ylim=yl)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, y=1.04 if len(grid) == 1 else 1.0)
    _save_fig(fig, Path(path))


def plot_points_samples(
    samples: np.ndarray, real: np.ndarray, path: str | Path, title: str = "", distinct: int | None = None
) -> None:
    """Real points (left) and generated points (right) on the same axes. `distinct`: the real set
    repeats that many points (a Datasaurus set: 142), drawn larger so that it does not look sparser
    than the samples, which spread where the repeats pile up."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
    size = 3 * min(6.0, max(1.0, len(real) / distinct)) if distinct else 3
    a.scatter(real[:, 0], real[:, 1], s=size, c="0.35", lw=0)
    b.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:blue", lw=0)
    xl, yl = _lim(np.concatenate([real, samples]))
    real_name = f"real ({len(real)})" if not distinct else f"real: {distinct} points ({len(real)} draws)"
    for ax, name in ((a, real_name), (b, f"generated ({len(samples)})")):
        ax.set(xlim=xl, ylim=yl, title=name)
        ax.set_aspect("equal")
        ax.grid(alpha=0.2)
    if title:
        fig.suptitle(title)
    _save_fig(fig, Path(path))


def _fig_to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return arr


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = 80, hold_last: int = 15):
    """Frames (H, W, 3 or 1) uint8 -> looping GIF; the last frame is held a little longer."""
    imgs = [_pil(f) for f in frames]
    imgs += [imgs[-1]] * hold_last
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=duration_ms, loop=0)
    atomic_write_bytes(Path(path), buf.getvalue())


def points_gif(
    frames: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, reference: np.ndarray | None = None
) -> None:
    """Animation of points moving through the reverse process, on fixed axes."""
    xl, yl = _lim(np.concatenate([frames[-1]] + ([reference] if reference is not None else [])))
    out = []
    for pts, label in zip(frames, labels, strict=True):
        fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.85", lw=0)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, lw=0, c="tab:blue")
        ax.set(xlim=xl, ylim=yl, xticks=[], yticks=[])
        ax.set_title(label, fontsize=10)
        out.append(_fig_to_array(fig))
    save_gif(out, path)


def images_gif(frames: Sequence[torch.Tensor], path: str | Path, nrow: int | None = None) -> None:
    """Animation of a batch of images through the reverse process (frames: (N, C, H, W) in [-1, 1])."""
    h = frames[0].shape[2]
    save_gif([np.asarray(_pil(make_grid(f, nrow), _upscale(h)).convert("RGB")) for f in frames], path)


def image_rows(
    rows: Sequence[torch.Tensor],
    col_titles: Sequence[str],
    row_titles: Sequence[str],
    path: str | Path,
    title: str = "",
) -> None:
    """A table of images: rows[r] is (K, C, H, W) in [-1, 1], one image per column."""
    n_rows, n_cols = len(rows), len(col_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 0.8, 1.3 * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        imgs = to_uint8(row)
        for c in range(n_cols):
            ax = axes[r][c]
            img = imgs[c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_fig(fig, Path(path))


def plot_schedules(curves: dict[str, np.ndarray], path: str | Path) -> None:
    """alpha_bar(t) and log10 SNR(t) = log10(alpha_bar / (1 - alpha_bar)) of several schedules."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, ab in curves.items():
        t = np.arange(1, len(ab) + 1)
        a1.plot(t, ab, label=name)
        a2.plot(t, np.log10(ab / (1 - ab)), label=name)
    a1.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title="signal kept")
    a2.set(xlabel="t", ylabel=r"$\log_{10}$ SNR", title="signal-to-noise ratio")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend()
    _save_fig(fig, Path(path))


def image_table(
    cells: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str],
    col_titles: Sequence[str],
    path: str | Path,
    title: str = "",
) -> None:
    """A table of image tiles: cells[r][c] is uint8 (K, H, W, C), tiled in one row of K images
    (e.g. rows = classes, columns = guidance values)."""
    k = len(cells[0][0])
    per_row = k if k <= 16 else math.ceil(math.sqrt(k))  # many per class: a square block, not a strip
    tiles = [[make_grid(np.asarray(c), nrow=per_row) for c in row] for row in cells]
    h, w = tiles[0][0].shape[:2]
    cell_w = 1.2 * min(k, 8) if k <= 8 else 0.55 * per_row  # inches per tile: >= 0.55 in per image
    size = (cell_w * len(cells[0]) + 0.8, cell_w * h / w * len(cells) + 0.6)
    fig, axes = plt.subplots(len(cells), len(cells[0]), squeeze=False, figsize=size)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            ax = axes[r][c]
            ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=9, rotation=0, ha="right", va="center")
    _tight(fig)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0, va="bottom")
    _save_fig(fig, Path(path))


def points_table(
    cells: Sequence[Sequence[np.ndarray]],
    titles: Sequence[Sequence[str]],
    path: str | Path,
    references: Sequence[Sequence[np.ndarray | None]] | None = None,
    title: str = "",
) -> None:
    """A table of scatter plots on shared axes: cells[r][c] is (n, 2), titled titles[r][c], drawn over
    references[r][c] (grey) when given; empty cells ([] or None) are left blank."""
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    pts = np.concatenate([c for row in cells for c in row if c is not None and len(c)])
    xl, yl = _lim(pts)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.3 * n_rows + 0.4), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells[r]) or cells[r][c] is None:
                ax.axis("off")
                continue
            ref = references[r][c] if references else None
            if ref is not None:
                ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", lw=0)
            ax.scatter(cells[r][c][:, 0], cells[r][c][:, 1], s=2, lw=0, alpha=0.7)
            ax.set(xlim=xl, ylim=yl)
            ax.set_aspect("equal", adjustable="box")
            ax.set_title(titles[r][c], fontsize=9)
    _tight(fig)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0, va="bottom")
    _save_fig(fig, Path(path))


def save_image(img: np.ndarray, path: str | Path) -> None:
    """One uint8 (H, W, C) image, pixel for pixel (lossless PNG, no enlargement)."""
    _save_pil(_pil(np.asarray(img, dtype=np.uint8)), Path(path))


def _tight(fig) -> None:
    """tight_layout where it fits (very tall tables keep matplotlib's default spacing, silently)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
