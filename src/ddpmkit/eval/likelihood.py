"""Negative log-likelihood of images under a trained diffusion model, in bits/dim.

The variational bound of Ho et al. 2020, Eq. 5: L = L_T + sum_{t>1} L_{t-1} + L_0, with the prior
KL L_T, the Gaussian KL terms L_{t-1} (Eqs. 6-7 vs the model's p(x_{t-1}|x_t)) and the discretised
decoder L_0 (Sec. 3.3), one model call per t per image, as improved-diffusion's `calc_bpd_loop`
(Nichol & Dhariwal 2021). The per-term math is `vlb.vb_terms_bpd` / `vlb.prior_bpd`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..data.images import to_model_range
from ..errors import ConfigError
from ..run import LoadedRun
from ..vlb import prior_bpd, vb_terms_bpd


def _bpd_timesteps(
    num_timesteps: int, t_stride: int, generator: torch.Generator | None = None
) -> tuple[list[int], list[int]]:
    """Timesteps to evaluate and their weights: t = 0 (decoder) once, then one t per block of
    `t_stride` steps standing for the whole block, drawn uniformly within it (a stratified, unbiased
    estimate of the sum; without a generator the block's first t). t_stride = 1: every t, exact."""
    starts = list(range(1, num_timesteps, t_stride))
    lengths = [min(t_stride, num_timesteps - t) for t in starts]
    if generator is not None and t_stride > 1:
        offsets = [int(torch.randint(n, (), generator=generator)) for n in lengths]
        starts = [t + o for t, o in zip(starts, offsets, strict=True)]
    return [0, *starts], [1, *lengths]


@torch.inference_mode()
def bpd_terms(
    model,
    diffusion,
    x0: torch.Tensor,
    *,
    t_stride: int = 1,
    generator: torch.Generator | None = None,
    timesteps: tuple[list[int], list[int]] | None = None,
    callback=None,
    cond=None,
) -> dict[str, torch.Tensor]:
    """Per-image terms of the variational bound (Ho et al. 2020, Eq. 5) in bits/dim.

    L = L_T (prior) + sum_{t>1} L_{t-1} (KL terms) + L_0 (decoder); one model call per t per image.

    Args:
        model: model(x_t, t, **cond) as the diffusion expects; diffusion: a GaussianDiffusion.
        x0: (N, *D) in [-1, 1], on the model's device.
        t_stride: evaluate one KL term per block of t_stride timesteps, weighted by the block's
            length (a stratified estimate if > 1; 1 = the exact bound).
        generator: CPU generator for the forward-process noise (and the strided timesteps).
        timesteps: (ts, weights) to use instead of drawing them from t_stride.
        callback: called with no arguments after each timestep (progress bars).
        cond: conditioning for the model, e.g. {"y": labels} of the N images.

    Returns:
        "total", "prior", "decoder", "kl": (N,) each; "per_t": (len(ts),) KL / decoder term per
        evaluated t, averaged over the images (unweighted).
    """
    ts, weights = timesteps or _bpd_timesteps(diffusion.num_timesteps, t_stride, generator)
    n = len(x0)
    kl = torch.zeros(n, dtype=torch.float64, device=x0.device)
    per_t = []
    for t, weight in zip(ts, weights, strict=True):
        t_b = torch.full((n,), t, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = diffusion.q_sample(x0, t_b, noise)  # Eq. 4
        term = vb_terms_bpd(diffusion, model, x0, x_t, t_b, cond).double()  # (N,): decoder at t=0, else KL
        if t == 0:
            decoder = term
        else:
            kl += weight * term
        per_t.append(term.mean())
        if callback is not None:
            callback()
    prior = prior_bpd(diffusion, x0).double()
    return {
        "total": prior + kl + decoder,
        "prior": prior,
        "decoder": decoder,
        "kl": kl,
        "per_t": torch.stack(per_t),
    }


def nll_bits_per_dim(
    run: LoadedRun,
    images: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 64,
    progress: bool = True,
    t_stride: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Negative log-likelihood bound of real images under a trained image run, in bits/dim.

    Args:
        run: from `load_run` (an image model).
        images: (N, C, H, W) uint8 in [0, 255], or float in [-1, 1], shaped like the run's data.
        batch_size: images per model call; t_stride: see `bpd_terms` (1 = exact bound).
        progress: tqdm bar over batches x timesteps; seed: forward-process noise.

    Returns:
        {"bpd", "bpd_sem" (standard error over images), "prior_bpd", "decoder_bpd", "kl_bpd", "n",
        "timesteps", "t_stride", "exact", "per_timestep": {"t": [...], "bpd": [...]}}.
    """
    from ..progress import bar as progress_bar

    if not run.space.discrete_8bit:
        raise ConfigError(f"bits/dim is defined for 8-bit images; this run models {run.space.name}")
    if isinstance(t_stride, bool) or not isinstance(t_stride, int) or t_stride < 1:
        raise ConfigError(f"t_stride must be an integer >= 1, got {t_stride!r}")
    x = torch.as_tensor(images)
    if tuple(x.shape[1:]) != tuple(run.data_shape) or len(x) == 0:
        raise ConfigError(
            f"images are {tuple(x.shape)} but the model takes (N, {', '.join(map(str, run.data_shape))})"
        )
    if x.dtype == torch.uint8:
        x = to_model_range(x)
    elif not x.is_floating_point() or x.min() < -1.0 - 1e-6 or x.max() > 1.0 + 1e-6:
        raise ConfigError("images must be uint8 in [0, 255] or float in [-1, 1]")
    params = list(run.model.parameters())
    device = params[0].device if params else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    ts, weights = _bpd_timesteps(run.diffusion.num_timesteps, t_stride, g)  # shared by all batches
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("total", "prior", "decoder", "kl")}
    per_t = torch.zeros(len(ts), dtype=torch.float64)
    bar = progress_bar(
        total=len(batches) * len(ts), desc="bits/dim", unit="call", disable=not progress, dynamic_ncols=True
    )
    for xb in batches:
        terms = bpd_terms(
            run.model,
            run.diffusion,
            xb.float().to(device),
            generator=g,
            timesteps=(ts, weights),
            callback=lambda: bar.update(1),
        )
        for k in parts:
            parts[k].append(terms[k].cpu())
        per_t += terms["per_t"].cpu() * len(xb) / len(x)
    bar.close()
    total = torch.cat(parts["total"])
    mean = lambda k: float(torch.cat(parts[k]).mean())  # noqa: E731
    sem = float(total.std() / math.sqrt(len(total))) if len(total) > 1 else None
    return {
        "bpd": float(total.mean()),
        "bpd_sem": sem,
        "prior_bpd": mean("prior"),
        "decoder_bpd": mean("decoder"),
        "kl_bpd": mean("kl"),
        "n": len(total),
        "timesteps": run.diffusion.num_timesteps,
        "t_stride": t_stride,
        "exact": t_stride == 1,
        "per_timestep": {"t": ts, "bpd": per_t.tolist()},
    }


def test_set_nll(
    run_dir,
    *,
    subset: int = 256,
    batch_size: int = 64,
    t_stride: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """`nll_bits_per_dim` of `subset` random test images (0 = all) under the run in `run_dir`."""
    from ..checks import check_range, check_seed
    from ..data import build_dataset
    from ..run import load_run

    check_range("--subset", subset, 0, 10**7)  # 0 = all; a negative count is not "all"
    check_range("--batch-size", batch_size, 1, 2**16)
    check_range("--t-stride", t_stride, 1, 10**5)
    check_seed("--seed", seed)
    run = load_run(run_dir)
    if not run.space.discrete_8bit:
        raise ConfigError(f"--nll is for image models in pixel space (bits/dim of 8-bit test images); this "
                          f"run models {run.space.name} (a latent run's bound needs a decoder likelihood)")
    data = build_dataset(run.cfg.data, split="test")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:subset] if subset else torch.arange(len(data))
    result = nll_bits_per_dim(run, data.x[idx], batch_size=batch_size, progress=progress, t_stride=t_stride,
                              seed=seed)  # fmt: skip
    result.pop("per_timestep", None)
    return result


def format_nll(result: dict[str, Any]) -> str:
    how = "exact bound" if result["exact"] else f"stratified estimate, t-stride {result['t_stride']}"
    return (
        f"NLL of {result['n']} test images: {result['bpd']:.4f} ± {result['bpd_sem']:.4f} bits/dim "
        f"(prior {result['prior_bpd']:.4f}, decoder {result['decoder_bpd']:.4f}, {how})"
    )
