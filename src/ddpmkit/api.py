"""The functions a notebook or script calls: `train` a run and get it back loaded, `load_run`,
and `sample` from it. The CLI is a thin layer over these.

    import ddpmkit
    run = ddpmkit.train("dino", "runs/dino", train={"steps": 2000})
    x = ddpmkit.sample(run, 500, sampler="ddim", steps=50)   # (500, 2) in the data's coordinates
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import samplers
from .config import RunConfig, SampleConfig, load_preset, merge, override, preset_names
from .data import preset_for
from .denoiser import guidance_weight
from .errors import ConfigError
from .eval.during_training import FIDCallback
from .run import LoadedRun, generate, load_run
from .training import train as train_loop
from .training.loop import Callback, resolve_device


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<dataset> (the file stem of a CSV or folder); an autoencoder run adds -ae, a latent run
    -latent, so that the two halves of latent diffusion never share a directory."""
    suffix = "-ae" if cfg.train.task == "autoencoder" else "-latent" if cfg.data.space == "latent" else ""
    return Path("runs") / (Path(cfg.data.dataset.replace("folder:", "")).stem + suffix)


def build_config(
    *,
    config_file: str | Path | None = None,
    preset: str | None = None,
    flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """defaults < preset (or a config file; a preset given too goes on top of it) < dotted flags.
    With neither, the preset is the dataset's own (`data.preset_for`)."""
    flags = dict(flags or {})
    if not config_file:
        return RunConfig.from_preset(preset or preset_for(flags.get("data.dataset", "dino")), flags)
    d = RunConfig.from_json(config_file).to_dict()
    if preset:
        d = merge(merge(d, load_preset(preset)), {"preset": preset})
    return override(RunConfig.from_dict(d), flags)


def _dotted(sections: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}, "model": {"unet": {...}}} -> {"train.lr": 1e-3, "model.unet....": ...}."""
    out: dict[str, Any] = {}
    for k, v in sections.items():
        out.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def config_for(
    preset_or_cfg: RunConfig | str, overrides: Mapping[str, Any] | None = None, **sections
) -> RunConfig:
    """A RunConfig from a preset name, a dataset name (its preset) or a RunConfig, with dotted
    `overrides` and per-section `sections` (train={"steps": 500}) on top."""
    flags = {**_dotted(sections), **dict(overrides or {})}
    if isinstance(preset_or_cfg, RunConfig):
        return preset_or_cfg.replace(**flags)
    if preset_or_cfg in preset_names():
        return build_config(preset=preset_or_cfg, flags=flags)
    return build_config(flags={"data.dataset": preset_or_cfg, **flags})


def sample_options(run_cfg: RunConfig, **flags: Any) -> SampleConfig:
    """The run's saved sample options with `flags` on top (sampler=, steps= an int or "all", grid=,
    eta=, clip=, threshold=), checked against the run's T. A sampler other than the saved one
    takes its own default grid unless `grid` is given: the saved grid was chosen for the saved sampler."""
    T = run_cfg.diffusion.timesteps
    if flags.get("sampler", run_cfg.sample.sampler) != run_cfg.sample.sampler:
        flags.setdefault("grid", None)
    steps = flags.get("steps")
    if steps == "all":
        flags["steps"] = None
    elif steps is not None and steps > T:
        raise ConfigError(f"--steps {steps} exceeds the model's T={T}")
    elif steps is not None and steps < 1:
        raise ConfigError(f"--steps must be between 1 and T={T}, got {steps}")
    return dataclasses.replace(run_cfg.sample, **flags)


def sample_guidances(options: SampleConfig, weights: Sequence[float] | None = None) -> list[float]:
    """The guidance weights of a class-conditional sweep: `weights` as asked for, else the one weight
    of `options` (the run's saved one, else the default)."""
    chosen = weights if weights is not None else [options.guidance]
    return [guidance_weight(w) for w in chosen]  # each validated before any sampling


def sample_notes(
    run_cfg: RunConfig, options: SampleConfig, flags: Mapping[str, Any], *, classes: bool = False
) -> list[str]:
    """One line for each option asked for that will not do what a user may expect of it: `flags` are
    those given to `sample_options` (which made `options`), `classes` whether the samples are of given
    classes. An eta the sampler does not take, a learned variance it does not use, guidance without
    a class to steer towards."""
    notes = []
    if "eta" in flags and "eta" not in samplers.sampler_options(options.sampler, options):
        notes.append(f"note: --eta is ignored by the {options.sampler} sampler")
    if note := samplers.variance_note(options.sampler, run_cfg.diffusion.variance):
        notes.append(note)
    trained = run_cfg.sample.steps  # a progressive run's config says the steps of the round it reached
    if run_cfg.train.task == "progressive" and (options.sampler, options.steps) != ("ddim", trained):
        notes.append(f"note: this progressive student was distilled for ddim in {trained} steps; "
                     f"{options.sampler} in {options.steps or 'all'} steps samples off its grid")  # fmt: skip
    if "guidance" in flags and not classes and not options.guide:
        notes.append("note: --guidance steers towards a class: add --class (without it, unconditional "
                     "samples)")  # fmt: skip
    return notes


def callbacks_for(cfg: RunConfig) -> list[Callback]:
    """FID during training when train.eval_every asks for it (the run log and previews are
    `ddpmkit.training.default_callbacks`, which the loop always runs)."""
    return [FIDCallback(cfg.train.eval_every)] if cfg.train.eval_every else []


def train(
    cfg: RunConfig | str = "dino",
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    overrides: Mapping[str, Any] | None = None,
    verify: bool = True,
    **sections: Mapping[str, Any],
) -> LoadedRun:
    """Train a run and return it loaded (EMA weights, on the training device).

    Args:
        cfg: a RunConfig, a preset name ("dino", "mnist", ...) or a dataset name (its preset).
        run_dir: where checkpoints go (default runs/<dataset>).
        overrides: dotted overrides, e.g. {"train.lr": 1e-3}.
        **sections: whole sections, e.g. train={"steps": 500}.
        callbacks: extra `cb(event, info)` callbacks beside those the config asks for.
        verify: check the SHA-256 of the checkpoint resumed from and of the weights loaded.
    The loss history is in `run_dir/train_log.csv`; `ddpmkit.training.train` returns it instead.
    """
    cfg = config_for(cfg, overrides, **sections)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    hist = train_loop(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                      callbacks=[*callbacks_for(cfg), *callbacks], verify=verify)  # fmt: skip
    run = load_run(run_dir, device=resolve_device(cfg.train.device), verify=verify)
    run.history = hist
    return run


def distill(
    teacher: str | Path,
    run_dir: str | Path,
    *,
    method: str = "progressive",
    to_steps: int | None = None,
    teacher_steps: int | None = None,
    round_steps: int = 1000,
    guidance: float | None = None,
    guide: str | Path = "",
    overwrite: bool = False,
    progress: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedRun:
    """Distil the run `teacher` into a student in `run_dir` and return it loaded; it samples with its
    own sampler and steps by default (`ddpm distill`; `training.distill.student_config` says what each
    argument does; `guide`: a weaker run that guides the first round's teacher, `ddpm distill --guide`).
    `overrides`: dotted, e.g. {"train.lr": 1e-4, "train.lr_schedule": "linear"}."""
    from .training.distill import check_student_dir, student_config

    check_student_dir(teacher, run_dir)
    cfg = student_config(
        teacher, method, to_steps=to_steps, teacher_steps=teacher_steps, round_steps=round_steps,
        guidance=guidance, guide=str(guide or ""), overrides=dict(overrides or {}),
    )  # fmt: skip
    train_loop(cfg, run_dir, overwrite=overwrite, progress=progress)
    return load_run(run_dir, device=resolve_device(cfg.train.device))


def sample(
    run: LoadedRun | str | Path,
    n: int = 1000,
    *,
    seed: int = 0,
    data_space: bool = True,
    batch_size: int | None = None,
    cond: Mapping[str, Any] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    **options: Any,
) -> np.ndarray | torch.Tensor:
    """n samples of a run (a LoadedRun or a run directory) with its saved sample options, `options`
    (sampler=, steps=, eta=, clip=) on top; in the data's own space (points in their coordinates,
    uint8 NHWC images), or model space with `data_space=False`. Class-conditional runs take labels as
    `cond={"y": labels}`; `steer.data_labels(run, n, seed)` draws them in the training set's class mix
    (`ddpm sample --class data`). See `run.generate` for the rest."""
    run = run if isinstance(run, LoadedRun) else load_run(run)
    x, _ = generate(run, n, seed=seed, batch_size=batch_size, cond=cond, progress=progress, device=device,
                    **options)  # fmt: skip
    return run.space.to_data(x) if data_space else x
