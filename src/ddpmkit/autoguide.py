"""Autoguidance (Karras et al. 2024): a run guided by a weaker run of the same process.

Classifier-free guidance pushes a conditional model away from its unconditional self; autoguidance
pushes a model away from a worse version of itself (a smaller network, or the same one trained for
less), given the same conditioning: (1 + w) D(x_t, y) - w D_guide(x_t, y). Where the weak model's
errors are a blurred version of the strong one's, the difference points at what the strong model
learned and the weak one did not: detail, rather than class. `load_guide` loads such a run and checks
that its outputs can be mixed with the run's (the mixing is `Denoiser.output`'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .run import LoadedRun, check_null_label, check_samples, load_run


class Unlabelled(torch.nn.Module):
    """An unconditional guide for a class-conditional run: the labels are dropped before its call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.model(x_t, t, **{k: v for k, v in cond.items() if k != "y"})


def load_guide(run: LoadedRun, guide_dir: str | Path, *, verify: bool = True) -> torch.nn.Module:
    """The (EMA) network of the run in `guide_dir`, on `run`'s device, to guide `run`'s model.

    ConfigError unless the two runs share what mixing their outputs needs: the data shape and
    space (a latent run's autoencoder included), the noise schedule, the objective and the
    variance; and the classes (or the guide has none: it then sees no labels)."""
    guide = load_run(guide_dir, device=run.device, verify=verify)
    check_samples(guide)
    name = f"the guide {guide_dir}"
    if guide.data_shape != run.data_shape:
        raise ConfigError(f"{name} draws {guide.data_shape}, this run {run.data_shape}: a guide must be "
                          "trained on the same data")  # fmt: skip
    a, b = guide.diffusion, run.diffusion
    same = (a.objective, a.variance, a.num_timesteps) == (b.objective, b.variance, b.num_timesteps)
    if not same or not torch.allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-6, atol=0.0):
        raise ConfigError(f"{name} was trained on another process (objective {a.objective}, variance "
                          f"{a.variance}, T = {a.num_timesteps}, its schedule) than this run (objective "
                          f"{b.objective}, variance {b.variance}, T = {b.num_timesteps}): their outputs do "
                          "not mix")  # fmt: skip
    if not same_space(guide, run):
        raise ConfigError(f"{name} models another data space ({guide.space.name}, its normalisation or "
                          f"autoencoder) than this run ({run.space.name}): train it with the same "
                          "--latent autoencoder and data")  # fmt: skip
    k, kg = run.cfg.model.num_classes, guide.cfg.model.num_classes
    if kg and kg != k:
        raise ConfigError(f"{name} has {kg} classes and this run {k or 'none'}: a guide takes the run's "
                          "classes, or none")  # fmt: skip
    if kg:
        check_null_label(guide, has_labels=bool(k), guidance=0.0)
    return Unlabelled(guide.model) if k and not kg else guide.model


def guide_for(run: LoadedRun, options) -> torch.nn.Module | None:
    """The network that guides `run` under `options` (a SampleConfig): the weak run `options.guide`,
    loaded and checked by `load_guide`, or None when there is none or the guidance is 0."""
    return load_guide(run, options.guide) if options.guide and options.guidance else None


def same_space(a: LoadedRun, b: LoadedRun) -> bool:
    """Whether two runs' data spaces are the same map (name and saved tensors: a point set's
    normalisation, a latent space's scale and autoencoder weights)."""
    sa, sb = a.space.state(), b.space.state()
    if type(a.space) is not type(b.space) or sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
