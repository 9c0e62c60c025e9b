"""Typed, frozen configuration dataclasses: one per concern, saved as JSON beside every checkpoint.

Precedence when the CLI builds a run: dataclass defaults < preset / JSON file < command-line flags.
Every option that has a fixed set of values is checked against the same tuple that feeds argparse
`choices=` and the error text, so the three never drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .diffusion import LOSSES, OBJECTIVES, VARIANCES
from .errors import ConfigError
from .schedules import SCHEDULES

MODEL_KINDS = ("auto", "mlp", "unet")
BLOCKS = ("resnet", "convnext")
ATTENTIONS = ("full", "linear")
OPTIMIZERS = ("adamw", "adam")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
ON_NAN = ("stop", "skip")
SAMPLERS = ("ddpm", "ddim")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process: beta schedule, T, what the model predicts, loss and reverse variance."""

    schedule: str = "linear"
    timesteps: int = 1000
    objective: str = "eps"
    loss: str = "l2"
    variance: str = "fixed_small"

    def __post_init__(self):
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("objective", self.objective, OBJECTIVES)
        _choice("loss", self.loss, LOSSES)
        _choice("variance", self.variance, VARIANCES)
        if self.timesteps < 1:
            raise ConfigError(f"the number of diffusion steps T must be >= 1, got {self.timesteps}")


@dataclass(frozen=True)
class ModelConfig:
    """Network hyper-parameters. `kind="auto"` picks the MLP for points and the U-Net for images."""

    kind: str = "auto"
    # MLP (points)
    hidden: int = 256
    depth: int = 3
    emb_dim: int = 128
    input_scale: float = 25.0  # sinusoidal features of the input coordinates (0 = raw coordinates)
    # U-Net (images)
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.0
    block: str = "resnet"
    attention: str = "full"
    num_groups: int = 8

    def __post_init__(self):
        _choice("model kind", self.kind, MODEL_KINDS)
        _choice("block", self.block, BLOCKS)
        _choice("attention", self.attention, ATTENTIONS)
        for name in ("hidden", "depth", "emb_dim", "base_channels", "num_res_blocks", "num_groups"):
            _positive(f"model.{name}", getattr(self, name))
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"model.channel_mult must be positive integers, got {self.channel_mult}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DataConfig:
    """What to train on. `dataset` is a point set name, a CSV path, an image set or `folder:PATH`."""

    dataset: str = "dino"
    data_dir: str | None = None
    num_points: int = 8000  # points drawn from a 2-D distribution for training
    image_size: int | None = None
    channels: int | None = None
    hflip: bool = False
    download: bool = False
    mirror: str | None = None

    def __post_init__(self):
        if not self.dataset:
            raise ConfigError("dataset must not be empty")
        _positive("data.num_points", self.num_points)
        if self.image_size is not None:
            _positive("data.image_size", self.image_size)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {self.channels}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, EMA, logging and checkpointing. `steps` counts optimizer updates in total."""

    steps: int = 10000
    epochs: float = 0.0  # > 0 overrides steps: steps = ceil(epochs * N / batch_size)
    max_minutes: float = 0.0  # wall-clock budget, 0 = none
    batch_size: int = 256  # global batch (all processes, all accumulation micro-batches)
    micro_batch: int = 0  # per-process forward/backward size, 0 = the whole per-process batch
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm, 0 = off
    ema_decay: float = 0.995
    seed: int = 0
    log_every: int = 50
    preview_every: int = 0  # images: sample a preview grid every N steps (few-step DDIM), 0 = off
    checkpoint_every: int = 0  # 0 = only at the end (and on interruption)
    keep_last: int = 2
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False  # images: NHWC memory format (+12% training images/s measured on CPU)
    on_nan: str = "stop"
    threads: int = 0  # torch intra-op threads, 0 = PyTorch's default
    tensorboard: bool = False
    eval_every: int = 0  # images: classifier-feature FID every N steps; keeps the best weights
    eval_samples: int = 256  # samples per FID evaluation
    eval_steps: int = 50  # sampling steps of previews and FID samples (the run's sampler)
    eval_cache_dir: str | None = None  # classifier cache (default: `ddpm train-classifier`'s)

    def __post_init__(self):
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("on_nan", self.on_nan, ON_NAN)
        for name in ("steps", "batch_size", "lr", "log_every", "keep_last", "eval_samples", "eval_steps"):
            _positive(f"train.{name}", getattr(self, name))
        for name in (
            "epochs",
            "max_minutes",
            "micro_batch",
            "weight_decay",
            "warmup_steps",
            "grad_clip",
            "preview_every",
            "checkpoint_every",
            "threads",
        ):
            _positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for sampling at the end of training and in `ddpm sample`."""

    sampler: str = "ddpm"
    steps: int | None = None  # None = all T steps
    eta: float = 0.0
    num_samples: int = 2000
    clip: bool | None = None  # clip predicted x0 to [-1, 1]; None = auto (on for images)

    def __post_init__(self):
        _choice("sampler", self.sampler, SAMPLERS)
        if self.steps is not None:
            _positive("sample.steps", self.steps)
        _positive("sample.num_samples", self.num_samples)
        if self.eta < 0:
            raise ConfigError(f"eta must be >= 0, got {self.eta}")


@dataclass(frozen=True)
class RunConfig:
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str | None = None

    def __post_init__(self):
        if self.sample.steps is not None and self.sample.steps > self.diffusion.timesteps:
            raise ConfigError(f"sample.steps={self.sample.steps} exceeds T={self.diffusion.timesteps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from .checkpoint import atomic_write_text  # noqa: PLC0415 (checkpoint imports config)

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        return cls.from_dict(d)


def _from_dict(cls, d: dict[str, Any]):
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value)
        else:
            kwargs[name] = _coerce(value, tp, name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a JSON value or a command-line string to the annotated type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    try:
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_coerce(v, args[0], name) for v in items if str(v).strip() != "")
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None


def override(cfg: RunConfig, updates: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides, e.g. {"train.lr": "1e-3", "diffusion.timesteps": 100}."""
    d = cfg.to_dict()
    for key, value in updates.items():
        section, _, name = key.partition(".")
        if section not in d or not isinstance(d[section], dict) or name not in d[section]:
            raise ConfigError(f"unknown option {key!r}")
        d[section][name] = value
    return RunConfig.from_dict(d)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (patch wins), for presets on top of defaults."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def option_fields() -> list[tuple[str, Any, Any]]:
    """(dotted name, type, default) of every option, to generate command-line flags."""
    out = []
    for section in fields(RunConfig):
        tp = typing.get_type_hints(RunConfig)[section.name]
        if not is_dataclass(tp):
            continue
        hints = typing.get_type_hints(tp)
        for f in fields(tp):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((f"{section.name}.{f.name}", hints[f.name], default))
    return out
