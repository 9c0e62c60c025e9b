"""Memory estimates, checked before work starts: a run whose data or training step cannot fit is
refused with one line instead of failing with a MemoryError minutes later.

The training estimate counts the parameters five times (weights, EMA copy, gradient, AdamW's two
moments) plus twice the activations of one forward pass at the per-process micro-batch (autograd keeps
them for the backward pass, which makes gradients of the same size), measured by running the model on
PyTorch's "meta" device (shapes only: no memory, no compute).
"""

from __future__ import annotations

import os

import torch

from .errors import ConfigError

PARAM_COPIES = 5  # weights, EMA, gradient, Adam m and v


def available_bytes(device: torch.device | None = None) -> int | None:
    """Free memory of `device` (CUDA: free device memory; CPU: the OS's MemAvailable), or None."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def check_fits(what: str, need: float, device: torch.device | None = None) -> None:
    """ConfigError when `need` bytes exceed the memory available now."""
    have = available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(f"{what} needs about {gib(need)}, more than the {gib(have)} available")


def training_bytes(model_factory, data_shape: tuple[int, ...], batch: int, cond: bool = False) -> int:
    """Bytes one training process needs for the model built by `model_factory()` at `batch`."""
    with torch.device("meta"):
        model = model_factory()
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        acts = [0]

        def count(module, inputs, output):
            if torch.is_tensor(output) and not list(module.children()):  # leaf modules only
                acts[0] += output.numel() * output.element_size()

        hooks = [m.register_forward_hook(count) for m in model.modules()]
        x = torch.empty((batch, *data_shape))
        t = torch.zeros(batch, dtype=torch.long)
        kwargs = {"y": torch.zeros(batch, dtype=torch.long)} if cond else {}
        model(x, t, **kwargs)
        for h in hooks:
            h.remove()
    return PARAM_COPIES * params + 2 * acts[0]
