"""What the 64 px bar (FID within 3x the real floor) asks of samples, measured on real images
(issue 24): real train images degraded (down to 32 / 16 px and back up, bicubic) and real images
drawn in another class mix (the one a run's samples were classified into, from its `ddpm eval
--json` file), each scored by `ddpm eval` exactly like samples. n = 1000, seed 0.

    python benchmarks/latent64_diagnostics.py                       # real, 32 px, 16 px
    python benchmarks/latent64_diagnostics.py --mix RUN.eval.json   # + real images in that class mix
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import DDPM, KEYS, record, sh  # benchmarks/common.py

from ddpmkit.data.images import load_image_dataset

HERE = Path(__file__).resolve().parent


def degraded(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 (N, C, S, S) -> down to `side` (antialiased bilinear), back up to S (bicubic), uint8."""
    x = images.float() / 255
    small = F.interpolate(x, size=side, mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(small, size=images.shape[-1], mode="bicubic", align_corners=False)
    return (up.clamp(0, 1) * 255).round().to(torch.uint8)


def in_mix(images: torch.Tensor, labels: torch.Tensor, names, counts: dict, n: int, rng) -> torch.Tensor:
    """n real images whose true classes come in the proportions of `counts` ({name: count})."""
    total = sum(counts.values())
    picks = []
    for k, name in enumerate(names):
        idx = torch.nonzero(labels == k).flatten().numpy()
        m = round(counts.get(name, 0) * n / total)
        picks += list(rng.choice(idx, m, replace=m > len(idx)))
    return images[torch.as_tensor(picks)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="folder:../shared/data/twemoji/twemoji_64")
    p.add_argument("--mix", type=Path, help="a `ddpm eval --json` file: real images in its class_counts' mix")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--cache-dir", default="cache/classifiers")
    p.add_argument("--out", type=Path, default=HERE / "out" / "latent64" / "diag")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train = load_image_dataset(args.dataset, split="train")
    rng = np.random.default_rng(0)
    real = train.images[torch.as_tensor(rng.choice(len(train), args.n, replace=len(train) < args.n))]
    sets = {"real": real}
    for side in (32, 16):
        if side < real.shape[-1]:
            sets[f"updown{side}"] = degraded(real, side)
    if args.mix is not None:
        counts = json.loads(args.mix.read_text())["class_counts"]
        mixed = in_mix(train.images, train.labels, train.class_names, counts, args.n, rng)
        sets[f"mix_{args.mix.stem}"] = mixed
    for name, x in sets.items():
        npz = args.out / f"{name}.npz"
        np.savez(npz, arr_0=x.permute(0, 2, 3, 1).numpy())
        m = json.loads(sh(*DDPM, "eval", str(npz), "--dataset", args.dataset, "--json", "-q",
                          "--threads", "1", "--cache-dir", args.cache_dir))  # fmt: skip
        record(args.out, name, {k: m.get(k) for k in KEYS})


if __name__ == "__main__":
    main()
