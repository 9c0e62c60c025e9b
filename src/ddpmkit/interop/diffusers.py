"""diffusers pipelines <-> ddpmkit runs: `import_pipeline` turns a `DDPMPipeline` / `DDIMPipeline`
folder (model_index.json, unet/, scheduler/) into a run directory, `export_run` writes a run whose
network is `diffusers_unet` as a folder `DDPMPipeline.from_pretrained` loads.

The scheduler config maps onto the DiffusionConfig exactly where the math is the same: betas by
diffusers' own formulas in float32 (a named ddpmkit schedule when they agree to float32 rounding,
else explicit `diffusion.betas`), prediction_type -> objective, variance_type -> variance,
clip_sample / thresholding -> the sample section. What has no ddpmkit meaning (timestep_spacing,
steps_offset: ddpmkit's samplers bring their own time grids) is noted, never silently dropped.
Weights come from safetensors only; nothing is downloaded unless asked for (`hub_snapshot`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, SampleConfig
from ..errors import CheckpointError, ConfigError, OutputError
from ..io import atomic_write_text, fsync_dir, umask
from ..model_config import DIFFUSERS_BLOCKS, DiffusersUNetConfig
from ..schedules import MAX_BETA, make_beta_schedule

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
OBJECTIVES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}  # prediction_type -> objective
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
             "fixed_large_log": "fixed_large", "learned_range": "learned_range"}  # fmt: skip
EXPORT_VARIANCES = {
    "fixed_small": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_range": "learned_range",
}
WEIGHTS = "diffusion_pytorch_model.safetensors"
MARKER = "ddpmkit.json"  # what `export_run` adds: the run's own config (diffusers ignores the file)
IMPORTED = "imported.json"  # what `import_pipeline` adds to the run: source, configs and notes
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


# ----- reading a folder ------------------------------------------------------------------------------
@dataclass
class PipelineFolder:
    root: Path
    pipeline: str
    unet: dict[str, Any]
    scheduler: dict[str, Any]
    ddpmkit: dict[str, Any] | None = None  # the run config, when ddpmkit exported the folder


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        where = path.relative_to(path.parent.parent)
        raise InteropError(f"{path.parent.parent}: not a diffusers pipeline folder ({where} "
                           "is missing)")  # fmt: skip
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"cannot read {path}: {e}") from None
    if not isinstance(d, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return d


def read_folder(root: str | Path) -> PipelineFolder:
    """Check a pipeline folder's layout and classes; InteropError with the one thing that is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise InteropError(f"{root}: no such folder")
    index = _json(root / "model_index.json") if (root / "model_index.json").is_file() else None
    if index is None:
        raise InteropError(f"{root}: not a diffusers pipeline folder (no model_index.json)")
    pipeline = str(index.get("_class_name"))
    if pipeline not in PIPELINES:
        raise InteropError(f"{root}: a {pipeline}; ddpmkit imports {' and '.join(PIPELINES)} folders (an "
                           "image "
                           "U-Net and a DDPM/DDIM scheduler)")  # fmt: skip
    unet, sched = _json(root / "unet" / "config.json"), _json(root / "scheduler" / "scheduler_config.json")
    if unet.get("_class_name") != "UNet2DModel":
        raise InteropError(f"{root}/unet: a {unet.get('_class_name')}; ddpmkit imports UNet2DModel")
    if sched.get("_class_name") not in SCHEDULERS:
        raise InteropError(f"{root}/scheduler: unknown scheduler {sched.get('_class_name')}; ddpmkit maps "
                           f"{', '.join(SCHEDULERS)}")  # fmt: skip
    if not (root / "unet" / WEIGHTS).is_file():
        bins = sorted(p.name for p in (root / "unet").glob("*.bin"))
        why = (f"it holds only {', '.join(bins)}: a .bin is a pickle, which can run code when loaded; "
               "convert it to safetensors where you trust it") if bins else "no weights file"  # fmt: skip
        raise InteropError(f"{root}/unet: no {WEIGHTS} ({why})")
    marker = _json(root / MARKER) if (root / MARKER).is_file() else None
    return PipelineFolder(root, pipeline, unet, sched, marker)


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


# ----- import ---------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    run_dir: Path
    cfg: RunConfig
    notes: list[str] = field(default_factory=list)


def run_config(
    folder: PipelineFolder, *, dataset: str | None, null_label: bool | None, data_dir: str | None = None
) -> tuple[RunConfig, list]:
    """The RunConfig of an imported folder: the exported run's own when ddpmkit wrote it, else built
    from its unet and scheduler configs (sampling: ddpmkit's default image sampler)."""
    if folder.ddpmkit is not None:  # ddpmkit exported it: its own config, data overridable
        try:
            cfg = RunConfig.from_dict(folder.ddpmkit)
            flags = {k: v for k, v in (("data.dataset", dataset), ("data.data_dir", data_dir)) if v}
            return cfg.replace(**flags), ["ddpmkit.json: the exported run's own config"]
        except ConfigError as e:
            raise InteropError(f"{folder.root / MARKER}: {e}") from None
    model, shape, notes = model_section(folder.unet, bool(null_label))
    out_channels = int(folder.unet.get("out_channels", shape[0]))
    diffusion, sample, more = diffusion_section(folder.scheduler, out_channels, shape[0])
    images = RunConfig.from_preset("images").sample  # the default image sampler and steps
    sample = {**dataclasses.asdict(SampleConfig(sampler=images.sampler, steps=images.steps)), **sample}
    if model["num_classes"] and not null_label:
        sample["guidance"] = 0.0  # guidance needs the null label
    d = {"diffusion": diffusion, "model": model, "sample": sample,
         "data": {"dataset": dataset or "imported", "data_dir": data_dir, "image_size": shape[1],
                  "channels": shape[0],
                  "cond": "class" if model["num_classes"] else "none"}}  # fmt: skip
    try:
        cfg = RunConfig.from_dict(d)
    except ConfigError as e:
        raise InteropError(f"{folder.root}: {e}") from None
    if model["num_classes"] and not null_label:
        notes.append("class embedding without a null label: sampling needs --class, and guidance is off "
                     "(--null-label if its last row is one)")  # fmt: skip
    if not dataset:
        notes.append("the training data is unnamed: `ddpm eval --nll` and fine-tuning need it (import with "
                     "--dataset mnist, folder:PATH, ...)")  # fmt: skip
    return cfg, notes + more


def load_unet_weights(folder: PipelineFolder) -> dict[str, torch.Tensor]:
    """The UNet's state dict, read by diffusers from the safetensors file (it renames the attention
    weights of older folders); float32."""
    from ..models.diffusers_unet import require_diffusers

    diffusers = require_diffusers()
    try:
        unet = diffusers.UNet2DModel.from_pretrained(
            folder.root / "unet", use_safetensors=True, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        what = (
            "its weights do not fit its config.json"
            if "state_dict" in lines[0]
            else "diffusers cannot load it"
        )
        raise InteropError(f"{folder.root}/unet: {what}: {' '.join(lines[:2])[:400]}") from None
    return {k: v.float() for k, v in unet.state_dict().items()}


def import_pipeline(source: str | Path, out: str | Path, *, dataset: str | None = None,
                    data_dir: str | None = None, null_label: bool | None = None,
                    overwrite: bool = False) -> ImportResult:  # fmt: skip
    """Write the run directory `out` for the diffusers folder `source` (config.json, model.safetensors
    with its integrity hash, imported.json); every ddpmkit command then works on it."""
    from ..checkpoint import prepare_run_dir, save_model
    from ..data.spaces import space_class
    from ..io import prefixed
    from ..models import build_network

    folder = read_folder(source)
    cfg, notes = run_config(folder, dataset=dataset, null_label=null_label, data_dir=data_dir)
    out = Path(out)
    prepare_run_dir(out, overwrite=overwrite)
    shape = unet_shape(folder.unet)
    model = build_network(cfg, shape)
    state = load_unet_weights(folder)
    try:
        model.load_state_dict(prefixed("net", state))
    except RuntimeError as e:
        lines = str(e).splitlines()
        why = lines[1].strip() if len(lines) > 1 else lines[0]
        raise InteropError(f"{folder.root}/unet: its weights do not fit its config.json: {why}") from None
    space = space_class("images")()
    out.mkdir(parents=True, exist_ok=True)
    tensors = {**prefixed("model", model.state_dict()), "data.shape": torch.tensor(shape), **space.state()}
    save_model(out, cfg, tensors, step=0, space=space.name)  # one weight set: sampling uses it as the EMA
    provenance = {"source": str(Path(source).resolve()), "pipeline": folder.pipeline, "notes": notes,
                  "unet_config": folder.unet, "scheduler_config": folder.scheduler}  # fmt: skip
    atomic_write_text(out / IMPORTED, json.dumps(provenance, indent=2) + "\n")
    return ImportResult(out, cfg, notes)


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Download a Hub repository's JSON and safetensors files (no .bin) with huggingface_hub."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(
            "downloading from the Hub needs huggingface_hub: pip install 'ddpmkit[diffusers]'"
        ) from None
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors"])
    except Exception as e:  # offline, unknown repository, gated: one line
        raise InteropError(f"cannot download {repo_id} from the Hub: {str(e).splitlines()[0]}") from None
    return Path(path)


# ----- export ---------------------------------------------------------------------------------------
def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run's EMA network and diffusion as a DDPMPipeline folder at `out` (atomically: built
    beside it, then renamed); a folder there is replaced only if ddpmkit exported it and `overwrite`."""
    from ..models.diffusers_unet import require_diffusers
    from ..run import check_samples, load_run

    run = load_run(run_dir)
    check_samples(run)
    if run.cfg.model.kind != "diffusers_unet":
        kind = run.cfg.model.kind
        raise InteropError(f"{run_dir}: its network is ddpmkit's {kind}, which has no UNet2DModel "
                           "equivalent (patch folding, its own block layout): train with --model.kind "
                           "diffusers_unet to export")  # fmt: skip
    if run.space.name != "images":
        raise InteropError(f"{run_dir}: a {run.space.name} run; a DDPMPipeline samples pixels")
    sched_cfg = scheduler_config(run.cfg)
    out = Path(out)
    if out.exists() and not (overwrite and (out / MARKER).is_file()):
        why = "give --overwrite to replace it" if (out / MARKER).is_file() else "ddpmkit did not write it"
        raise OutputError(f"{out} exists ({why})")
    diffusers = require_diffusers()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; the folder gets the usual mode
        pipe = diffusers.DDPMPipeline(unet=run.model.net, scheduler=diffusers.DDPMScheduler(**sched_cfg))
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(run.cfg.to_json() + "\n")
        fsync_dir(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
