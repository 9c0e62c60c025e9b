"""Typed, frozen configuration dataclasses: one per concern, saved as JSON beside every checkpoint.

Precedence when a run is built: dataclass defaults < preset / JSON file < overrides (CLI flags).
Every option with a fixed set of values has one tuple here, checked by the one `check_choice`
that also writes the error text, and fed to argparse `choices=`: the three never drift apart.
Samplers are an open set: `SAMPLERS` is a `Registry` that `ddpmkit.samplers` fills, and sample
configs are checked against it. Filling them from dicts, presets and dotted overrides is
`config_dicts.py`'s (re-exported here).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import (  # noqa: F401 (re-exported)
    Registry,
    check_choice,
    check_colour,
    check_guidance,
    check_interval,
    check_positive,
    check_range,
    check_seed,
    check_unit,
)
from .coerce import typed
from .config_dicts import (  # noqa: F401 (re-exported)
    from_dict,
    load_preset,
    merge,
    option_fields,
    override,
    preset_names,
    upgrade,
)
from .errors import ConfigError
from .io import atomic_write_text, read_json
from .model_config import (  # noqa: F401 (re-exported: the model sections live in model_config.py)
    AE_FACTORS,
    ATTENTIONS,
    BLOCKS,
    DIFFUSERS_BLOCKS,
    LEGACY_FAMILIES,
    MODEL_FAMILIES,
    MODEL_KINDS,
    RECON_LOSSES,
    AutoencoderConfig,
    DiffusersUNetConfig,
    MLPConfig,
    ModelConfig,
    UNetConfig,
)

# ----- the closed option sets (one tuple each) ---------------------------------------------------
SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")
MAX_TIMESTEPS = 100_000  # T: 100x Ho et al.'s 1000; larger is a typo, and its buffers take memory
CUSTOM_SCHEDULE = "custom"  # diffusion.betas given explicitly (an imported model's, diffusers' trained_betas)
OBJECTIVES = ("eps", "x0", "v")
# objectives a distilled student alone has: "consistency", a v network inside the skip / out
# parameterisation of consistency models (diffusion.consistency_x0), trained by train.task consistency
STUDENT_OBJECTIVES = ("consistency",)
DISTILL_METHODS = ("progressive", "consistency")  # `ddpm distill --method`: also their train.task names
LOSSES = ("l2", "l1", "huber", "hybrid", "vlb")  # hybrid: l2 + vlb_weight * L_vlb (Nichol & Dhariwal 2021)
SIMPLE_LOSSES = ("l2", "l1", "huber")  # on the model output alone: they give a learned variance no gradient
WEIGHTINGS = ("plain", "min_snr", "p2")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
LEARNED_VARIANCES = ("learned", "learned_range")  # the network outputs twice the data's channels
T_SAMPLERS = ("uniform", "loss_second_moment")  # how training draws t (training/t_sampler.py)
OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("constant", "cosine", "linear")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
ON_NAN = ("stop", "skip")
GRIDS = ("uniform", "logsnr", "karras")  # sampling time grids: trailing time-uniform, logSNR-uniform, Karras
CONDS = ("none", "class")  # what a model is conditioned on
RESIZES = ("crop", "pad")  # image folders, non-square images: center-crop, or pad with the background
SPACES = ("auto", "latent")  # the data space: auto (points or images, by the data), or autoencoder latents


def check_variance_loss(variance: str, loss: str) -> None:
    """A learned variance needs a loss with the bound in it; hybrid's bound term trains only a variance."""
    if variance in LEARNED_VARIANCES and loss in SIMPLE_LOSSES:
        raise ConfigError(f"variance {variance} is trained only through the variational bound: "
                          f"use --loss hybrid (or vlb); {loss} gives it no gradient")  # fmt: skip
    if loss == "hybrid" and variance not in LEARNED_VARIANCES:
        raise ConfigError(f"--loss hybrid trains a learned variance (its VLB term sees the mean detached): "
                          f"with variance {variance} it is plain l2; use --variance learned_range, "
                          "or --loss vlb to train the mean on the bound")  # fmt: skip


SAMPLERS = Registry("sampler")  # filled by ddpmkit.samplers: {name: sampler function}
TASKS = Registry("training task")  # filled by ddpmkit.training.tasks: {name: what a step optimises}


# ----- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process: beta schedule, T, what the model predicts, loss and reverse variance."""

    schedule: str = "linear"
    timesteps: int = 1000
    objective: str = "eps"
    loss: str = "l2"
    variance: str = "fixed_small"
    weighting: str = "plain"  # loss weight over t: the objective's own, min_snr or p2 (diffusion.py)
    weighting_gamma: float = 5.0  # gamma of min_snr (Hang et al. 2023: 5) or of p2 (Choi et al. 2022: 1)
    vlb_weight: float = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021)
    betas: tuple[float, ...] = ()  # schedule "custom": beta_1..beta_T themselves (T = their number)

    def __post_init__(self):
        typed(self)
        check_choice("schedule", self.schedule, (*SCHEDULES, CUSTOM_SCHEDULE))
        if (self.schedule == CUSTOM_SCHEDULE) != bool(self.betas):
            raise ConfigError("diffusion.betas (explicit betas) go with diffusion.schedule custom, and only "
                              f"with it (schedule {self.schedule}, {len(self.betas)} betas)")  # fmt: skip
        if self.betas and len(self.betas) != self.timesteps:
            raise ConfigError(f"diffusion.timesteps={self.timesteps} but diffusion.betas holds "
                              f"{len(self.betas)} betas")  # fmt: skip
        if not all(0 < b < 1 for b in self.betas):
            raise ConfigError("diffusion.betas must lie in (0, 1): a beta of 1 leaves no signal")
        check_choice("objective", self.objective, (*OBJECTIVES, *STUDENT_OBJECTIVES))
        check_choice("loss", self.loss, LOSSES)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_positive("diffusion.weighting_gamma", self.weighting_gamma)
        check_choice("variance", self.variance, VARIANCES)
        check_positive("diffusion.vlb_weight", self.vlb_weight)
        check_variance_loss(self.variance, self.loss)
        if not 1 <= self.timesteps <= MAX_TIMESTEPS:  # the buffers are T long: bound them before work
            raise ConfigError(f"the number of diffusion steps T must lie in 1..{MAX_TIMESTEPS}, "
                              f"got {self.timesteps}")  # fmt: skip


@dataclass(frozen=True)
class DataConfig:
    """What to train on. `dataset` is a point set name, a CSV path, an image set or `folder:PATH`."""

    dataset: str = "dino"
    data_dir: str | None = None
    num_points: int = 8000  # points drawn from a 2-D distribution for training
    image_size: int | None = None
    channels: int | None = None
    hflip: bool = False
    strict: bool = False  # image folders: refuse unreadable files instead of skipping them
    resize: str = "crop"  # image folders, non-square images: "crop" (center) or "pad" (with background)
    background: str = "white"  # image folders: the colour transparency is flattened onto
    download: bool = False
    mirror: str | None = None
    cond: str = "none"  # "class": a class-conditional model on the dataset's labels
    class_names: tuple[str, ...] = ()  # filled from the data when a class-conditional run starts
    class_counts: tuple[int, ...] = ()  # training images per class, filled with class_names (--class data)
    space: str = "auto"  # SPACES: "latent" diffuses in the latents of the `latent.autoencoder` run

    def __post_init__(self):
        typed(self)
        if not self.dataset:
            raise ConfigError("dataset must not be empty")
        check_choice("data.cond", self.cond, CONDS)
        check_choice("data.space", self.space, SPACES)
        for count in self.class_counts:
            check_positive("data.class_counts", count, allow_zero=True)
        if self.class_counts and self.class_names and len(self.class_counts) != len(self.class_names):
            raise ConfigError(f"data.class_counts has {len(self.class_counts)} counts for "
                              f"{len(self.class_names)} class_names")  # fmt: skip
        check_positive("data.num_points", self.num_points)
        if self.image_size is not None:
            check_range("data.image_size", self.image_size, 1, 4096)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {self.channels}")
        check_choice("data.resize", self.resize, RESIZES)
        check_colour("data.background", self.background)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, EMA, logging and checkpointing. `steps` counts optimizer updates in total."""

    task: str = "diffusion"  # what a step optimises (TASKS): the diffusion loss, or "autoencoder"
    steps: int = 10000
    epochs: float = 0.0  # > 0 overrides steps: steps = ceil(epochs * N / batch_size)
    max_minutes: float = 0.0  # wall-clock budget, 0 = none
    batch_size: int = 256  # global batch (all processes, all accumulation micro-batches)
    micro_batch: int = 0  # per-process forward/backward size, 0 = the whole per-process batch
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after warm-up: constant, or a cosine / linear decay over the run
    lr_min_ratio: float = 0.0  # a decaying lr ends at lr * lr_min_ratio
    lr_cycle: int = 0  # > 0: the decay restarts every lr_cycle steps (progressive distillation's rounds)
    grad_clip: float = 1.0  # max global grad norm, 0 = off
    ema_decay: float = 0.995
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at step n: forget the init
    cond_drop: float = 0.1  # class-conditional runs: P(label -> null label), for classifier-free guidance
    seed: int = 0
    log_every: int = 50
    preview_every: int = 0  # images: sample a preview grid every N steps (few-step sampler), 0 = off
    checkpoint_every: int = 0  # 0 = only at the end (and on interruption)
    keep_last: int = 2
    keep_every: int = 0  # also keep checkpoints at multiples of N steps (to sample, or guide), 0 = off
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False  # images: NHWC memory format (+12% training images/s measured on CPU)
    on_nan: str = "stop"
    threads: int = 0  # torch intra-op threads, 0 = auto (ddpmkit.threads: 1 for the MLP, else idle cores)
    tensorboard: bool = False
    t_sampler: str = "uniform"  # T_SAMPLERS; loss_second_moment: importance-sampled t (Improved DDPM)
    eval_every: int = 0  # images: classifier-feature FID every N steps; keeps the best weights
    eval_samples: int = 256  # samples per FID evaluation
    eval_steps: int = 50  # sampling steps of previews and FID samples (the run's sampler)
    eval_cache_dir: str | None = None  # classifier cache (default: `ddpm train-classifier`'s)

    def __post_init__(self):
        typed(self)
        TASKS.check(self.task)
        check_seed("train.seed", self.seed)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_unit("train.lr_min_ratio", self.lr_min_ratio, include_one=True)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("on_nan", self.on_nan, ON_NAN)
        check_choice("train.t_sampler", self.t_sampler, T_SAMPLERS)
        for name in ("steps", "batch_size", "lr", "log_every", "keep_last", "eval_samples", "eval_steps"):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("epochs", "max_minutes", "micro_batch", "weight_decay", "warmup_steps", "grad_clip",
                     "preview_every", "checkpoint_every", "keep_every", "threads", "eval_every",
                     "lr_cycle"):  # fmt: skip
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        check_range("train.lr", self.lr, 0, 10)  # > 0 above; 1e308 is a typo that overflows the step
        check_range("train.batch_size", self.batch_size, 1, 2**24)  # larger: refused by the memory check
        check_unit("train.ema_decay", self.ema_decay)
        check_unit("train.cond_drop", self.cond_drop)


@dataclass(frozen=True)
class SampleConfig:
    """How to sample: the sampler (a name in `SAMPLERS`), its steps and options, how many, clipping.

    It travels as one object from the run's config.json to the sampler; `ddpm sample` starts from the
    run's own and applies its flags on top.
    """

    sampler: str = "ddpm"
    steps: int | None = None  # None = all T steps
    grid: str | None = None  # time grid (GRIDS); None = the sampler's own default
    eta: float = 0.0  # DDIM noise (0 = deterministic); used by samplers that take `eta`
    num_samples: int = 2000
    clip: bool | None = None  # clip predicted x0 to the data space's range; None = its default
    threshold: float = 0.0  # dynamic thresholding percentile in (0, 1) for images; 0 = static clip
    guidance: float | None = None  # classifier-free guidance w (s = 1 + w); None = DEFAULT_GUIDANCE
    guidance_rescale: float = 0.0  # phi of Lin et al. 2024 (0 = off, 0.7 theirs)
    guidance_interval: tuple[float, ...] = ()  # (sigma_lo, sigma_hi): guide only there; () = every step
    guide: str = ""  # autoguidance: a weaker run of the same process that guides ("" = the null label)

    def __post_init__(self):
        typed(self)
        SAMPLERS.check(self.sampler)
        check_interval(self.guidance_interval, "sample.guidance_interval")
        if self.guidance is not None:
            check_guidance(self.guidance, "sample.guidance")
        check_unit("sample.guidance_rescale", self.guidance_rescale, include_one=True)
        check_choice("sample.grid", self.grid or GRIDS[0], GRIDS)  # None: the sampler's own
        check_unit("sample.threshold", self.threshold)
        if self.steps is not None:
            check_positive("sample.steps", self.steps)
        check_positive("sample.num_samples", self.num_samples)
        check_positive("sample.eta", self.eta, allow_zero=True)


@dataclass(frozen=True)
class LatentConfig:
    """Latent diffusion (`data.space = "latent"`): the autoencoder run whose latents are the data.

    Its weights are copied into the latent run's model file when training starts (so that the run
    is self-contained and covered by its integrity hash); `autoencoder` only says where they came from."""

    autoencoder: str = ""  # the `ddpm train-autoencoder` run directory

    def __post_init__(self):
        typed(self)


def check_progressive(teacher_steps: int, to_steps: int, timesteps: int) -> int:
    """The number of rounds that halve `teacher_steps` (<= T) down to `to_steps`; ConfigError unless
    that is one or more."""
    if not 1 <= to_steps < teacher_steps <= timesteps or teacher_steps % to_steps:
        ok = False
    else:
        ratio = teacher_steps // to_steps
        ok = ratio & (ratio - 1) == 0
    if not ok:
        halves = ", ".join(str(teacher_steps >> k) for k in range(1, 7) if teacher_steps >> k)
        raise ConfigError(f"--to-steps {to_steps} must be the teacher's {teacher_steps} steps (<= T = "
                          f"{timesteps}) halved one or more times ({halves or 'none'})")  # fmt: skip
    return (teacher_steps // to_steps).bit_length() - 1


@dataclass(frozen=True)
class DistillConfig:
    """A distilled run (train.task progressive or consistency, `ddpm distill`): its teacher and schedule.

    The teacher's weights are copied into the student's checkpoints when distillation starts (so that
    the run resumes and samples without the teacher's directory); `teacher` says where they came from."""

    teacher: str = ""  # the teacher run directory
    teacher_objective: str = "eps"  # what the teacher network predicts (progressive, first round)
    teacher_steps: int = 0  # progressive: the teacher's DDIM steps, halved each round down to `to_steps`
    to_steps: int = 0  # the student's sampling steps (progressive: at the end of the last round)
    round_steps: int = 0  # optimizer steps per round (progressive) or per curriculum stage (consistency)
    guidance: float = 0.0  # progressive: the classifier-free guidance w fixed into the student
    teacher_guidance: float = 0.0  # progressive: the w applied to the first round's teacher (0 for a student)
    guide: str = ""  # progressive: a weaker run that guides the first round's teacher (autoguidance)
    huber_c: float = 0.0  # consistency: pseudo-Huber c; 0 = 0.00054 sqrt(d) (Song & Dhariwal 2024)

    def __post_init__(self):
        typed(self)
        check_choice("distill.teacher_objective", self.teacher_objective, OBJECTIVES)
        for name in ("teacher_steps", "to_steps", "round_steps"):
            check_positive(f"distill.{name}", getattr(self, name), allow_zero=True)
        check_guidance(self.guidance, "distill.guidance")
        check_guidance(self.teacher_guidance, "distill.teacher_guidance")
        check_positive("distill.huber_c", self.huber_c, allow_zero=True)


@dataclass(frozen=True)
class RunConfig:
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    preset: str | None = None

    def __post_init__(self):
        typed(self)
        if (self.train.task == "autoencoder") != (self.model.kind == "autoencoder"):
            raise ConfigError("an autoencoder is trained with train.task autoencoder and model.kind "
                              "autoencoder together (`ddpm train-autoencoder` sets both)")  # fmt: skip
        if self.data.space == "latent" and not self.latent.autoencoder:
            raise ConfigError("data.space latent needs the autoencoder run: --latent AE_RUN")
        if self.data.space == "latent" and self.train.task != "diffusion":
            raise ConfigError("an autoencoder trains on pixels: data.space latent is for diffusion runs")
        if self.train.eval_every and not TASKS[self.train.task].samples:
            raise ConfigError(f"train.eval_every scores samples, and a {self.train.task} run draws none "
                              "(its report measures reconstructions)")  # fmt: skip
        distilled = self.train.task in DISTILL_METHODS
        if distilled and not (self.distill.teacher and self.distill.to_steps and self.distill.round_steps):
            raise ConfigError(f"a {self.train.task} run is made by `ddpm distill RUN --method "
                              f"{self.train.task}`: distill.teacher, to_steps and round_steps are unset")
        if self.train.task == "progressive":
            check_progressive(self.distill.teacher_steps, self.distill.to_steps, self.diffusion.timesteps)
            if (self.sample.grid or "uniform") != "uniform":
                raise ConfigError("a progressive student is trained on the uniform time grid: sample.grid "
                                  f"{self.sample.grid} would sample off it")  # fmt: skip
        if (self.diffusion.objective in STUDENT_OBJECTIVES) != (self.train.task == "consistency"):
            raise ConfigError("diffusion.objective consistency goes with train.task consistency (`ddpm "
                              "distill --method consistency`), and only with it")  # fmt: skip
        if self.sample.steps is not None and self.sample.steps > self.diffusion.timesteps:
            raise ConfigError(f"sample.steps={self.sample.steps} exceeds T={self.diffusion.timesteps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return from_dict(cls, upgrade(d))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        d = read_json(path, ConfigError, what="config ")
        return cls.from_dict(d)

    @classmethod
    def from_preset(cls, name: str, overrides: Mapping[str, Any] | None = None, **sections) -> RunConfig:
        """A named recipe (`preset_names()`) with overrides on top, dotted or per section:
        `RunConfig.from_preset("mnist", {"train.lr": 1e-3}, train={"steps": 500})`."""
        d = merge(merge(RunConfig().to_dict(), load_preset(name)), {"preset": name, **sections})
        return override(cls.from_dict(d), dict(overrides or {}))

    def replace(self, **updates: Any) -> RunConfig:
        """A copy with dotted overrides: `cfg.replace(**{"train.steps": 100})`."""
        return override(self, updates)
