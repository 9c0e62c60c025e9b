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
        rows = [r for r in read_rows(self.path) if r["step"] <= start_step]
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


def read_rows(path: Path) -> list[dict]:
    """The rows of a train_log.csv with an integer step and a numeric loss; garbage lines (a hand
    edit, a torn write) are skipped, and a file that is not a log reads as none."""
    if not path.is_file():
        return []
    rows = []
    try:
        with open(path, newline="", errors="replace") as f:
            for r in csv.DictReader(f):
                try:
                    rows.append({**{k: v for k, v in r.items() if k in LOG_FIELDS}, "step": int(r["step"]),
                                 "loss": float(r["loss"])})  # fmt: skip
                except (KeyError, TypeError, ValueError):
                    continue
    except (OSError, csv.Error):
        return []
    return rows


def read_log(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = read_rows(run_dir / "train_log.csv")
    return [r["step"] for r in rows], [r["loss"] for r in rows]
