"""Training (`ddpmkit.train` is the one-call API over it): one step (`step.py`), the loop with
checkpoints (`loop.py`), callbacks, logs and several processes (`distributed.py`)."""

from .callbacks import LogCallback, PreviewCallback, default_callbacks, few_step_samples
from .loop import resolve_device, restore_state, save_state, total_steps, train
from .step import BatchOrder, TrainState, build_state, ema_decay_at, ema_update, lr_at, train_step

__all__ = [
    "train", "train_step", "build_state", "TrainState", "BatchOrder", "ema_update", "ema_decay_at", "lr_at",
    "resolve_device", "total_steps", "save_state", "restore_state", "LogCallback", "PreviewCallback",
    "default_callbacks", "few_step_samples",
]  # fmt: skip
