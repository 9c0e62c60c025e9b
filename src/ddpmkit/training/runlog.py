"""Training logs: train_log.csv (always), eval_log.csv (FID during training) and TensorBoard
(when asked for and installed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s")


class RunLogger:
    """train_log.csv always (rows past `start_step` of an older run are dropped on resume);
    TensorBoard scalars and preview images when asked for and installed."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool):
        self.path = run_dir / "train_log.csv"
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        self.file = open(self.path, "w", newline="")  # noqa: SIM115 (closed in close())
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--train.tensorboard needs the tensorboard package: pip install 'ddpmkit[tensorboard]'"
                ) from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        if self.tb:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def log_eval(self, step: int, scores: dict[str, float]) -> None:
        """An eval_log.csv row: the step and the scores (fid; copy_fraction for folders)."""
        path = self.path.with_name("eval_log.csv")
        new = not path.is_file()
        with open(path, "a") as f:
            f.write((",".join(["step", *scores]) + "\n" if new else "")
                    + ",".join([str(step), *(f"{v:.6g}" for v in scores.values())]) + "\n")  # fmt: skip
        if self.tb:
            for k, v in scores.items():
                self.tb.add_scalar(f"eval/{k}", v, step)

    def image(self, tag: str, x: torch.Tensor | np.ndarray, step: int) -> None:
        if self.tb:
            from ..viz import make_grid

            self.tb.add_image(tag, make_grid(x, nrow=4), step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()


def read_log(run_dir: Path) -> tuple[list[int], list[float]]:
    path = run_dir / "train_log.csv"
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]
