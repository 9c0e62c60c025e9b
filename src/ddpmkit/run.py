"""A trained run, loaded: `load_run(run_dir)` rebuilds the model from config.json +
model.safetensors (no pickle) into a typed `LoadedRun`, and `generate` draws batched, seeded samples
from it (noise -> sampler -> samples), optionally recording the reverse trajectory of the first few
samples for animations and panels."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import MODEL, is_checkpoint_dir, load_checkpoint, load_config
from .config import TASKS, RunConfig, SampleConfig, check_seed
from .data import DataSpace, space_from_state
from .denoiser import guidance_weight, sampling_timesteps
from .diffusion import Cond, GaussianDiffusion, build_diffusion
from .errors import CheckpointError, ConfigError, SamplingError
from .io import load_tensors, network_weights, read_metadata, stored_shape
from .model_config import has_null_label
from .models import build_network
from .progress import bar as progress_bar
from .samplers import sample


def check_samples(run) -> None:
    """ConfigError unless the run's model is a diffusion model (an autoencoder run is not)."""
    if not TASKS[run.cfg.train.task].samples:
        raise ConfigError(f"{run.run_dir or 'this run'} is a run of the {run.cfg.train.task} task, which "
                          "does not sample: train a diffusion model on it (e.g. ddpm train --latent AE_RUN)")


def labelled(cond: Cond | None) -> bool:
    """Whether conditioning holds class labels."""
    return bool(cond and cond.get("y") is not None)


def check_cond(run, cond: Cond | None, n: int) -> None:
    """ConfigError unless `cond` is None or a dict whose labels `y` are integers in 0..num_classes-1,
    one per sample (n) or one for all; checked before any model call."""
    if cond is None:
        return
    if not isinstance(cond, dict):
        raise ConfigError(f"cond must be a dict such as {{'y': labels}}, got {type(cond).__name__}")
    y = cond.get("y")
    if y is None:
        return
    k = run.cfg.model.num_classes
    if not torch.is_tensor(y) or y.is_floating_point() or y.dtype == torch.bool or y.ndim > 1:
        raise ConfigError("cond['y'] must be an integer tensor of class indices (one per sample)")
    if y.ndim == 1 and len(y) not in (1, n):
        raise ConfigError(f"cond['y'] holds {len(y)} labels for {n} samples")
    if y.numel() and k and not (int(y.min()) >= 0 and int(y.max()) < k):
        raise ConfigError(f"class labels must lie in 0..{k - 1}, got {int(y.min())}..{int(y.max())}")


def check_null_label(run, has_labels: bool, guidance: float | None, guide: str = "") -> None:
    """ConfigError where a class-conditional model without a null label (an imported diffusers UNet)
    would need one: samples without labels, or classifier-free guidance (which mixes in the null label's
    output). Guidance by a weak run (`guide`, autoguidance) mixes in that run's output instead."""
    if not run.cfg.model.num_classes or has_null_label(run.cfg.model):
        return
    if not has_labels:
        raise ConfigError("this model's class embedding has no null label: it samples only with class "
                          "labels (--class)")  # fmt: skip
    if guidance and not guide:
        raise ConfigError("classifier-free guidance mixes in the null label, which this model's class "
                          "embedding lacks: use --guidance 0")  # fmt: skip


@dataclass
class LoadedRun:
    """What sampling needs: the config, the (EMA) model in eval mode, the diffusion, the data space."""

    cfg: RunConfig
    model: torch.nn.Module
    diffusion: GaussianDiffusion
    space: DataSpace
    data_shape: tuple[int, ...]
    step: int
    run_dir: Path | None = None
    history: dict[str, Any] | None = None  # the loss history when `ddpmkit.train` returned this run

    @property
    def kind(self) -> str:
        """The data space's name ("points", "images")."""
        return self.space.name

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """The shape of one example in the data's own space (C, H, W): a latent run's images,
        not its latents (`data_shape` is the model's)."""
        return self.space.pixel_shape(self.data_shape)

    @property
    def device(self) -> torch.device:
        params = list(self.model.parameters())
        return params[0].device if params else torch.device("cpu")


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    ema: bool = True,
    weights: str = MODEL,
    verify: bool = True,
) -> LoadedRun:
    """Rebuild the model of a run directory from config.json + model.safetensors (no pickle).

    `weights="best.safetensors"` loads the best-FID weights kept by `train.eval_every`; `verify`
    checks the weights' recorded SHA-256 (CheckpointError naming the file when they changed).
    `run_dir` may also be one of a run's checkpoints (RUN/checkpoints/step-N, e.g. one kept by
    `train.keep_every`): the run's config with that step's weights."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if is_checkpoint_dir(run_dir):
        if weights != MODEL:
            raise ConfigError(f"{run_dir} is a checkpoint: it holds one set of weights, not {weights}")
        root, where = run_dir.parent.parent, run_dir
        tensors, state = load_checkpoint(run_dir, verify=verify)
        space_name = read_metadata(root / MODEL).get("space") if (root / MODEL).is_file() else None
        meta = {"step": state["step"], "space": space_name}
    else:
        root, where = run_dir, run_dir / weights
        if not where.is_file():
            raise CheckpointError(f"{run_dir} holds no checkpoint ({weights}); train it first")
        tensors = load_tensors(where, verify=verify)
        meta = read_metadata(where)
    shape = stored_shape(tensors, where)
    model = build_network(cfg, shape)
    try:
        model.load_state_dict(network_weights(tensors, ema))
    except RuntimeError as e:
        missing = missing_keys(root / "config.json")
        why = f"{root / 'config.json'} lacks {', '.join(missing)}" if missing else str(e).splitlines()[0]
        raise CheckpointError(f"{where} does not match its config: {why}") from None
    model.to(device).eval()
    space = space_from_state(tensors, shape, meta.get("space"), cfg).to(device)
    return LoadedRun(
        cfg=cfg,
        model=model,
        diffusion=build_diffusion(cfg.diffusion, space.decoder),
        space=space,
        data_shape=shape,
        step=int(meta.get("step", 0)),
        run_dir=run_dir,
    )


def missing_keys(config_path: Path) -> list[str]:
    """Options a (hand-edited) config.json leaves out, which loading fills with defaults."""
    from .config import option_fields

    try:
        d = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return []
    out = []
    for name, _, _ in option_fields(RunConfig):
        node = d
        for part in name.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            out.append(name)
    return out


@dataclass
class Trajectory:
    """Frames of the first samples' reverse trajectory (model space): x_t at timestep t and the x0
    predicted from it; the last frame (t = 0) is the final sample."""

    t: list[int] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0_pred: list[torch.Tensor] = field(default_factory=list)


def clip_range(run: LoadedRun, options: SampleConfig) -> tuple[float, float] | None:
    """The predicted-x0 clamp: the data space's range unless `options.clip` says otherwise."""
    clip = options.clip if options.clip is not None else run.space.clip_range is not None
    return (run.space.clip_range or (-1.0, 1.0)) if clip else None


def generate(
    run: LoadedRun,
    n: int,
    options: SampleConfig | None = None,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    cond: Cond | None = None,
    record: int = 0,
    record_frames: int = 50,
    progress: bool = True,
    device: torch.device | str | None = None,
    **overrides: Any,
) -> tuple[torch.Tensor, Trajectory]:
    """Draw n samples in model space: (n, *data_shape) on the CPU.

    Args:
        options: sampler, steps, eta, clip; default the run's saved `sample` section, with
            `overrides` (e.g. `sampler="ddim", steps=50`) applied on top.
        cond: conditioning for all n samples (tensors with n rows are split per batch).
        record: > 0 keeps about `record_frames` frames of the first `record` samples' trajectory.
    The same seed, options and batch size give the same samples on the same machine.
    """
    check_samples(run)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (the number of samples) must be an integer >= 1, got {n!r}")
    check_seed("seed", seed)
    check_cond(run, cond, n)
    options = dataclasses.replace(options or run.cfg.sample, **overrides)
    options = dataclasses.replace(options, guidance=guidance_weight(options.guidance))
    if cond and cond.get("y") is not None and not run.cfg.model.num_classes:
        raise ConfigError("this run is unconditional: class labels need a model trained with --cond class")
    check_null_label(run, labelled(cond), options.guidance, options.guide)
    device = torch.device(device) if device is not None else run.device
    from .autoguide import guide_for  # autoguide imports this module

    guide = guide_for(run, options)
    guide = guide.to(device) if guide is not None else None
    proc_len = len(sampling_timesteps(run.diffusion, options.steps))  # validates steps
    if options.threshold and clip_range(run, options) is None:
        raise ConfigError(f"dynamic thresholding needs a clip range, which {run.space.name} data do not have")
    every = max(1, proc_len // max(1, record_frames))
    batch_size = batch_size or run.space.sample_batch_size or n
    g = torch.Generator(device="cpu").manual_seed(seed)
    traj, out = Trajectory(), []
    bar = progress_bar(
        total=n, desc=f"{options.sampler} sampling", unit="sample", disable=not progress, dynamic_ncols=True
    )
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn((b, *run.data_shape), generator=g).to(device)
        keep = min(record, b) if start == 0 else 0  # trajectories come from the first batch
        state = {"x_t": x[:keep].cpu()}

        def callback(d, keep=keep, state=state):
            # frame: the step's input x_t at timestep t and the x0 the model predicts from it
            if d["i"] % every == 0:
                traj.t.append(d["t"])
                traj.x_t.append(state["x_t"])
                traj.x0_pred.append(d["x0_pred"][:keep].cpu())
            state["x_t"] = d["x_t"][:keep].cpu()

        x0 = sample(
            run.model,
            run.diffusion,
            x,
            options,
            clip=clip_range(run, options),
            cond=batch_cond(cond, start, b, n, device),
            generator=g,
            callback=callback if keep else None,
            guide=guide,
            progress=progress and run.space.step_progress,
        )
        if keep:  # the last frame is the sample itself
            traj.t.append(0)
            traj.x_t.append(x0[:keep].cpu())
            traj.x0_pred.append(x0[:keep].cpu())
        out.append(x0.cpu())
        bar.update(b)
    bar.close()
    x = torch.cat(out)
    bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
    if bad:
        raise SamplingError(
            f"{bad} of {n} samples came out NaN or infinite ({options.sampler}, {options.steps or 'all'} "
            "steps): the weights may be damaged or the sampler options unstable; nothing was written"
        )
    return x, traj


def batch_cond(cond: Cond | None, start: int, b: int, n: int, device) -> dict | None:
    """The rows of `cond` for samples start..start+b (tensors with n rows are split, others shared)."""
    if not cond:
        return None
    return {
        k: (v[start : start + b].to(device) if torch.is_tensor(v) and v.ndim and len(v) == n else v)
        for k, v in cond.items()
    }
