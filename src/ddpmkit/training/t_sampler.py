"""How training draws the timestep t of each example, and the weight that keeps the loss unbiased.

`uniform`: t ~ U{0..T-1}, weight 1 (Ho et al. 2020). `loss_second_moment`: importance sampling of
Nichol & Dhariwal 2021, Sec. 3.3 (Eq. 17): p_t proportional to sqrt(E[L_t^2]), estimated from the
last `history` losses seen at each t; uniform until every t has its `history` losses (warm-up),
then mixed with the uniform distribution (`uniform_mix`) so that no t is starved, and each example
weighted by 1 / (T p_t) so that E_p[w L_t] = (1/T) sum_t L_t, the uniform estimate.

A sampler's state (the loss history) is a dict of tensors that checkpoints save and restore, so a
resumed run draws the same t. Adding a sampler is one class here plus one line in `T_SAMPLERS`.
"""

from __future__ import annotations

import torch

from ..checks import Registry
from ..errors import CheckpointError


class UniformSampler:
    """t ~ U{0..T-1}; the draw is the one ddpmkit has always made (runs before 0.3 resume alike)."""

    learns = False  # True: `update` needs the losses of every global batch

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(t: (n,) long, weights: (n,) float64 or None for all ones)."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator), None

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the (unweighted, per-example) losses of the global batch; nothing to learn here."""

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class LossSecondMomentSampler(UniformSampler):
    """p_t proportional to sqrt(mean of the last `history` squared losses at t) (Eq. 17)."""

    learns = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_mix: float = 0.001):
        super().__init__(num_timesteps)
        self.history, self.uniform_mix = history, uniform_mix
        self.losses = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probabilities(self) -> torch.Tensor:
        """(T,) float64: uniform during warm-up, then sqrt(E[L_t^2]) normalised and mixed with uniform."""
        T = self.num_timesteps
        if not self.warmed_up:
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        w = torch.sqrt((self.losses**2).mean(1))
        if not torch.isfinite(w).all() or w.sum() <= 0:
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        p = w / w.sum()
        return p * (1.0 - self.uniform_mix) + self.uniform_mix / T

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.warmed_up:  # the uniform draw, weight 1
            return super().sample(n, generator)
        p = self.probabilities()
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        return t, 1.0 / (self.num_timesteps * p[t])

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Push each example's loss into its t's history (oldest dropped once full), in batch order."""
        for ti, li in zip(t.tolist(), losses.double().tolist(), strict=True):
            c = int(self.counts[ti])
            if c == self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, c] = li
                self.counts[ti] = c + 1

    def state(self) -> dict[str, torch.Tensor]:
        return {"t_sampler.losses": self.losses.clone(), "t_sampler.counts": self.counts.clone()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        losses, counts = tensors.get("t_sampler.losses"), tensors.get("t_sampler.counts")
        if losses is None or counts is None:
            raise CheckpointError("the checkpoint holds no t-sampler history (was it saved by a "
                                  "train.t_sampler = uniform run?)")  # fmt: skip
        if tuple(losses.shape) != tuple(self.losses.shape) or tuple(counts.shape) != tuple(self.counts.shape):
            raise CheckpointError(f"the checkpoint's t-sampler history is {tuple(losses.shape)}, "
                                  f"this run needs {tuple(self.losses.shape)}")  # fmt: skip
        self.losses, self.counts = losses.double().clone(), counts.long().clone()


T_SAMPLER_CLASSES = Registry("t sampler")
T_SAMPLER_CLASSES["uniform"] = UniformSampler
T_SAMPLER_CLASSES["loss_second_moment"] = LossSecondMomentSampler


def build_t_sampler(name: str, num_timesteps: int) -> UniformSampler:
    return T_SAMPLER_CLASSES[name](num_timesteps)
