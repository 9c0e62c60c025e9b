"""Steering a trained run: which class to draw, inpainting, image-to-image and interpolation.

All of it is plumbing around the samplers: labels become `cond={"y": ...}` (guided by the denoiser),
RePaint fills in a masked region (`samplers.repaint`), SDEdit noises an input part of the way and
denoises it (`samplers.sdedit`), and interpolation walks a great circle between two noises
(two seeds, or two images inverted with DDIM) and decodes each point with deterministic DDIM.
Inputs and outputs are in model space; `LoadedRun.space` maps them to and from the user's files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from .autoguide import guide_for
from .checks import check_unit
from .config import SampleConfig
from .denoiser import Denoiser, guidance_weight, sampling_timesteps
from .errors import ConfigError
from .run import LoadedRun, batch_cond, check_null_label, check_samples, clip_range, generate, labelled
from .samplers import sdedit
from .samplers.ddim import ddim_invert, ddim_sample
from .samplers.repaint import repaint_sample


# ----- classes -----------------------------------------------------------------------------------------
def class_names(run: LoadedRun) -> tuple[str, ...]:
    """The run's class names (indices as text when the data had none); () for an unconditional run."""
    k = run.cfg.model.num_classes
    return tuple(run.cfg.data.class_names) or tuple(str(i) for i in range(k)) if k else ()


def class_index(run: LoadedRun, name: int | str) -> int:
    """A class given by index or name -> its index; ConfigError naming the choices otherwise."""
    names = class_names(run)
    if not names:
        raise ConfigError(f"{run.run_dir or 'this run'} is unconditional: train with --cond class to "
                          "ask for a class")  # fmt: skip
    text = str(name).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit():
        i = int(text)
        if 0 <= i < len(names):
            return i
        raise ConfigError(f"class index {i} is out of range: this run has classes 0..{len(names) - 1}")
    raise ConfigError(f"unknown class {text!r}; this run's classes are {', '.join(names)}")


def class_indices(run: LoadedRun, spec: str | Sequence[int | str]) -> list[int]:
    """ "all", "7", "3,5", "sneaker" or a list -> class indices."""
    if isinstance(spec, str):
        if spec.strip() == "all":
            if not class_names(run):
                class_index(run, 0)  # raises: unconditional
            return list(range(len(class_names(run))))
        spec = [s for s in spec.split(",") if s.strip()]
    if not spec:
        raise ConfigError("--class names no class: give an index, a name, a list (3,5) or 'all'")
    return [class_index(run, s) for s in spec]


def data_labels(run: LoadedRun, n: int, seed: int = 0) -> torch.Tensor:
    """n class labels in the training set's class proportions (`data.class_counts`), in random order:
    a class-conditional run's samples with the data's mix of classes, as FID of conditional models
    is measured. The counts are split by largest remainders (n = 1000 over 9 classes: each class
    within one image of its share), so the mix carries no sampling noise; the order comes from
    numpy's generator seeded [seed, 1], apart from the noise's torch generator."""
    class_index(run, 0)  # raises for an unconditional run
    counts = np.asarray(run.cfg.data.class_counts, dtype=np.float64)
    if not len(counts) or counts.sum() == 0:
        raise ConfigError(f"{run.run_dir or 'this run'}'s config has no data.class_counts (runs record them "
                          "since ddpmkit 0.3): use --class all, or retrain")  # fmt: skip
    share = counts / counts.sum() * n
    k = np.floor(share).astype(np.int64)
    k[np.argsort(-(share - k), kind="stable")[: n - int(k.sum())]] += 1  # largest remainders
    y = np.repeat(np.arange(len(counts)), k)
    return torch.from_numpy(np.random.default_rng([seed, 1]).permutation(y))


def check_guidance(run: LoadedRun, guidance: float | None, guide: str = "") -> None:
    """The run samples (ConfigError for an autoencoder run), and guidance asked for (not None, not 0)
    needs a class-conditional run, whose null label is what it mixes with, unless a `guide` run
    (autoguidance) is given. (A run's saved guidance is ignored by unconditional sampling.)"""
    check_samples(run)
    if guidance and not guide and not run.cfg.model.num_classes:
        raise ConfigError("guidance needs a class-conditional run (train with --cond class)")


def check_can_inpaint(run: LoadedRun) -> None:
    """RePaint keeps the known values of the model's space exactly: they must be the pixels."""
    if not run.space.can_inpaint:
        raise ConfigError(f"RePaint keeps known values exactly, and a {run.space.name} run's values are "
                          "not pixels (each mixes a patch of them): inpaint with a pixel run")  # fmt: skip


def _w(run: LoadedRun, guidance: float | None) -> float:
    """The guidance weight to use: the one given, else the run's saved one, else DEFAULT_GUIDANCE."""
    return guidance_weight(guidance, run.cfg.sample.guidance)


def _steering_denoiser(run: LoadedRun, options: SampleConfig, cond: dict | None, grid) -> Denoiser:
    """inpaint's and interpolate's denoiser on `grid`: guided by options.guidance towards cond's class
    (classifier-free), or away from the weak run options.guide (autoguidance), after the checks."""
    check_guidance(run, options.guidance, guide=options.guide)
    w = _w(run, options.guidance)
    check_null_label(run, labelled(cond), w, options.guide)
    options = dataclasses.replace(options, guidance=w)
    return Denoiser(run.model, run.diffusion, clip=clip_range(run, options), guidance=w,
                    guide=guide_for(run, options)).respace(grid)  # fmt: skip


# ----- inpainting ----------------------------------------------------------------------------------------
def inpaint(
    run: LoadedRun,
    known: torch.Tensor,
    fill: torch.Tensor,
    *,
    steps: int = 100,
    jump_length: int = 10,
    resample: int = 5,
    cond: dict | None = None,
    guidance: float | None = None,
    guide: str = "",
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022) on a `steps`-step process: known (N, *D) in model space, fill
    broadcastable to it (True where the model draws). The output equals `known` where fill is False.
    `guide` names a weaker run that guides (autoguidance, weight `guidance`).
    Costs about steps * resample model calls per image (`samplers.repaint.repaint_nfe`)."""
    if not steps >= 1 or not jump_length >= 1 or not resample >= 1:
        raise ConfigError(
            f"steps, jump length and resample must be >= 1, got {steps}, {jump_length}, {resample}"
        )
    check_samples(run)
    check_can_inpaint(run)
    grid = sampling_timesteps(run.diffusion, min(steps, run.diffusion.num_timesteps))
    options = dataclasses.replace(run.cfg.sample, guidance=guidance, guide=guide)
    denoiser = _steering_denoiser(run, options, cond, grid)
    keep = (~fill.bool()).to(known.dtype).expand_as(known)
    g = torch.Generator().manual_seed(seed)
    out, bs = [], batch_size or run.space.sample_batch_size or len(known)
    for s in range(0, len(known), bs):
        x = torch.randn(known[s : s + bs].shape, generator=g)
        dev = run.device
        part = batch_cond(cond, s, len(x), len(known), dev)
        out.append(repaint_sample(denoiser, x.to(dev), known=known[s : s + bs].to(dev),
                                  keep=keep[s : s + bs].to(dev), jump_length=jump_length, resample=resample,
                                  cond=part, generator=g, progress=progress).cpu())  # fmt: skip
    return torch.cat(out)


# ----- image-to-image ------------------------------------------------------------------------------------
def start_step(run: LoadedRun, strength: float) -> int:
    """SDEdit's starting timestep for `strength` in (0, 1]: round(strength * T) - 1, at least 0."""
    check_unit("strength", strength, include_one=True)
    return max(0, round(strength * run.diffusion.num_timesteps) - 1)


def edit(
    run: LoadedRun,
    x0: torch.Tensor,
    strength: float,
    options: SampleConfig | None = None,
    *,
    cond: dict | None = None,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise x0 (model space) to the level `strength` of the way to pure
    noise and denoise it with the run's sampler, on `options.steps` steps over that shorter way (the
    steps are not cut in proportion). Strength 0 returns x0; strength 1 is a fresh sample
    (`generate` with the same seed). `options.guide` names a run that guides (autoguidance)."""
    options = options or run.cfg.sample
    check_samples(run)  # a SampleConfig's guidance is ignored by unconditional runs, as by `generate`
    options = dataclasses.replace(options, guidance=_w(run, options.guidance))
    check_null_label(run, labelled(cond), options.guidance, options.guide)
    start = start_step(run, strength)
    if strength == 0:
        return x0.clone()
    if strength == 1:
        return generate(run, len(x0), options, seed=seed, cond=cond, progress=progress)[0]
    g = torch.Generator().manual_seed(seed)
    part = batch_cond(cond, 0, len(x0), len(x0), run.device)
    return sdedit(run.model, run.diffusion, x0.to(run.device), start, options, generator=g,
                  clip=clip_range(run, options), cond=part, guide=guide_for(run, options)).cpu()  # fmt: skip


def edit_model_calls(run: LoadedRun, strength: float, options: SampleConfig, guided: bool = False) -> int:
    """Model calls per image of `edit` at `strength` (0 at strength 0); `guided`: with a class."""
    from .samplers import nfe

    if strength == 0:
        return 0
    steps = len(sampling_timesteps(run.diffusion, options.steps, start_step(run, strength)))
    calls = nfe(dataclasses.replace(options, steps=steps), run.diffusion.num_timesteps)
    return calls * (2 if guided and _w(run, options.guidance) != 0 else 1)


# ----- interpolation -------------------------------------------------------------------------------------
def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per row between a and b (N, *D) at weights w (K,) -> (K, N, *D):
    Gaussian noises keep their norm along it, which a straight line would shrink (Shoemake 1985)."""
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[None]  # (1, N)
    w = w[:, None]
    sin = torch.sin(theta)
    lerp = sin < 1e-6  # parallel vectors: linear interpolation is exact
    wa = torch.where(lerp, 1 - w, torch.sin((1 - w) * theta) / sin.clamp(min=1e-12))
    wb = torch.where(lerp, w, torch.sin(w * theta) / sin.clamp(min=1e-12))
    shape = (*wa.shape, *[1] * (a.dim() - 1))
    return wa.view(shape) * a[None] + wb.view(shape) * b[None]


def interpolate(
    run: LoadedRun,
    frames: int = 8,
    *,
    seeds: tuple[int, int] = (0, 1),
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
    steps: int | None = None,
    cond: dict | None = None,
    guidance: float | None = None,
    guide: str = "",
    progress: bool = False,
) -> torch.Tensor:
    """`frames` samples (frames, *D) along the great circle between two noises: those of `seeds`,
    or the DDIM inversions of two images (model space, (1, *D) each); decoded with deterministic
    DDIM on `steps` steps (default the run's), so each frame depends only on its noise. `guide`
    names a weaker run that guides (autoguidance, weight `guidance`)."""
    if frames < 2:
        raise ConfigError(f"interpolation needs at least 2 frames, got {frames}")
    options = dataclasses.replace(run.cfg.sample, sampler="ddim", eta=0.0, grid=None,
                                  steps=run.cfg.sample.steps if steps is None else steps,
                                  guidance=guidance, guide=guide)  # fmt: skip
    grid = sampling_timesteps(run.diffusion, options.steps)
    denoiser = _steering_denoiser(run, options, cond, grid)
    if images is None:
        ends = [torch.randn((1, *run.data_shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
    else:
        ends = [
            ddim_invert(denoiser, im.to(run.device), cond=batch_cond(cond, 0, 1, 1, run.device)).cpu()
            for im in images
        ]
    z = slerp(ends[0], ends[1], torch.linspace(0, 1, frames))[:, 0]  # (frames, *D)
    return ddim_sample(
        denoiser, z.to(run.device), cond=batch_cond(cond, 0, frames, frames, run.device), progress=progress
    ).cpu()
