"""The Gaussian diffusion process of Ho et al. 2020 ("DDPM") as plain tensor code.

Holds the forward process q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the reverse
p(x_{t-1} | x_t), training losses for the eps / x0 / v objectives (Salimans & Ho 2022 for v) and
the variational bound in bits/dim (Ho et al. Eq. 5; Nichol & Dhariwal 2021). The model is an
argument: nothing here knows about networks, data or files. Buffers are computed in float64 and
stored as float32 tensors; `extract` indexes them for inputs of any rank (points or images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import LOSSES, OBJECTIVES, VARIANCES, WEIGHTINGS, check_choice
from .errors import ConfigError
from .schedules import alphas_cumprod_at, check_betas, make_beta_schedule

Model = Callable[..., torch.Tensor]  # model(x_t, t, **cond) -> output shaped like x_t
Cond = Mapping[str, Any]  # conditioning passed to the model by keyword: {"y": labels, ...}


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """a[t] reshaped to (N, 1, ..., 1) so that it broadcasts against a tensor of shape x_shape."""
    out = a.to(t.device)[t]
    return out.reshape(len(t), *([1] * (len(x_shape) - 1)))


class GaussianDiffusion:
    """Coefficients of a discrete-time Gaussian diffusion with T steps.

    Args:
        betas: (T,) noise schedule, 0 < beta <= 1.
        objective: what the model predicts: "eps" (noise), "x0" (clean data) or "v".
        loss_type: "l2", "l1" or "huber" on the model output.
        variance: reverse-process variance, "fixed_small" (posterior, beta~_t) or "fixed_large" (beta_t).
        timestep_map: for a respaced process, the original timestep each step stands for; the
            model is always called with original timesteps.
        weighting: the training loss's weight over t: "plain" (the objective's own), "min_snr"
            (Hang et al. 2023) or "p2" (Choi et al. 2022), with `weighting_gamma`; see `loss_weights`.
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        objective: str = "eps",
        loss_type: str = "l2",
        variance: str = "fixed_small",
        timestep_map: Sequence[float] | None = None,
        weighting: str = "plain",
        weighting_gamma: float = 5.0,
    ):
        check_choice("objective", objective, OBJECTIVES)
        check_choice("loss", loss_type, LOSSES)
        check_choice("variance", variance, VARIANCES)
        check_choice("weighting", weighting, WEIGHTINGS)
        self.objective, self.loss_type, self.variance = objective, loss_type, variance
        self.weighting, self.weighting_gamma = weighting, float(weighting_gamma)
        b = check_betas(np.asarray(betas, dtype=np.float64))
        self.num_timesteps = T = len(b)
        tmap = np.arange(T) if timestep_map is None else np.asarray(timestep_map, dtype=np.float64)
        integer = bool(np.all(tmap == np.round(tmap)))  # fractional on logSNR / Karras grids
        self.timestep_map = torch.as_tensor(tmap, dtype=torch.long if integer else torch.float32)
        a = 1.0 - b
        ac = np.cumprod(a)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)  # Eq. 7: beta~_t
        # log-variance clipped at t=0, where beta~_0 = 0 (improved-diffusion)
        post_var_clipped = np.append(post_var[1] if T > 1 else b[0], post_var[1:])
        large_var = np.append(post_var[1] if T > 1 else b[0], b[1:])
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        self.betas, self.alphas, self.alphas_cumprod = f32(b), f32(a), f32(ac)
        self.alphas_cumprod_prev = f32(ac_prev)
        self.sqrt_alphas_cumprod = f32(np.sqrt(ac))
        self.sqrt_one_minus_alphas_cumprod = f32(np.sqrt(1.0 - ac))
        self.sqrt_recip_alphas_cumprod = f32(np.sqrt(1.0 / ac))
        self.sqrt_recipm1_alphas_cumprod = f32(np.sqrt(1.0 / ac - 1.0))
        self.posterior_variance = f32(post_var)
        self.posterior_log_variance_clipped = f32(np.log(post_var_clipped))
        self.posterior_mean_coef1 = f32(b * np.sqrt(ac_prev) / (1.0 - ac))
        self.posterior_mean_coef2 = f32((1.0 - ac_prev) * np.sqrt(a) / (1.0 - ac))
        if variance == "fixed_small":
            self.model_variance, self.model_log_variance = (
                f32(post_var_clipped),
                self.posterior_log_variance_clipped,
            )
        else:
            self.model_variance, self.model_log_variance = f32(large_var), f32(np.log(large_var))
        self.loss_weight = f32(loss_weights(ac, objective, weighting, self.weighting_gamma))

    # ----- respacing -------------------------------------------------------------------------
    def respace(self, timesteps: Sequence[float]) -> GaussianDiffusion:
        """A process that visits only `timesteps` (any order, within 0..T-1).

        New betas are recomputed from alpha_bar so that the marginals q(x_t | x0) are unchanged:
        beta'_i = 1 - alpha_bar(t_i) / alpha_bar(t_{i-1}) (Nichol & Dhariwal 2021, Sec. 4).
        Fractional timesteps (logSNR and Karras grids) take alpha_bar from `alphas_cumprod_at` and
        call the network at the fractional t.
        """
        keep = sorted(set(float(t) for t in timesteps))
        if not keep or keep[0] < 0 or keep[-1] > self.num_timesteps - 1:
            raise ConfigError(f"timesteps must lie in 0..{self.num_timesteps - 1}")
        ac_all = self.alphas_cumprod.double().numpy()
        if all(t.is_integer() for t in keep):
            idx = [int(t) for t in keep]
            ac, tmap = ac_all[idx], self.timestep_map[idx].tolist()
        else:
            ac = alphas_cumprod_at(ac_all, keep)
            tmap = np.interp(keep, np.arange(self.num_timesteps), self.timestep_map.double().numpy()).tolist()
        betas = 1.0 - ac / np.append(1.0, ac[:-1])
        return GaussianDiffusion(
            betas,
            objective=self.objective,
            loss_type=self.loss_type,
            variance=self.variance,
            timestep_map=tmap,
            weighting=self.weighting,
            weighting_gamma=self.weighting_gamma,
        )

    def model_output(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None
    ) -> torch.Tensor:
        """model(x_t, t, **cond) with the *original* timesteps of this (possibly respaced) process."""
        return model(x_t, self.timestep_map.to(t.device)[t], **(cond or {}))

    # ----- forward process --------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)."""
        mean = extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
        return mean, extract(1.0 - self.alphas_cumprod, t, x0.shape)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 4 reparameterised: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Eqs. 6-7: mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape) * x0
            + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        return (
            mean,
            extract(self.posterior_variance, t, x_t.shape),
            extract(self.posterior_log_variance_clipped, t, x_t.shape),
        )

    # ----- parameterisations ------------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. 4 solved for x0: x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.shape
        )

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Salimans & Ho 2022: x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v
        )

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * noise
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0
        )

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.objective == "eps":
            return noise
        return x0 if self.objective == "x0" else self.velocity(x0, t, noise)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        if self.objective == "eps":
            return self.predict_x0_from_eps(x_t, t, model_out)
        return model_out if self.objective == "x0" else self.predict_x0_from_v(x_t, t, model_out)

    def predict_x0_eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_out: torch.Tensor,
        clip: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) predicted from a model output of this process's objective; with `clip`, x0 is
        clamped and eps re-derived from it so that the pair stays consistent with x_t (Eq. 4)."""
        x0 = self.predict_x0(x_t, t, model_out)
        if clip is not None:
            x0 = x0.clamp(*clip)
        if self.objective == "eps" and clip is None:
            return x0, model_out
        return x0, self.predict_eps_from_x0(x_t, t, x0)

    # ----- reverse process --------------------------------------------------------------------
    def p_mean_variance_from_x0(
        self, x0_pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of p(x_{t-1} | x_t) given the predicted x0: the posterior
        mean at x0_pred (Eq. 11 for eps) with the model's fixed variance."""
        mean, _, _ = self.q_posterior_mean_variance(x0_pred, x_t, t)
        return (
            mean,
            extract(self.model_variance, t, x_t.shape),
            extract(self.model_log_variance, t, x_t.shape),
        )

    def p_mean_variance(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip: tuple[float, float] | None = None,
        cond: Cond | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean and variance of p(x_{t-1} | x_t) for model(x_t, t, **cond).

        Returns a dict with mean, variance, log_variance, x0_pred and eps_pred (all like x_t).
        """
        out = self.model_output(model, x_t, t, cond).float()
        x0_pred, eps_pred = self.predict_x0_eps(x_t, t, out, clip)
        mean, variance, log_variance = self.p_mean_variance_from_x0(x0_pred, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "x0_pred": x0_pred,
            "eps_pred": eps_pred,
        }

    # ----- training ---------------------------------------------------------------------------
    def training_loss(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: Cond | None = None
    ) -> torch.Tensor:
        """Per-example simplified loss (Ho et al. Eq. 14 for eps), averaged over non-batch dims and
        multiplied by `loss_weight[t]` (1 for the plain weighting): (N,)."""
        x_t = self.q_sample(x0, t, noise)
        out = self.model_output(model, x_t, t, cond).float()
        target = self.training_target(x0, t, noise)
        if self.loss_type == "l2":
            err = (out - target) ** 2
        elif self.loss_type == "l1":
            err = (out - target).abs()
        else:
            err = F.huber_loss(out, target, reduction="none", delta=1.0)
        loss = err.flatten(1).mean(1)
        return loss if self.weighting == "plain" else loss * self.loss_weight.to(t.device)[t]

    # ----- likelihood (bits/dim) --------------------------------------------------------------
    def vb_terms_bpd(
        self, model: Model, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None
    ) -> torch.Tensor:
        """Eq. 5 terms in bits/dim: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the
        discretised Gaussian decoder -log p(x0 | x1) at t = 0 (x0 in [-1, 1], 256 bins). Shape (N,)."""
        true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip=(-1.0, 1.0), cond=cond)
        kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"]).flatten(1).mean(1)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = nll.flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x0) || N(0, I)) in bits/dim, shape (N,)."""
        t = torch.full((len(x0),), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, var = self.q_mean_variance(x0, t)
        zero = torch.zeros_like(mean)
        return normal_kl(mean, torch.log(var).expand_as(mean), zero, zero).flatten(1).mean(1) / math.log(2.0)


def loss_weights(alphas_cumprod: np.ndarray, objective: str, weighting: str, gamma: float) -> np.ndarray:
    """Per-t factor on the objective's squared error that turns its implicit weighting into `weighting`.

    With SNR = alpha_bar / (1 - alpha_bar), an error on eps, v or x0 is an error on x0 weighted by SNR,
    SNR + 1 or 1 (Salimans & Ho 2022, Sec. 4); the factor is the wanted x0-weight over that one:
    min_snr: min(SNR, gamma) (Hang et al. 2023, Eq. 9); p2: SNR / (1 + SNR)^gamma, i.e. 1 / (1 + SNR)^gamma
    on eps (Choi et al. 2022, Eq. 8 with k = 1); plain: the objective's own (factor 1).
    """
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    own = {"eps": snr, "v": snr + 1.0, "x0": np.ones_like(snr)}[objective]
    if weighting == "plain":
        return np.ones_like(snr)
    wanted = np.minimum(snr, gamma) if weighting == "min_snr" else snr / (1.0 + snr) ** gamma
    # where SNR underflows to 0 (eps), both ratios tend to 1
    return np.divide(wanted, own, out=np.ones_like(snr), where=own > 0)


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


def build_diffusion(cfg) -> GaussianDiffusion:
    """A GaussianDiffusion from a DiffusionConfig (schedule, T, objective, loss, variance)."""
    return GaussianDiffusion(
        make_beta_schedule(cfg.schedule, cfg.timesteps),
        objective=cfg.objective,
        loss_type=cfg.loss,
        variance=cfg.variance,
        weighting=cfg.weighting,
        weighting_gamma=cfg.weighting_gamma,
    )
