"""ddpmkit: Denoising Diffusion Probabilistic Models for 2-D points and small images.

The public API a notebook needs:

    train, load_run, sample          run a training, load a run directory, draw samples
    distill                          a student of a run that samples in 1-4 model calls
    RunConfig (+ section configs)    typed configs; RunConfig.from_preset(name, ...)
    GaussianDiffusion, Denoiser      the process (q_sample, q_posterior, p_mean_variance, ...)
    SAMPLERS                         the sampler registry {name: function}
    build_dataset, POINT_DATASETS    the datasets
    inpaint, edit, interpolate       steering a trained run (RePaint, SDEdit, slerp); see `steer`
"""

from . import samplers  # noqa: F401  (fills the SAMPLERS registry before any config is checked)
from .api import distill, sample, train
from .config import (
    SAMPLERS,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
    preset_names,
)
from .data import POINT_DATASETS, Dataset, build_dataset
from .denoiser import Denoiser, Prediction
from .diffusion import GaussianDiffusion, build_diffusion
from .errors import CheckpointError, ConfigError, DataError, DdpmkitError, OutputError, TrainingError
from .run import LoadedRun, generate, load_run
from .steer import edit, inpaint, interpolate
from .training import tasks  # noqa: F401  (fills the TASKS registry likewise)

__version__ = "0.2.0"
__all__ = [
    "train", "load_run", "sample", "generate", "LoadedRun", "RunConfig", "DiffusionConfig", "ModelConfig",
    "DataConfig", "TrainConfig", "SampleConfig", "preset_names", "GaussianDiffusion", "build_diffusion",
    "Denoiser", "Prediction", "SAMPLERS", "build_dataset", "Dataset", "POINT_DATASETS", "DdpmkitError",
    "ConfigError", "DataError", "CheckpointError", "OutputError", "TrainingError", "inpaint", "edit",
    "interpolate", "distill",
]  # fmt: skip
