"""The Gaussian diffusion process of Ho et al. 2020 ("DDPM") as plain tensor code.

Holds the forward process q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the reverse
p(x_{t-1} | x_t) with a fixed or learned variance (Nichol & Dhariwal 2021, Eq. 15), training losses
for the eps / x0 / v objectives (Salimans & Ho 2022 for v), L_hybrid and L_vlb (the bound's terms in
bits/dim, Ho et al. Eq. 5, are `vlb.py`'s). The model is an argument: nothing here knows about networks,
data or files. A model of a learned variance outputs twice the data's channels (dim 1): the first
half is the objective's prediction, the second the variance's; `split_output` is the one place that
splits them. Buffers are computed in float64 and
stored as float32 tensors; `extract` indexes them for inputs of any rank (points or images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import (
    LEARNED_VARIANCES,
    LOSSES,
    OBJECTIVES,
    STUDENT_OBJECTIVES,
    VARIANCES,
    WEIGHTINGS,
    check_choice,
    check_positive,
    check_variance_loss,
)
from .distillation import consistency_skip, consistency_x0
from .errors import ConfigError
from .gaussians import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl  # noqa: F401 (re-exported)
from .schedules import alphas_cumprod_at, check_betas, schedule_betas
from .vlb import vb_terms_from_output
from .weighting import loss_weights

Model = Callable[..., torch.Tensor]  # model(x_t, t, **cond) -> output like x_t (x2 channels: learned var)
DECODERS = ("discretized", "gaussian")  # L_0: 8-bit data in [-1, 1] (Ho et al. Sec. 3.3), or continuous data
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
        loss_type: "l2", "l1" or "huber" on the model output; "hybrid" (l2 + vlb_weight * L_vlb, the
            mean detached in L_vlb) or "vlb" (L_vlb alone), Nichol & Dhariwal 2021, Sec. 3.1.
        variance: reverse-process variance, "fixed_small" (posterior, beta~_t), "fixed_large" (beta_t),
            "learned_range" (the network's v in [-1, 1] interpolates their logs, Eq. 15) or
            "learned" (the network's output is the log variance).
        timestep_map: for a respaced process, the original timestep each step stands for; the
            model is always called with original timesteps.
        weighting: the training loss's weight over t: "plain" (the objective's own), "min_snr"
            (Hang et al. 2023) or "p2" (Choi et al. 2022), with `weighting_gamma`; see `loss_weights`.
        vlb_weight: lambda of L_hybrid (0.001 in the paper).
        decoder: the t = 0 term of the bound: "discretized" for 8-bit images in [-1, 1], "gaussian"
            (a continuous density) for other data such as points.
        base_log_variances: for a respaced process, (log beta_t, log beta~_t) of the original chain at
            the steps it keeps, to re-derive a "learned" log variance for the respaced chain.
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
        vlb_weight: float = 0.001,
        decoder: str = "discretized",
        base_log_variances: tuple[Sequence[float], Sequence[float]] | None = None,
        sigma_min: float | None = None,
    ):
        check_choice("objective", objective, (*OBJECTIVES, *STUDENT_OBJECTIVES))
        check_choice("loss", loss_type, LOSSES)
        check_choice("variance", variance, VARIANCES)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("decoder", decoder, DECODERS)
        check_variance_loss(variance, loss_type)
        check_positive("vlb_weight", vlb_weight)
        self.objective, self.loss_type, self.variance = objective, loss_type, variance
        self.weighting, self.weighting_gamma = weighting, float(weighting_gamma)
        self.vlb_weight, self.decoder = float(vlb_weight), decoder
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
        self.log_betas = f32(np.log(b))  # the upper end of Eq. 15's interpolation
        # fixed_small or fixed_large; a learned variance has none fixed (these serve only as its fallback)
        fixed = large_var if variance == "fixed_large" else post_var_clipped
        self.model_variance, self.model_log_variance = f32(fixed), f32(np.log(fixed))
        # (log beta, log beta~) of the chain the network was trained on, at this process's steps, and
        # their difference in float64 (it is ~1e-6 at high t, below float32's resolution of the logs)
        base = base_log_variances or (np.log(b), np.log(post_var_clipped))
        self.respaced = base_log_variances is not None
        self.base_log_betas, self.base_log_posterior_variance = f32(base[0]), f32(base[1])
        self.base_log_variance_width = f32(np.asarray(base[0], np.float64) - np.asarray(base[1], np.float64))
        self.loss_weight = f32(loss_weights(ac, objective, weighting, self.weighting_gamma))
        # consistency students: sigma = sqrt(1 / alpha_bar - 1) at the chain's first step is where
        # f(x, t) = x exactly (c_skip = 1); a respaced chain keeps its base chain's
        self.sigma_min = float(np.sqrt(1.0 / ac[0] - 1.0)) if sigma_min is None else float(sigma_min)
        self.consistency_skip = f32(consistency_skip(np.sqrt(1.0 / ac - 1.0), self.sigma_min))

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
        base = (self.base_log_betas.double().numpy(), self.base_log_posterior_variance.double().numpy())
        if all(t.is_integer() for t in keep):
            idx = [int(t) for t in keep]
            ac, tmap = ac_all[idx], self.timestep_map[idx].tolist()
            base = (base[0][idx], base[1][idx])
        else:
            ac = alphas_cumprod_at(ac_all, keep)
            tmap = np.interp(keep, np.arange(self.num_timesteps), self.timestep_map.double().numpy()).tolist()
            base = tuple(np.interp(keep, np.arange(self.num_timesteps), b) for b in base)
        betas = 1.0 - ac / np.append(1.0, ac[:-1])
        return GaussianDiffusion(
            betas, **self.options, timestep_map=tmap, base_log_variances=base, sigma_min=self.sigma_min
        )

    @property
    def options(self) -> dict[str, Any]:
        """The constructor's options that a respaced copy keeps (`respace`)."""
        return {"objective": self.objective, "loss_type": self.loss_type, "variance": self.variance,
                "weighting": self.weighting, "weighting_gamma": self.weighting_gamma,
                "vlb_weight": self.vlb_weight, "decoder": self.decoder}  # fmt: skip

    @property
    def learns_variance(self) -> bool:
        return self.variance in LEARNED_VARIANCES

    def model_output(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, cond: Cond | None = None
    ) -> torch.Tensor:
        """model(x_t, t, **cond) with the *original* timesteps of this (possibly respaced) process."""
        return model(x_t, self.timestep_map.to(t.device)[t], **(cond or {}))

    def split_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the objective's prediction, the variance output or None): a learned-variance model's
        output holds both, stacked along dim 1 (channels of images, coordinates of points)."""
        if not self.learns_variance:
            return out, None
        if out.dim() < 2 or out.shape[1] % 2:
            raise ValueError(
                f"a {self.variance}-variance model outputs 2x the data's channels, got {tuple(out.shape)}"
            )
        return torch.chunk(out, 2, dim=1)

    def model_log_variance_from_output(
        self, var_out: torch.Tensor | None, t: torch.Tensor, x_shape: Sequence[int]
    ) -> torch.Tensor:
        """log Sigma_theta(x_t, t) of p(x_{t-1} | x_t): the fixed one (var_out None), or learned.

        learned_range: v in [-1, 1] -> frac = (v + 1) / 2, log Sigma = frac log beta_t + (1 - frac)
        log beta~_t (Eq. 15), with beta and beta~ of *this* chain, so a respaced chain re-derives its
        variance from the same v (Nichol & Dhariwal 2021, Sec. 4). learned: the output is log Sigma
        of the original chain; on a respaced one (ddpmkit's rule; improved-diffusion uses the raw
        output there) it is turned into its place between that chain's log beta~ and log beta,
        clamped to [0, 1] (at high t the two differ by ~1e-6, so an unclamped place would turn a
        tiny error into a huge variance), and that place is kept between this chain's."""
        if var_out is None:
            return extract(self.model_log_variance, t, x_shape).expand(x_shape)
        lo = extract(self.posterior_log_variance_clipped, t, x_shape)
        hi = extract(self.log_betas, t, x_shape)
        if self.variance == "learned_range":
            frac = (var_out + 1.0) / 2.0
            return frac * hi + (1.0 - frac) * lo  # Eq. 15
        if not self.respaced:
            return var_out
        base_lo = extract(self.base_log_posterior_variance, t, x_shape)
        width = extract(self.base_log_variance_width, t, x_shape)
        ok = width > 0
        frac = ((var_out - base_lo) / torch.where(ok, width, torch.ones_like(width))).clamp(0.0, 1.0)
        return torch.where(ok, frac * hi + (1.0 - frac) * lo, lo)

    # ----- forward process --------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)."""
        mean = extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
        return mean, extract(1.0 - self.alphas_cumprod, t, x0.shape)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 4 reparameterised: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
        self.check_timesteps(t)
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def check_timesteps(self, t: torch.Tensor) -> None:
        """ConfigError unless t holds integer steps in 0..T-1 (a -1 would index the last step)."""
        if not torch.is_tensor(t) or t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise ConfigError(f"t must be an integer tensor of steps 0..{self.num_timesteps - 1}")
        T = self.num_timesteps
        if t.device.type == "cpu" and t.numel() and not (int(t.min()) >= 0 and int(t.max()) < T):
            raise ConfigError(f"t must lie in 0..{T - 1}, got {int(t.min())}..{int(t.max())}")

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
        if self.objective in STUDENT_OBJECTIVES:
            raise ConfigError(f"a {self.objective} student is trained by distillation, not this loss")
        if self.objective == "eps":
            return noise
        return x0 if self.objective == "x0" else self.velocity(x0, t, noise)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        if self.objective == "consistency":
            skip = extract(self.consistency_skip, t, x_t.shape)
            return consistency_x0(x_t, model_out, extract(self.alphas_cumprod, t, x_t.shape), skip)
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
        self,
        x0_pred: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        log_variance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of p(x_{t-1} | x_t) given the predicted x0: the posterior
        mean at x0_pred (Eq. 11 for eps) with the model's fixed variance, or `log_variance` (learned,
        from `model_log_variance_from_output`)."""
        mean, _, _ = self.q_posterior_mean_variance(x0_pred, x_t, t)
        if log_variance is None:
            return (
                mean,
                extract(self.model_variance, t, x_t.shape),
                extract(self.model_log_variance, t, x_t.shape),
            )
        return mean, torch.exp(log_variance), log_variance

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
        out, var_out = self.split_output(self.model_output(model, x_t, t, cond).float())
        x0_pred, eps_pred = self.predict_x0_eps(x_t, t, out, clip)
        log_var = None if var_out is None else self.model_log_variance_from_output(var_out, t, x_t.shape)
        mean, variance, log_variance = self.p_mean_variance_from_x0(x0_pred, x_t, t, log_var)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "x0_pred": x0_pred,
                "eps_pred": eps_pred}  # fmt: skip

    # ----- training ---------------------------------------------------------------------------
    def training_loss(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: Cond | None = None
    ) -> torch.Tensor:
        """Per-example training loss, (N,).

        l2 / l1 / huber: the simplified loss (Ho et al. Eq. 14 for eps), averaged over non-batch dims
        and multiplied by `loss_weight[t]` (1 for the plain weighting). hybrid: that l2 loss plus
        vlb_weight * L_vlb (Nichol & Dhariwal 2021, Eq. 16) with the mean detached in L_vlb, so that
        L_vlb trains only the variance (Sec. 3.1); vlb: L_vlb alone. L_vlb is estimated from the one t
        drawn as T * L_t (L_t in bits/dim, `vlb.vb_terms_bpd`), unbiased for the sum over t."""
        x_t = self.q_sample(x0, t, noise)
        out, var_out = self.split_output(self.model_output(model, x_t, t, cond).float())
        if self.loss_type == "vlb":
            return self.num_timesteps * vb_terms_from_output(self, out, var_out, x0, x_t, t)
        target = self.training_target(x0, t, noise)
        if self.loss_type in ("l2", "hybrid"):
            err = (out - target) ** 2
        elif self.loss_type == "l1":
            err = (out - target).abs()
        else:
            err = F.huber_loss(out, target, reduction="none", delta=1.0)
        loss = err.flatten(1).mean(1)
        if self.weighting != "plain":
            loss = loss * self.loss_weight.to(t.device)[t]
        if self.loss_type == "hybrid":  # Eq. 16, the mean's output detached (stop-gradient)
            vb = vb_terms_from_output(self, out.detach(), var_out, x0, x_t, t)
            loss = loss + self.vlb_weight * self.num_timesteps * vb
        return loss


def build_diffusion(cfg, decoder: str = "discretized") -> GaussianDiffusion:
    """A GaussianDiffusion from a DiffusionConfig (schedule, T, objective, loss, variance); `decoder`
    from the data space (discretized for 8-bit images, gaussian for points)."""
    return GaussianDiffusion(
        schedule_betas(cfg),
        objective=cfg.objective,
        loss_type=cfg.loss,
        variance=cfg.variance,
        weighting=cfg.weighting,
        weighting_gamma=cfg.weighting_gamma,
        vlb_weight=cfg.vlb_weight,
        decoder=decoder,
    )
