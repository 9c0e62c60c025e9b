"""Post-hoc EMA from dense checkpoints: which EMA of a finished run samples best?

A run trained with `--train.checkpoint_every K --train.keep_every K` keeps its raw weights every K
steps. The EMA that `--train.ema_decay D` (with its warm-up, `training.step.ema_decay_at`) would
have given is rebuilt from them: start from the first checkpoint's own EMA (exact), then apply the
trainer's update e <- d_n e + (1 - d_n) theta_n for every step n, theta_n interpolated linearly
between the two checkpoints around it. The EMA does not feed back into training, so this is the
run that `--train.ema_decay D` would have trained, up to the interpolation (checked: `--check`
rebuilds the run's own decay and prints its distance to the EMA the trainer kept).

Measured caveat (docs/latent.md, "The strong run's EMA"): on the 64 px latent runs, snapshots every 50
steps rebuild the default EMA (0.995) to within 5% of its distance from the raw weights, and that
rebuilt EMA still samples at FID 3.15 against the kept EMA's 2.03: at that spacing compare rebuilt
EMAs only with each other, and confirm a choice with a run trained with the decay itself.

    python benchmarks/posthoc_ema.py RUN --decay 0.999 -o OUT     # OUT: a run directory to sample
    python benchmarks/posthoc_ema.py RUN --check
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpmkit import checkpoint as ck
from ddpmkit.io import load_tensors, read_metadata
from ddpmkit.training.step import ema_decay_at


def snapshots(
    run: Path, final: dict[str, torch.Tensor], step: int
) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """(step, tensors) of every kept checkpoint, then the final weights (`final`, model.safetensors,
    trained for `step` steps)."""
    out = []
    for path in ck.list_checkpoints(run):
        tensors, meta = ck.load_checkpoint(path)
        out.append((meta["step"], tensors))
    if step > out[-1][0]:
        out.append((step, final))
    return out


def power_decay(gamma: float):
    """EDM2's power-function EMA (Karras et al. 2024, Eq. 1): beta_t = (1 - 1 / t)^(gamma + 1)."""
    return lambda step: (1 - 1 / (step + 1)) ** (gamma + 1)


def rebuild_ema(snaps, decay_at) -> dict[str, torch.Tensor]:
    """The EMA after the last snapshot's step, decay_at(step) at each update, from raw weights at the
    snapshots (interpolated linearly between them)."""
    names = [k[len("model.") :] for k in snaps[0][1] if k.startswith("model.")]
    ema = {n: snaps[0][1]["ema." + n].double().clone() for n in names}
    for (s0, a), (s1, b) in zip(snaps[:-1], snaps[1:], strict=True):
        for n in names:
            if not ema[n].is_floating_point():
                continue
            x0, x1 = a["model." + n].double(), b["model." + n].double()
            for step in range(s0, s1):  # the update after optimizer step `step` + 1
                w = (step + 1 - s0) / (s1 - s0)
                d = decay_at(step)
                ema[n].mul_(d).add_((1 - w) * x0 + w * x1, alpha=1 - d)
    last = snaps[-1][1]
    return {n: ema[n].to(last["ema." + n].dtype) for n in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--decay", type=float, default=None, help="EMA decay to rebuild (default: the run's)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--power", type=float, default=None, help="EDM2 power-function EMA with this gamma")
    p.add_argument("-o", "--out", type=Path)
    p.add_argument("--check", action="store_true", help="rebuild the run's own EMA and compare")
    a = p.parse_args()
    cfg = ck.load_config(a.run)
    final, meta = load_tensors(a.run / ck.MODEL), read_metadata(a.run / ck.MODEL)
    snaps = snapshots(a.run, final, int(meta["step"]))
    print(f"{len(snaps)} snapshots, steps {snaps[0][0]}..{snaps[-1][0]}")
    decay = cfg.train.ema_decay if a.decay is None or a.check else a.decay
    warmup = cfg.train.ema_warmup and not a.no_warmup
    if a.power is not None and not a.check:
        ema = rebuild_ema(snaps, power_decay(a.power))
    else:
        ema = rebuild_ema(snaps, lambda step: ema_decay_at(decay, step, warmup))
    last = snaps[-1][1]
    if a.check:
        num = sum(float((ema[n].double() - last["ema." + n].double()).pow(2).sum()) for n in ema)
        den = sum(float((last["model." + n].double() - last["ema." + n].double()).pow(2).sum()) for n in ema)
        print(f"rebuilt decay {decay}: |rebuilt - kept EMA| / |raw - kept EMA| = {(num / den) ** 0.5:.4f}")
    if a.out:
        tensors = dict(final)
        tensors.update({"ema." + n: v for n, v in ema.items()})
        a.out.mkdir(parents=True, exist_ok=True)
        if a.power is None:
            cfg = cfg.replace(**{"train.ema_decay": decay, "train.ema_warmup": warmup})
        ck.save_model(a.out, cfg, tensors, snaps[-1][0], meta["space"])
        print("wrote", a.out)


if __name__ == "__main__":
    main()
