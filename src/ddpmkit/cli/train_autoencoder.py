"""`ddpm train-autoencoder`: `ddpm train`'s options and handler, for the KL autoencoder of latent
diffusion (the task and the preset are set by `train.build_config`)."""

from __future__ import annotations

from . import train

run = train.run


def add_parser(sub, command) -> None:
    p = command(sub, "train-autoencoder", "train the KL autoencoder of latent diffusion (preset: "
                "autoencoder); reports reconstruction PSNR and FID")  # fmt: skip
    train.add_options(p)
