"""Training callbacks: the run log (CSV + TensorBoard) and preview grids. FID during training
lives with the metrics (`ddpmkit.eval.during_training`); `ddpmkit.train` assembles all three from
the config. A callback is `cb(event, info)`; see `loop.py` for the events."""

from __future__ import annotations

from ..config import TASKS
from .runlog import RunLogger
from .step import TrainState
from .tasks import few_step_samples  # noqa: F401 (re-exported)


class LogCallback:
    """train_log.csv (and TensorBoard) rows on "log", FID rows on "eval", pictures on "image"."""

    def __init__(self, tensorboard: bool = False):
        self.tensorboard, self.logger = tensorboard, None

    def __call__(self, event: str, info: dict) -> None:
        if event == "begin":
            self.logger = RunLogger(info["run_dir"], info["step"], self.tensorboard)
        elif self.logger is None:
            return
        elif event == "log":
            self.logger.log(info["row"])
        elif event == "eval":
            self.logger.log_eval(info["step"], {k: info[k] for k in ("fid", "copy_fraction") if k in info})
        elif event == "image":
            self.logger.image(info["tag"], info["x"], info["step"])
        elif event == "end":
            self.logger.close()
            self.logger = None


class PreviewCallback:
    """Every `every` steps: a 4x4 grid of the task's preview (few-step samples of a diffusion run,
    originals beside reconstructions of an autoencoder) in previews/step-N.png."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, event: str, info: dict) -> None:
        if event != "step" or info["step"] % self.every:
            return
        state: TrainState = info["state"]
        x = TASKS[state.cfg.train.task].preview(state, 16, 0).cpu()
        path = info["run_dir"] / "previews" / f"step-{info['step']:08d}.png"
        pictures = state.data.space.to_data(x)  # a latent run's: decoded
        state.data.space.plot_samples(pictures, path, dataset=state.cfg.data.dataset)
        if pictures.ndim == 4:  # images (uint8 NHWC) go to TensorBoard too
            info["emit"]("image", tag="preview", x=pictures)


def default_callbacks(cfg) -> list:
    """The logging and preview callbacks `cfg.train` asks for."""
    callbacks: list = [LogCallback(cfg.train.tensorboard)]
    if cfg.train.preview_every:
        callbacks.append(PreviewCallback(cfg.train.preview_every))
    return callbacks
