"""Gaussian densities for the variational bound: the KL of two Gaussians and the decoders' log
likelihoods (discretised for 8-bit images, continuous for points). Elementwise, in nats."""

from __future__ import annotations

import math

import torch


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)^2)
    (Ho et al. 2020, Sec. 3.3; the edge bins extend to -inf / +inf). Elementwise, in nats."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_var)) elementwise, in nats: the decoder of continuous data (points)."""
    return -0.5 * (math.log(2.0 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))
