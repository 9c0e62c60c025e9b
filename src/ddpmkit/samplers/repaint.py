"""RePaint inpainting (Lugmayr et al. 2022, Algorithm 1 with the resampling schedule of Sec. 4.2).

Every reverse step denoises the whole image with the ancestral DDPM step, then replaces the known
pixels by the known image noised to the same level, x_{t-1} = m * x^known_{t-1} + (1 - m) *
x^unknown_{t-1} (Alg. 1, lines 5-8). Inside the step loop, after going down `jump_length` steps the
state is noised back up `jump_length` steps with q(x_t | x_{t-1}) (line 10), `resample - 1` times
per jump, so the generated region has time to agree with the known one. The walk over the process
indices is `jump_schedule`; on a process of n steps it costs about n * resample model calls.
"""

from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..diffusion import Cond
from .ancestral import ancestral_step
from .base import Callback, Hook, end_step, randn_like


def jump_schedule(n: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """The process indices RePaint visits, from n (pure noise) down to 0 (the sample): it steps down
    one at a time, and at every `jump_length`-th index (above the last jump) goes back up
    `jump_length` steps, `resample - 1` times. A step down from i runs the reverse step at i - 1."""
    if jump_length < 1 or resample < 1:
        raise ValueError(f"jump_length and resample must be >= 1, got {jump_length}, {resample}")
    jumps = {j: resample - 1 for j in range(jump_length, n - jump_length + 1, jump_length)}
    t, walk = n, [n]
    while t > 0:
        t -= 1
        walk.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            walk += list(range(t + 1, t + jump_length + 1))
            t += jump_length
    return walk


def repaint_nfe(n: int, jump_length: int = 10, resample: int = 10) -> int:
    """Model calls of RePaint on a process of n steps: one per step down of `jump_schedule`."""
    walk = jump_schedule(n, jump_length, resample)
    return sum(b < a for a, b in zip(walk, walk[1:], strict=False))


@torch.inference_mode()
def repaint_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    known: torch.Tensor,
    keep: torch.Tensor,
    jump_length: int = 10,
    resample: int = 10,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Args:
        x: (N, *D) pure noise at the process's last step.
        known: (N, *D) the image whose pixels are kept (model space; values under keep = 0 unused).
        keep: mask broadcastable to x, 1 where `known` is kept, 0 where the model fills in.
    Returns: (N, *D) samples at t = 0 that equal `known` exactly where keep = 1."""
    from ..progress import bar as progress_bar

    proc, n = denoiser.diffusion, denoiser.num_timesteps
    keep = keep.to(x.dtype)
    walk = jump_schedule(n, jump_length, resample)
    bar = progress_bar(
        total=repaint_nfe(n, jump_length, resample), desc="repaint", disable=not progress, leave=False
    )
    for a, b in zip(walk, walk[1:], strict=False):
        # walk value a is the paper's t (x_T at a = n): the step down from a runs process index a - 1
        if b > a:  # Alg. 1 line 10: x_t ~ q(x_t | x_{t-1}), one step back up, with beta_t = betas[t - 1]
            beta = proc.betas[b - 1].to(x.device)
            x = torch.sqrt(1 - beta) * x + torch.sqrt(beta) * randn_like(x, generator)
            continue
        t = torch.full((x.shape[0],), b, dtype=torch.long, device=x.device)
        x, x0_pred = ancestral_step(denoiser, x, t, cond, generator)  # lines 6-7: the unknown part
        if b > 0:  # line 5: the known part noised to the new level (index b - 1)
            tk = torch.full_like(t, b - 1)
            x_known = proc.q_sample(known, tk, randn_like(x, generator))
        else:
            x_known = known
        x = keep * x_known + (1 - keep) * x  # line 8
        x = end_step(denoiser, n - 1 - b, x, x0_pred, callback, hook)
        bar.update(1)
    bar.close()
    return torch.where(keep.bool().expand_as(x), known, x)  # exactly the known pixels
