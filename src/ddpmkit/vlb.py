"""The variational bound of Ho et al. 2020 (Eq. 5) in bits/dim, term by term, for a diffusion and a model:
the KL of each reverse step to the true posterior, the decoder's -log p(x0 | x1) at t = 0 and the prior's
KL at T. `eval/likelihood.py` sums them into bits/dim; L_hybrid and L_vlb (`GaussianDiffusion.training_loss`,
Nichol & Dhariwal 2021, Eq. 16) train on them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .gaussians import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl

if TYPE_CHECKING:
    from .diffusion import Cond, GaussianDiffusion, Model


def vb_terms_bpd(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Cond | None = None,
) -> torch.Tensor:
    """Eq. 5 terms in bits/dim: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the
    decoder -log p(x0 | x1) at t = 0 (discretised: x0 in [-1, 1], 256 bins). Shape (N,).
    The predicted x0 is clipped to [-1, 1] for the discretised decoder (8-bit images)."""
    clip = (-1.0, 1.0) if diffusion.decoder == "discretized" else None
    out, var_out = diffusion.split_output(diffusion.model_output(model, x_t, t, cond).float())
    return vb_terms_from_output(diffusion, out, var_out, x0, x_t, t, clip)


def vb_terms_from_output(
    diffusion: GaussianDiffusion,
    out: torch.Tensor,
    var_out: torch.Tensor | None,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """`vb_terms_bpd` from a model output already split (`split_output`), (N,) bits/dim."""
    x0_pred, _ = diffusion.predict_x0_eps(x_t, t, out, clip)
    log_var = diffusion.model_log_variance_from_output(var_out, t, x_t.shape)
    mean, _, log_var = diffusion.p_mean_variance_from_x0(x0_pred, x_t, t, log_var)
    true_mean, _, true_logvar = diffusion.q_posterior_mean_variance(x0, x_t, t)
    kl = normal_kl(true_mean, true_logvar, mean, log_var).flatten(1).mean(1)
    if diffusion.decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    else:
        nll = -gaussian_log_likelihood(x0, mean, log_var)
    nll = nll.flatten(1).mean(1)
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def prior_bpd(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x0) || N(0, I)) in bits/dim, shape (N,)."""
    t = torch.full((len(x0),), diffusion.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean, var = diffusion.q_mean_variance(x0, t)
    zero = torch.zeros_like(mean)
    return normal_kl(mean, torch.log(var).expand_as(mean), zero, zero).flatten(1).mean(1) / math.log(2.0)
