"""diffusers pipelines <-> ddpmkit runs: `import_pipeline` turns a `DDPMPipeline` / `DDIMPipeline`
folder (model_index.json, unet/, scheduler/) into a run directory, `export_run` writes a run whose
network is `diffusers_unet` as a folder `DDPMPipeline.from_pretrained` loads.

How the configs map (scheduler -> DiffusionConfig, UNet2DModel -> the `diffusers_unet` section) is
`interop.diffusers_config`; what has no ddpmkit meaning (timestep_spacing, steps_offset: ddpmkit's
samplers bring their own time grids) is noted, never silently dropped.
Weights come from safetensors only; nothing is downloaded unless asked for (`hub_snapshot`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, SampleConfig
from ..errors import ConfigError, OutputError
from ..io import atomic_write_text, fsync_dir, umask
from .diffusers_config import (  # noqa: F401 (re-exported)
    InteropError,
    diffusers_betas,
    diffusion_section,
    model_section,
    scheduler_config,
    unet_shape,
)

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
WEIGHTS = "diffusion_pytorch_model.safetensors"
MARKER = "ddpmkit.json"  # what `export_run` adds: the run's own config (diffusers ignores the file)
IMPORTED = "imported.json"  # what `import_pipeline` adds to the run: source, configs and notes


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
