"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): exponential integrators of the probability-flow ODE in data prediction.

Notation: a step goes from level t to level s with alpha, sigma, lambda = log(alpha / sigma) and
h = lambda_s - lambda_t. The ODE's exact solution is (Lu et al. 2022b, Eq. 9)

    x_s = (sigma_s / sigma_t) x_t + sigma_s * int_{lambda_t}^{lambda_s} e^lambda x0(lambda) d lambda,

and each solver expands x0(lambda) to order k from its last k predictions m0 (newest), m1, m2.
The last step goes to sigma = 0 and returns m0, and the order is lowered at the first steps
(no history yet) and at the final ones (Lu et al.'s `lower_order_final`, stable at few steps).
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond
from .base import Callback, Hook, end_step, noise_levels, randn_like, sampler, steps


@sampler(summary="DPM-Solver++ multistep (Lu et al. 2022)", grid="uniform")
@torch.inference_mode()
def dpmpp_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    order: int = 2,
    stochastic: bool = False,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) / (3M) (order 2 / 3), or with `stochastic` the SDE-DPM-Solver++(2M).

    Args: x: (N, *D) at the process's last step. Returns: (N, *D) samples at sigma = 0.
    One model call per step.
    """
    if order not in (1, 2, 3) or (stochastic and order > 2):
        raise ValueError(f"DPM-Solver++ has orders 1-3 (1-2 for the SDE variant), got {order}")
    alphas, sigmas, lambdas = noise_levels(denoiser)
    n, m = denoiser.num_timesteps, []  # m: the latest x0 predictions, newest first
    for i, t in steps(denoiser, x, progress):
        pred = denoiser(x, t, cond)
        m = [pred.x0, *m][:order]
        if sigmas[i + 1] == 0:  # the final step to the data: x0 itself
            x = pred.x0
        else:
            k = min(order, len(m), n - i)  # lower order at the first steps and near the end
            hs = [lambdas[i + 1 - j] - lambdas[i - j] for j in range(k)]  # h, h_prev, h_prev2
            level = (alphas[i + 1], sigmas[i + 1], sigmas[i])
            if stochastic:
                x = _sde_step(x, m[:k], hs, *level, randn_like(x, generator))
            else:
                x = _ode_step(x, m[:k], hs, *level)
        x = end_step(denoiser, i, x, pred.x0, callback, hook)
    return x


def _ode_step(x, m, hs, alpha_s, sigma_s, sigma_t):
    """One multistep update of order len(m) from level t to level s."""
    h = hs[0]
    phi1 = math.expm1(-h)  # e^{-h} - 1
    x = (sigma_s / sigma_t) * x - alpha_s * phi1 * m[0]  # DPM-Solver++(1) = DDIM (Lu et al. 2022b, Eq. 10)
    if len(m) == 2:  # 2M: D = (1 + 1/2r) m0 - (1/2r) m1, r = h_prev / h (Lu et al. 2022b, Alg. 2)
        r = hs[1] / h
        x = x - alpha_s * phi1 * (m[0] - m[1]) / (2 * r)
    elif len(m) == 3:  # 3M: the Taylor terms in x0' and x0'' from backward differences
        r0, r1 = hs[1] / h, hs[2] / h
        d1_0, d1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1  # ~ h x0' at two points
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # ~ h x0'(lambda_t), error O(h^3)
        d2 = 2 * (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 x0''(lambda_t)
        phi2 = phi1 / h + 1  # int_0^h e^{u-h} u du / h
        phi3 = phi2 / h - 0.5  # -int_0^h e^{u-h} u^2 / 2 du / h^2
        x = x + alpha_s * phi2 * d1 - alpha_s * phi3 * d2
    return x


def _sde_step(x, m, hs, alpha_s, sigma_s, sigma_t, z):
    """SDE-DPM-Solver++(2M) with the midpoint difference (Lu et al. 2022b, App. B):
    x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) (m0 + D1 / 2) + sigma_s sqrt(1 - e^{-2h}) z,
    D1 = (m0 - m1) / r. Its first order is ancestral DDPM with the posterior variance."""
    h = hs[0]
    one_minus = -math.expm1(-2 * h)  # 1 - e^{-2h}
    d = m[0] if len(m) == 1 else m[0] + 0.5 * (m[0] - m[1]) / (hs[1] / h)
    return (
        (sigma_s / sigma_t) * math.exp(-h) * x + alpha_s * one_minus * d + sigma_s * math.sqrt(one_minus) * z
    )
