"""How many CPU threads torch uses: a default that holds when the cores are busy.

PyTorch's own default is one intra-op thread per core. On a machine whose cores are already busy
(another training job, a notebook) its threads wait for each other at every op, and small per-call
work collapses: sampling 2,000 dino points took 20.8 s with 2 threads against 9.6 s with 1 on the
2-core development machine beside two 1-thread training jobs (docs/benchmarks.md, "Threads").
So `threads = 0` ("auto") means:

- one thread for small per-call work (the points MLP: a 2-D batch gains nothing from a second
  thread even on an idle machine);
- otherwise the cores not already busy: the core count less the 1-minute load average, at least 1;
- never an override of `OMP_NUM_THREADS` / `MKL_NUM_THREADS` when the user set them (torchrun does).

An explicit `threads = N` is used as given.
"""

from __future__ import annotations

import os

from .errors import ConfigError

_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
THREADS_HELP = "CPU threads for torch (0: auto: 1 for points, else the cores not already busy)"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def idle_cores() -> int:
    """The cores less the 1-minute load average (rounded), at least 1."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows: no load average
        return cores
    return max(1, min(cores, round(cores - busy)))


def auto_threads(small_work: bool = False) -> int:
    """The `threads = 0` choice described in the module docstring."""
    return 1 if small_work else idle_cores()


def set_threads(threads: int, *, small_work: bool = False, name: str = "--threads") -> int | None:
    """Set torch's intra-op threads: `threads` if > 0, else `auto_threads(small_work)` unless the
    environment already fixes them. Returns the number set (None: left to the environment)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"{name} must be an integer >= 0 (0: auto), got {threads!r}")
    if not threads and any(os.environ.get(k) for k in _ENV):
        return None
    import torch

    n = threads or auto_threads(small_work)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
