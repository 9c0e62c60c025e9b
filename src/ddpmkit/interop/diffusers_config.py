"""diffusers' config dicts <-> ddpmkit's config sections, as plain dict mapping (no files, no weights).

A DDPM/DDIMScheduler config maps onto the DiffusionConfig exactly where the math is the same: betas by
diffusers' own formulas in float32 (a named ddpmkit schedule when they agree to float32 rounding, else
explicit `diffusion.betas`), prediction_type -> objective, variance_type -> variance, clip_sample /
thresholding -> the sample section; a UNet2DModel config maps onto the `diffusers_unet` model section.
`interop.diffusers` reads and writes the folders.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..model_config import DIFFUSERS_BLOCKS, DiffusersUNetConfig
from ..schedules import MAX_BETA, make_beta_schedule

OBJECTIVES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}  # prediction_type -> objective
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
             "fixed_large_log": "fixed_large", "learned_range": "learned_range"}  # fmt: skip
EXPORT_VARIANCES = {
    "fixed_small": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_range": "learned_range",
}
NAMED = {
    "linear": "linear",
    "scaled_linear": "quadratic",
    "squaredcos_cap_v2": "cosine",
    "sigmoid": "sigmoid",
}
# UNet2DModel options that are fixed by the run (data shape, variance, labels) or not DDPM's
RUN_KEYS = ("sample_size", "in_channels", "out_channels", "num_class_embeds", "class_embed_type",
            "time_embedding_type", "num_train_timesteps")  # fmt: skip


class InteropError(CheckpointError):
    """A diffusers folder ddpmkit cannot read, or a run it cannot export."""


# ----- scheduler config <-> DiffusionConfig ------------------------------------------------------------
def diffusers_betas(sched: dict[str, Any]) -> np.ndarray:
    """The betas a DDPM/DDIMScheduler config gives, computed as diffusers does (float32), as float64."""
    T = int(sched.get("num_train_timesteps", 1000))
    if sched.get("trained_betas") is not None:
        betas = torch.tensor(sched["trained_betas"], dtype=torch.float32)
        if len(betas) != T:
            raise InteropError(f"scheduler: {len(betas)} trained_betas for num_train_timesteps={T}")
        return betas.double().numpy()
    name = sched.get("beta_schedule", "linear")
    b0, b1 = float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02))
    if name == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float32)
    elif name == "scaled_linear":  # linear in sqrt(beta)
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
    elif name == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (b1 - b0) + b0
    elif name == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, Eq. 17, beta capped at 0.999

        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), MAX_BETA) for i in range(T)],
                             dtype=torch.float32)  # fmt: skip
    else:
        raise InteropError(f"scheduler: unknown beta_schedule {name!r}; ddpmkit maps {', '.join(NAMED)} and "
                           "trained_betas")  # fmt: skip
    return betas.double().numpy()


def diffusion_section(
    sched: dict[str, Any], out_channels: int, in_channels: int
) -> tuple[dict, dict, list[str]]:
    """(diffusion section, sample section, notes) for a scheduler config."""
    notes = []
    if sched.get("rescale_betas_zero_snr"):
        raise InteropError("scheduler: rescale_betas_zero_snr is not supported (ddpmkit's schedules keep "
                           "alpha_bar_T > 0)")  # fmt: skip
    betas = diffusers_betas(sched)
    T = len(betas)
    named = NAMED.get(sched.get("beta_schedule", "linear")) if sched.get("trained_betas") is None else None
    diffusion: dict[str, Any] = {"timesteps": T}
    if named and np.allclose(make_beta_schedule(named, T), betas, rtol=1e-6, atol=0):
        diffusion["schedule"] = named  # the same betas to float32 rounding
    else:
        diffusion.update(schedule="custom", betas=[float(b) for b in betas])
    pred = sched.get("prediction_type", "epsilon")
    if pred not in OBJECTIVES:
        raise InteropError(
            f"scheduler: unknown prediction_type {pred!r}; ddpmkit maps {', '.join(OBJECTIVES)}"
        )
    diffusion["objective"] = OBJECTIVES[pred]
    variance = sched.get("variance_type") or "fixed_small"
    if variance == "learned":
        raise InteropError("scheduler: variance_type learned is the variance itself in diffusers and its log "
                           "in ddpmkit; only learned_range maps (Improved DDPM's interpolation)")  # fmt: skip
    if variance not in VARIANCES:
        raise InteropError(f"scheduler: unknown variance_type {variance!r}")
    diffusion["variance"] = VARIANCES[variance]
    if variance == "fixed_large_log":
        notes.append("variance_type fixed_large_log sampled with variance beta_t (fixed_large)")
    if (out_channels == 2 * in_channels) != (variance == "learned_range"):
        raise InteropError(f"the U-Net outputs {out_channels} channels for {in_channels} in, which does not "
                           "fit "
                           f"variance_type {variance}")  # fmt: skip
    if variance == "learned_range":
        diffusion["loss"] = "hybrid"  # the loss that trains it, should the run be trained further
    sample: dict[str, Any] = {"clip": bool(sched.get("clip_sample", True))}
    if sample["clip"] and float(sched.get("clip_sample_range", 1.0)) != 1.0:
        notes.append(f"clip_sample_range {sched['clip_sample_range']}: ddpmkit clips predicted x0 to the "
                     "image range [-1, 1]")  # fmt: skip
    if sched.get("thresholding"):
        sample["threshold"] = float(sched.get("dynamic_thresholding_ratio", 0.995))
        notes.append(f"thresholding: dynamic thresholding at percentile {sample['threshold']} "
                     f"(sample_max_value {sched.get('sample_max_value', 1.0)} not mapped)")  # fmt: skip
    for key in ("timestep_spacing", "steps_offset"):
        if key in sched:
            notes.append(f"{key} {sched[key]!r} not used: ddpmkit's samplers choose their own time grids")
    return diffusion, sample, notes


def scheduler_config(cfg: RunConfig) -> dict[str, Any]:
    """A DDPMScheduler config faithful to the run's diffusion: a diffusers beta_schedule where it gives
    the same betas (T = 1000, or the cosine at any T), else the betas themselves."""
    d = cfg.diffusion
    if d.variance not in EXPORT_VARIANCES:
        raise InteropError(f"variance {d.variance} has no diffusers equivalent (diffusers' learned is the "
                           "variance itself, ddpmkit's its log)")  # fmt: skip
    if d.objective not in OBJECTIVES.values():
        raise InteropError(f"objective {d.objective} (a consistency student) has no diffusers scheduler")
    objective = {v: k for k, v in OBJECTIVES.items()}[d.objective]
    out = {"num_train_timesteps": d.timesteps, "prediction_type": objective,
           "variance_type": EXPORT_VARIANCES[d.variance], "clip_sample": cfg.sample.clip is not False,
           "clip_sample_range": 1.0, "timestep_spacing": "trailing"}  # fmt: skip
    if d.schedule == "cosine":
        return {**out, "beta_schedule": "squaredcos_cap_v2"}
    if d.schedule in ("linear", "quadratic") and d.timesteps == 1000:  # ddpmkit rescales them for T != 1000
        return {**out, "beta_schedule": "linear" if d.schedule == "linear" else "scaled_linear",
                "beta_start": 1e-4, "beta_end": 0.02}  # fmt: skip
    from ..schedules import schedule_betas

    return {**out, "trained_betas": [float(b) for b in schedule_betas(d)]}


# ----- unet config <-> model section -------------------------------------------------------------------
def unet_shape(unet: dict[str, Any]) -> tuple[int, int, int]:
    """The data shape (C, S, S) a UNet2DModel config draws."""
    size = unet.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise InteropError(f"unet: sample_size {size}: ddpmkit's images are square")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise InteropError(f"unet: sample_size must be the image side, got {size!r}")
    return int(unet.get("in_channels", 3)), size, size


def model_section(unet: dict[str, Any], null_label: bool) -> tuple[dict, tuple[int, int, int], list[str]]:
    """(model section, data shape (C, S, S), notes) for a UNet2DModel config."""
    shape = unet_shape(unet)
    if unet.get("time_embedding_type", "positional") != "positional":
        kind = unet["time_embedding_type"]
        raise InteropError(f"unet: time_embedding_type {kind!r} is not a DDPM's (score-"
                           "SDE models use fourier); ddpmkit imports positional")  # fmt: skip
    if unet.get("class_embed_type") is not None:
        kind = unet["class_embed_type"]
        raise InteropError(f"unet: class_embed_type {kind!r}: ddpmkit imports class labels "
                           "through num_class_embeds only")  # fmt: skip
    for side in ("down", "up"):
        bad = [b for b in unet.get(f"{side}_block_types", ()) if b not in DIFFUSERS_BLOCKS[side]]
        if bad:
            raise InteropError(f"unet: unknown {side} block type {bad[0]}; ddpmkit maps "
                               f"{', '.join(DIFFUSERS_BLOCKS[side])}")  # fmt: skip
    names = {f.name for f in dataclasses.fields(DiffusersUNetConfig)}
    section = {k: v for k, v in unet.items() if k in names}
    unknown = sorted(k for k in unet if not k.startswith("_") and k not in names and k not in RUN_KEYS)
    notes = [
        f"unet: option {k}={unet[k]!r} unknown to ddpmkit, left at UNet2DModel's default" for k in unknown
    ]
    embeds = unet.get("num_class_embeds") or 0
    if embeds and null_label and embeds < 2:
        raise InteropError("--null-label needs a class embedding with 2 rows or more")
    num_classes = embeds - int(null_label) if embeds else 0
    section["null_label"] = null_label
    try:
        DiffusersUNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
    except (ConfigError, TypeError) as e:
        raise InteropError(f"unet: {e}") from None
    model = {"kind": "diffusers_unet", "num_classes": num_classes, "diffusers_unet": section}
    return model, shape, notes
