"""The latent space of a KL autoencoder (Rombach et al. 2022): diffusion runs on z = scale * E(x).

`LatentSpace` is an image space whose model-space tensors are scaled posterior means of a trained
autoencoder (`ddpm train-autoencoder`): `to_model` encodes images, `to_data` decodes latents back to
8-bit images, and the pictures of trajectories and of the forward process decode their frames first.
`scale` is 1 / std of the training set's latents (computed, as Rombach et al. Sec. 4.3.2 and Appx. G
describe, rather than Stable Diffusion's constant 0.18215), so that the data the diffusion sees have
unit variance like [-1, 1] pixels. The autoencoder's weights travel in the latent run's own model
file (prefix "space.ae."), covered by its integrity hash; its architecture is the run config's
`model.autoencoder` section.

The training set is encoded once, to the posterior means, and the run trains on that cache; with
`data.hflip` the flipped images are encoded too (a flip of the latent grid is not the latent of the
flipped image), and the trainer picks the flipped latents for flipped examples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..io import load_tensors, prefixed, stored_shape, unprefixed
from ..progress import bar
from .images import FOLDER_PREFIX
from .spaces import ImageSpace

ENCODE_BATCH = 256


class LatentSpace(ImageSpace):
    """Images (C, H, W) <-> latents (latent_channels, H/f, W/f) through an autoencoder."""

    name = "latent"
    discrete_8bit = False  # bits/dim would need the decoder's likelihood
    can_inpaint = False

    def __init__(self, autoencoder: torch.nn.Module, scale: float | torch.Tensor, bound: float | None = None):
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale = scale
        self.bound = bound

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """The predicted-x0 clamp: +-`bound`, the largest |value| of the scaled training latents.
        Without it an eps model's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is amplified up to
        1 / sqrt(abar_T) (~160 on the cosine schedule) at the first steps, and the solvers diverge."""
        return (-self.bound, self.bound) if self.bound else None

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float | torch.Tensor) -> None:
        # rounded to float32 as the model file stores it, so that a resumed run scales identically
        self._scale = float(torch.tensor(float(value), dtype=torch.float32))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        ae = self.autoencoder
        return (ae.in_channels, ae.image_size, ae.image_size)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Images in [-1, 1] (N, C, H, W) -> unscaled posterior means, in batches (`progress`: a bar)."""
        dev = next(self.autoencoder.parameters()).device
        starts = bar(range(0, len(images), ENCODE_BATCH), desc="encoding", unit="batch", disable=not progress)
        parts = [self.autoencoder.encode(images[i : i + ENCODE_BATCH].to(dev))[0].cpu() for i in starts]
        return torch.cat(parts) if parts else torch.empty((0, *self.autoencoder.latent_shape))

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> images in [-1, 1] (N, C, H, W) on the CPU."""
        dev = next(self.autoencoder.parameters()).device
        parts = [self.autoencoder.decode(x[i : i + ENCODE_BATCH].float().to(dev) / self.scale)
                 .clamp(-1, 1).cpu() for i in range(0, len(x), ENCODE_BATCH)]  # fmt: skip
        return torch.cat(parts) if parts else torch.empty((0, *self.image_shape))

    def to_model(self, data, progress: bool = False):
        """uint8 images, or float images in [-1, 1], (N, C, H, W) -> scaled latents."""
        return self.encode(super().to_model(data), progress) * self.scale

    def to_data(self, x):
        return super().to_data(self.decode(x))

    def to(self, device):
        self.autoencoder.to(device)
        return self

    def pixel_shape(self, model_shape):
        return self.image_shape

    def describe(self, n, model_shape):
        x = lambda shape: "x".join(map(str, shape))  # noqa: E731
        return f"{n} latents of {x(model_shape)} (images {x(self.image_shape)}, scale {self.scale:.4g})"

    def examples(self, pixels: torch.Tensor, n: int) -> torch.Tensor:
        return self.to_model(pixels[:n])

    def state(self):
        return {"space.scale": torch.tensor([self.scale]),
                "space.bound": torch.tensor([self.bound or 0.0]),
                "space.image_shape": torch.tensor(self.image_shape),
                **prefixed("space.ae", self.autoencoder.state_dict())}  # fmt: skip

    @classmethod
    def from_state(cls, tensors, cfg=None):
        if cfg is None or "space.image_shape" not in tensors or "space.scale" not in tensors:
            raise CheckpointError("a latent run's model file needs its config and the autoencoder's tensors")
        ae = build_autoencoder(cfg, tuple(int(s) for s in tensors["space.image_shape"].tolist()))
        _load_weights(ae, unprefixed("space.ae", tensors), "the latent run's model file")
        bound = float(tensors["space.bound"][0]) if "space.bound" in tensors else None
        return cls(ae, float(tensors["space.scale"][0]), bound or None)

    # pictures: decode the model-space frames, then draw them as images
    def animate(self, frames, labels, path, *, dataset):
        super().animate([self.decode(f) for f in frames], labels, path, dataset=dataset)

    def plot_forward(self, frames, titles, path):
        super().plot_forward([self.decode(f) for f in frames], titles, path)

    def plot_trajectory(self, x_t, x0_pred, titles, path):
        decoded = [self.decode(f) for f in x_t], [self.decode(f) for f in x0_pred]
        super().plot_trajectory(*decoded, titles, path)


def build_autoencoder(cfg: RunConfig, image_shape: tuple[int, ...]) -> torch.nn.Module:
    """The autoencoder of `cfg.model.autoencoder` for images of `image_shape` (C, H, W)."""
    from ..models import build_model

    return build_model(dataclasses.replace(cfg.model, kind="autoencoder", num_classes=0), image_shape)


def _same_dataset(a: str, b: str) -> bool:
    """Dataset names equal, folders compared by their resolved paths."""
    if a.startswith(FOLDER_PREFIX) and b.startswith(FOLDER_PREFIX):
        folder = lambda name: Path(name.removeprefix(FOLDER_PREFIX)).expanduser().resolve()  # noqa: E731
        return folder(a) == folder(b)
    return a == b


def load_autoencoder_run(ae_dir: str | Path, cfg: RunConfig, image_shape: tuple[int, ...]):
    """The EMA autoencoder of a `ddpm train-autoencoder` run (weights verified) and its config,
    checked against the dataset and image shape of the latent run `cfg`; ConfigError otherwise."""
    from ..checkpoint import MODEL, load_config

    ae_dir = Path(ae_dir)
    ae_cfg = load_config(ae_dir)
    if ae_cfg.train.task != "autoencoder":
        raise ConfigError(f"{ae_dir} is a {ae_cfg.train.task} run, not an autoencoder: "
                          "train one with `ddpm train-autoencoder --dataset D -o AE_RUN`")  # fmt: skip
    if not _same_dataset(ae_cfg.data.dataset, cfg.data.dataset):
        raise ConfigError(f"the autoencoder {ae_dir} was trained on {ae_cfg.data.dataset}, "
                          f"this run trains on {cfg.data.dataset}")  # fmt: skip
    if not (ae_dir / MODEL).is_file():
        raise ConfigError(f"{ae_dir} holds no {MODEL}: its training never saved a checkpoint")
    tensors = load_tensors(ae_dir / MODEL)
    shape = stored_shape(tensors, ae_dir / MODEL)
    if shape != tuple(image_shape):
        raise ConfigError(f"the autoencoder {ae_dir} takes images of shape {shape} (channels, size, size); "
                          f"this run's data are {tuple(image_shape)}: pass the same --data.image_size "
                          "and --data.channels")  # fmt: skip
    ae = build_autoencoder(ae_cfg, shape)
    _load_weights(ae, unprefixed("ema", tensors), ae_dir / MODEL)
    return ae, ae_cfg


def _load_weights(ae: torch.nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    try:
        ae.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: the autoencoder's weights do not match its config: "
                              f"{str(e).splitlines()[0]}") from None  # fmt: skip


def saved_latent_space(run_dir: Path, cfg: RunConfig, verify: bool = True) -> LatentSpace:
    """The latent space a latent run saved with its newest intact checkpoint (the one a resume
    continues from; damaged newer ones are skipped); CheckpointError where none holds it."""
    from ..checkpoint import list_checkpoints, load_checkpoint

    for path in reversed(list_checkpoints(Path(run_dir))):
        try:
            tensors, _ = load_checkpoint(path, verify=verify)
        except CheckpointError:
            continue
        return LatentSpace.from_state({k: v for k, v in tensors.items() if k.startswith("space.")}, cfg)
    raise CheckpointError(f"{run_dir} holds no intact checkpoint with its autoencoder to resume from")


def latent_bound(x: torch.Tensor) -> float:
    """The largest |value| of the scaled training latents (the clip range of predicted x0)."""
    return float(x.abs().max())


def latent_scale(z: torch.Tensor) -> float:
    """1 / std of all latent values (float64), the factor that gives the diffusion unit-variance data."""
    std = float(z.double().std())
    if not np.isfinite(std) or std <= 0:
        raise ConfigError(f"the autoencoder's latents have std {std}: it cannot scale them")
    return 1.0 / std
