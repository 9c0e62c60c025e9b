"""How good an autoencoder of `ddpm train-autoencoder` is: reconstruction PSNR on the held-out split,
the FID of reconstructions beside the real-data floor, the latent scale factor, and pictures
(recon.png: originals beside reconstructions; latents.png: the latent channels of a few images).

The FID compares N reconstructed *training* images with the same reference the real floor uses
(`evaluate_images`: N real training images against the test split), so the two figures differ only
by what the autoencoder changes. PSNR is 10 log10(1 / MSE) on [0, 1] pixels after 8-bit rounding,
averaged over images (CompVis' tables report it per image likewise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import viz
from ..data import build_dataset
from ..data.images import from_model_range
from ..data.latent import LatentSpace, latent_scale
from ..errors import ConfigError, DataError, DdpmkitError
from ..io import atomic_write_text
from ..run import load_run
from ..training.runlog import read_log

FID_SAMPLES = 1000
REPORT_FILES = "recon.png, latents.png, loss.png, metrics.json"


def psnr(original: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images (N, C, H, W). An exact reconstruction is scored as if
    one pixel in the image were off by one level (the 8-bit ceiling), not +inf."""
    mse = ((original.double() - recon.double()) / 255.0).pow(2).flatten(1).mean(1)
    ceiling = (1 / 255.0) ** 2 / original[0].numel()
    return 10 * torch.log10(1.0 / mse.clamp(min=ceiling))


def reconstruct(space: LatentSpace, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 reconstructions through the posterior mean."""
    return from_model_range(space.decode(space.to_model(images)))


def write_autoencoder_report(run_dir: str | Path, *, progress: bool = True, cache_dir=None) -> dict:
    """loss.png, recon.png, latents.png and metrics.json of an autoencoder run; returns the metrics."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.cfg.train.task != "autoencoder":
        raise ConfigError(f"{run_dir} is a {run.cfg.train.task} run, not an autoencoder")
    steps, losses = read_log(run_dir)
    if steps:
        viz.plot_loss(steps, losses, run_dir / "loss.png")
    cfg = run.cfg
    train = build_dataset(cfg.data, seed=cfg.train.seed)
    space = LatentSpace(run.model, 1.0)
    z = space.encode(train.x)
    space.scale = latent_scale(z)  # rounded to float32, as a latent run stores it
    test_images = _split_images(cfg, "test", train)
    test_u8 = from_model_range(test_images)
    with torch.inference_mode():
        recon = reconstruct(space, test_u8)
    p = psnr(test_u8, recon)
    metrics = {
        "step": run.step,
        "final_loss": losses[-1] if losses else None,
        "latent_shape": list(z.shape[1:]),
        "compression": float(np.prod(train.shape) / np.prod(z.shape[1:])),
        "latent_scale": space.scale,
        "latent_std": float(z.double().std()),
        "psnr": float(p.mean()),
        "psnr_split": "test" if test_images is not train.x else "train",
    }
    k = min(8, len(test_u8))
    z_test = space.to_model(test_images[:k])  # scaled, as a latent run sees them
    rows = [test_images[:k], space.decode(z_test)]
    viz.image_rows(rows, [""] * k, ["original", "reconstruction"], run_dir / "recon.png",
                   title=f"{cfg.data.dataset}: reconstructions, PSNR {metrics['psnr']:.2f} dB")  # fmt: skip
    write_latent_channels(z_test, run_dir / "latents.png")  # the images drawn in recon.png
    metrics.update(_reconstruction_fid(space, train, cfg, cache_dir or cfg.train.eval_cache_dir, progress))
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _split_images(cfg, split: str, train) -> torch.Tensor:
    """The held-out split's images in [-1, 1] where the dataset has one, else the training images."""
    try:
        return build_dataset(cfg.data, seed=cfg.train.seed, split=split).x
    except (ConfigError, DataError):  # no such split (a folder without train/test, a Hub set)
        return train.x


def write_latent_channels(z: torch.Tensor, path: Path) -> None:
    """One row per image, one column per latent channel, each channel scaled to its own range."""
    z = z.float()
    lo = z.amin(dim=(0, 2, 3), keepdim=True)
    hi = z.amax(dim=(0, 2, 3), keepdim=True)
    norm = (z - lo) / (hi - lo).clamp(min=1e-8) * 2 - 1  # per channel to [-1, 1]
    rows = [norm[:, c : c + 1] for c in range(z.shape[1])]
    viz.image_rows(rows, [f"#{i}" for i in range(len(z))], [f"channel {c}" for c in range(z.shape[1])], path,
                   title="latent channels (scaled posterior means), per channel min..max")  # fmt: skip


def _reconstruction_fid(space: LatentSpace, train, cfg, cache_dir, progress: bool) -> dict:
    """FID of FID_SAMPLES reconstructed training images and the real floor, from the classifier
    features of `ddpm eval`; a note instead where the dataset's classifier is not cached."""
    from .images import evaluate_images

    n = min(FID_SAMPLES, len(train))
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    u8 = from_model_range(train.x[idx])
    with torch.inference_mode():
        recon = reconstruct(space, u8).permute(0, 2, 3, 1).numpy()
    try:
        r = evaluate_images(recon, cfg.data.dataset, data_dir=cfg.data.data_dir, cache_dir=cache_dir,
                            progress=progress, copies=False)  # fmt: skip
    except DdpmkitError as e:  # no cached classifier for this dataset and size
        return {"fid_note": f"no reconstruction FID: {e}"}
    out = {"recon_fid": r["fid"], "fid_floor": r.get("fid_reference"), "fid_n": n}
    if out["fid_floor"]:
        out["recon_fid_ratio"] = out["recon_fid"] / out["fid_floor"]
    return out
