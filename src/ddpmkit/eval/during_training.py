"""FID during training: a training callback that scores few-step samples of the EMA model in the
feature space of the dataset's classifier every `every` steps and keeps the best weights in
best.safetensors (+ best.json), which `ddpm sample --best` loads. For image folders it also
tracks the copy fraction (copies.py), so a small-data run shows when it starts copying."""

from __future__ import annotations

import json
import math

import torch
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from ..errors import ConfigError
from ..io import atomic_write_text, save_tensors
from ..training import TrainState, few_step_samples
from .classifier import load_classifier
from .copies import nearest_two, pixel_vectors
from .images import classifier_fid


class FIDCallback:
    """Scores `cfg.train.eval_samples` samples every `cfg.train.eval_every` steps."""

    scores_fid = True  # the loop checks that train.eval_every has a callback that honours it

    def __init__(self, every: int):
        self.every, self.classifier, self.best = every, None, math.inf
        self.train_pixels = None

    def __call__(self, event: str, info: dict) -> None:
        state: TrainState = info["state"]
        if event == "begin":
            self._begin(state, info["run_dir"])
        elif event == "step" and info["step"] % self.every == 0:
            self._evaluate(state, info)

    def _begin(self, state: TrainState, run_dir) -> None:
        """Load the classifier (fails before training if it is not trained yet) and, on resume,
        the best FID so far."""
        space = state.data.space
        if space.data_kind != "images":
            raise ConfigError("train.eval_every computes FID of images; for points use `ddpm eval`")
        c, h, _ = space.pixel_shape(state.data.shape)
        cfg = state.cfg
        self.classifier = load_classifier(
            cfg.data.dataset, cfg.train.eval_cache_dir, image_size=h, channels=c
        )
        self.train_pixels = None  # folders: the training images, to track the copy fraction
        if cfg.data.dataset.startswith("folder:"):  # small sets: is it copying yet?
            self.train_pixels = pixel_vectors(_images(space, state.data.x))  # a latent run: decoded
        best = run_dir / "best.json"
        if state.step and best.is_file():
            self.best = float(json.loads(best.read_text())["fid"])

    @torch.no_grad()
    def _evaluate(self, state: TrainState, info: dict) -> None:
        t, step = state.cfg.train, info["step"]
        x = few_step_samples(state, t.eval_samples, seed=t.seed + 1)
        images = _images(state.data.space, x)
        fid = classifier_fid(self.classifier, images)
        scores = {"fid": fid}
        if self.train_pixels is not None:
            scores["copy_fraction"] = nearest_two(pixel_vectors(images), self.train_pixels).copy_fraction()
        copies = f", copies {scores['copy_fraction']:.1%}" if "copy_fraction" in scores else ""
        tqdm.write(f"step {step}: FID (classifier features, {t.eval_samples} samples, "
                   f"{state.cfg.sample.sampler} {t.eval_steps} steps) = {fid:.3f}{copies}")  # fmt: skip
        info["emit"]("eval", **scores)
        if fid < self.best:
            self.best = fid
            run_dir = info["run_dir"]
            weights = ckpt.weights(state.model, state.ema_model, state.data.shape, state.data.space.state())
            save_tensors(
                run_dir / "best.safetensors", weights, {"step": str(step), "space": state.data.space.name}
            )
            atomic_write_text(run_dir / "best.json", json.dumps({"step": step, "fid": fid}))


def _images(space, x: torch.Tensor) -> torch.Tensor:
    """Model-space tensors -> uint8 images (N, C, H, W) as the space draws them (decoded latents)."""
    return torch.from_numpy(space.to_data(x)).permute(0, 3, 1, 2)
