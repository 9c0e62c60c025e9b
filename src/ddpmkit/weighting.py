"""The training loss's weighting over t: each objective's implicit weight on x0 errors, and the
factor that turns it into min-SNR (Hang et al. 2023) or P2 (Choi et al. 2022). Plain numpy over the
schedule's alpha_bar; `GaussianDiffusion` stores the result as its `loss_weight` buffer."""

from __future__ import annotations

import numpy as np


def loss_weights(alphas_cumprod: np.ndarray, objective: str, weighting: str, gamma: float) -> np.ndarray:
    """Per-t factor on the objective's squared error that turns its implicit weighting into `weighting`.

    With SNR = alpha_bar / (1 - alpha_bar), an error on eps, v or x0 is an error on x0 weighted by SNR,
    SNR + 1 or 1 (Salimans & Ho 2022, Sec. 4); the factor is the wanted x0-weight over that one:
    min_snr: min(SNR, gamma) (Hang et al. 2023, Eq. 9); p2: SNR / (1 + SNR)^gamma, i.e. 1 / (1 + SNR)^gamma
    on eps (Choi et al. 2022, Eq. 8 with k = 1); plain: the objective's own (factor 1).
    """
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    own = {"eps": snr, "v": snr + 1.0, "x0": np.ones_like(snr), "consistency": np.ones_like(snr)}[objective]
    if weighting == "plain":
        return np.ones_like(snr)
    wanted = np.minimum(snr, gamma) if weighting == "min_snr" else snr / (1.0 + snr) ** gamma
    # where SNR underflows to 0 (eps), both ratios tend to 1
    return np.divide(wanted, own, out=np.ones_like(snr), where=own > 0)
