"""The playground's one training job at a time: a background thread running `ddpmkit.train` on a
points dataset, with progress and losses for the page, cancellable, and cancelled by itself when the
page stops asking for it (a closed browser), so that no thread outlives its purpose."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DdpmkitError

ABANDON_AFTER_S = 15.0  # no status request for this long: the page is gone, the job stops
MIN_POINTS = 10


class Cancelled(Exception):
    """Raised inside the training callback to stop the loop."""


@dataclass
class TrainingJob:
    """State of one training run, read by the status endpoint."""

    cfg: Any
    run_dir: Path
    state: str = "running"  # running, done, cancelled, failed
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)
    error: str = ""
    run: Any = None
    seen: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def callback(self, event: str, info: dict) -> None:
        if event == "begin":
            self.total = info["total"]
        elif event == "step":
            self.step = info["step"]
            if self.step % 10 == 0:
                self.losses.append(float(info["loss"]))
        if self.cancel.is_set() or time.monotonic() - self.seen > ABANDON_AFTER_S:
            raise Cancelled

    def work(self) -> None:
        from ..api import train

        try:
            self.run = train(
                self.cfg, self.run_dir, overwrite=True, progress=False, callbacks=[self.callback]
            )
            self.state = "done"
        except Cancelled:
            self.state = "cancelled"
        except DdpmkitError as e:
            self.state, self.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 (the page must hear of any failure; the server goes on)
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"

    def status(self) -> dict[str, Any]:
        self.seen = time.monotonic()
        return {"state": self.state, "step": self.step, "total": self.total, "losses": self.losses,
                "error": self.error, "task": self.cfg.train.task, "sampler": self.cfg.sample.sampler,
                "steps": self.cfg.sample.steps}  # fmt: skip


class Jobs:
    """At most one training job; its run directories live in a temporary folder."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ddpm-playground-"))
        self.job: TrainingJob | None = None
        self.lock = threading.Lock()
        self.count = 0

    def start(self, cfg) -> TrainingJob:
        with self.lock:
            if self.job is not None and self.job.state == "running":
                raise ConfigError("a model is training already: wait for it or cancel it")
            self.count += 1
            job = TrainingJob(cfg=cfg, run_dir=self.root / f"run{self.count}")
            job.thread = threading.Thread(target=job.work, name="ddpm-playground-train", daemon=True)
            self.job = job
            job.thread.start()
            return job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel.set()

    def close(self, timeout: float = 30.0) -> None:
        """Stop and join the training thread; remove the temporary runs."""
        self.cancel()
        if self.job is not None and self.job.thread is not None:
            self.job.thread.join(timeout)
        shutil.rmtree(self.root, ignore_errors=True)

    def points_file(self, points: list) -> Path:
        """Drawn points -> a CSV the points loader reads (at least MIN_POINTS finite pairs)."""
        import numpy as np

        if not isinstance(points, list) or len(points) < MIN_POINTS:
            count = len(points) if isinstance(points, list) else 0
            raise ConfigError(f"draw at least {MIN_POINTS} points (got {count})")
        try:
            arr = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError("the drawn points must be pairs of numbers") from None
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
            raise ConfigError("the drawn points must be pairs of finite numbers")
        return self._fresh_file("drawn", "x,y\n" + "\n".join(f"{x:.6g},{y:.6g}" for x, y in arr) + "\n")

    def _fresh_file(self, prefix: str, text: str) -> Path:
        """A new file of its own for each request: two requests at once never share one."""
        fd, name = tempfile.mkstemp(dir=self.root, prefix=f"{prefix}-", suffix=".csv")
        with open(fd, "w") as f:
            f.write(text)
        return Path(name)

    def csv_file(self, text: str) -> Path:
        """An uploaded CSV, checked by the points loader (one clear message if it is not points)."""
        from ..data.toy2d import read_points_csv

        path = self._fresh_file("upload", text)
        pts = read_points_csv(path)  # DataError with the line at fault
        if len(pts) < MIN_POINTS:
            raise ConfigError(f"the CSV holds {len(pts)} points; at least {MIN_POINTS} are needed")
        return path
