"""Measurements of class conditioning, guidance and inpainting (issue: steer what it generates).

    # guidance sweep of a class-conditional image run: per-class accuracy and FID per w
    python benchmarks/steering.py guidance runs/mnist_cond --data-dir ../shared/data/mnist \
        --cache-dir cache/classifiers --weights 0,0.5,1,2,3 --per-class 100
    # one model, 13 Datasaurus shapes: SW1 ratio per shape
    python benchmarks/steering.py datasaurus runs/datasaurus --per-class 2000
    # RePaint on the left half of 200 MNIST test digits, scored by the dataset classifier
    python benchmarks/steering.py inpaint runs/mnist_cond --data-dir ../shared/data/mnist \
        --cache-dir cache/classifiers -n 200

Each prints a Markdown table and appends JSON rows to --out (default docs/study/steering.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data.images import load_image_dataset
from ddpmkit.data.user_images import read_mask
from ddpmkit.eval import evaluate_samples_file
from ddpmkit.eval.classifier_model import load_classifier
from ddpmkit.io import atomic_write_bytes
from ddpmkit.report import write_class_samples
from ddpmkit.run import load_run
from ddpmkit.samplers import describe_options
from ddpmkit.steer import class_indices, inpaint


def _append(out: Path, row: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def guidance(args) -> None:
    run = load_run(args.run)
    classes = class_indices(run, "all")
    print(
        f"| w | FID | lowest class accuracy | mean | confident | recall | time |  "
        f"({describe_options(run.cfg.sample, run.diffusion.num_timesteps, True)})"
    )
    print("|---|---|---|---|---|---|---|")
    for w in [float(v) for v in args.weights.split(",")]:
        path = Path(args.tmp) / f"guidance_{w:g}.npz"
        t0 = time.time()
        write_class_samples(
            run, path, classes, args.per_class, run.cfg.sample, [w], seed=args.seed, progress=False
        )
        secs = time.time() - t0
        r = evaluate_samples_file(
            path, run.cfg.data.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, seed=args.seed
        )
        acc = r["class_accuracy"]
        row = {
            "bench": "guidance",
            "run": args.run,
            "w": w,
            "fid": r["fid"],
            "fid_reference": r["fid_reference"],
            "class_accuracy": acc,
            "min_acc": min(acc.values()),
            "mean_acc": float(np.mean(list(acc.values()))),
            "confident": r["confident_fraction"],
            "recall": r["recall"],
            "precision": r["precision"],
            "n": r["n"],
            "seed": args.seed,
            "sample_s": secs,
            "sampler": run.cfg.sample.sampler,
            "steps": run.cfg.sample.steps,
        }
        _append(Path(args.out), row)
        print(
            f"| {w:g} | {r['fid']:.2f} | {row['min_acc']:.1%} ({min(acc, key=acc.get)}) "
            f"| {row['mean_acc']:.1%} "
            f"| {r['confident_fraction']:.1%} | {r['recall']:.3f} | {secs:.0f} s |",
            flush=True,
        )


def datasaurus(args) -> None:
    run = load_run(args.run)
    path = Path(args.tmp) / "datasaurus.npz"
    w = [float(v) for v in args.weights.split(",")]
    print("| w | " + " | ".join(run.cfg.data.class_names) + " | worst |")
    print("|---|" + "---|" * (len(run.cfg.data.class_names) + 1))
    for weight in w:
        write_class_samples(
            run,
            path,
            class_indices(run, "all"),
            args.per_class,
            run.cfg.sample,
            [weight],
            seed=args.seed,
            progress=False,
        )
        r = evaluate_samples_file(path, "datasaurus")
        ratios = {k: v["swd_ratio"] for k, v in r["per_class"].items()}
        _append(
            Path(args.out),
            {
                "bench": "datasaurus",
                "run": args.run,
                "w": weight,
                "ratios": ratios,
                "n_per_class": args.per_class,
                "seed": args.seed,
                "mixture_ratio": r["swd_ratio"],
            },
        )
        print(
            f"| {weight:g} | "
            + " | ".join(f"{v:.2f}" for v in ratios.values())
            + f" | {max(ratios.values()):.2f} |",
            flush=True,
        )


def inpainting(args) -> None:
    run = load_run(args.run)
    test = load_image_dataset(run.cfg.data.dataset, split="test", data_dir=args.data_dir)
    images, labels = test.images[: args.n], test.labels[: args.n]  # (n, C, H, W) uint8
    clf = load_classifier(run.cfg.data.dataset, args.cache_dir)
    fill = torch.from_numpy(read_mask(args.mask, run.data_shape[1:]))[None, None]
    t0 = time.time()
    x = inpaint(
        run,
        run.space.to_model(images),
        fill,
        steps=args.steps,
        jump_length=args.jump_length,
        resample=args.resample,
        seed=args.seed,
        progress=True,
    )
    secs = time.time() - t0
    done = torch.from_numpy(run.space.to_data(x)).permute(0, 3, 1, 2).contiguous()
    blanked = torch.where(fill.expand_as(images), torch.zeros_like(images), images)
    acc = {}
    for name, batch in (("unmasked", images), ("masked (filled with black)", blanked), ("inpainted", done)):
        acc[name] = float((clf.embed(batch)[1].argmax(1) == labels).float().mean())
    assert torch.equal(done[~fill.expand_as(done)], images[~fill.expand_as(images)])  # known pixels kept
    buf = __import__("io").BytesIO()
    np.savez(buf, arr_0=done.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
    atomic_write_bytes(Path(args.tmp) / "inpainted.npz", buf.getvalue())
    row = {
        "bench": "inpaint",
        "run": args.run,
        "mask": args.mask,
        "n": args.n,
        "steps": args.steps,
        "jump_length": args.jump_length,
        "resample": args.resample,
        "accuracy": acc,
        "seconds": secs,
        "seed": args.seed,
    }
    _append(Path(args.out), row)
    print("| test digits | classifier label = true label |\n|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {v:.1%} |")
    print(
        f"({args.n} digits, RePaint {args.steps} steps, jump {args.jump_length}, "
        f"resample {args.resample}: {secs:.0f} s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", choices=("guidance", "datasaurus", "inpaint"))
    p.add_argument("run")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--weights", default="0,0.5,1,2,3")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--mask", default="left")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--resample", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--out", default="docs/study/steering.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"guidance": guidance, "datasaurus": datasaurus, "inpaint": inpainting}[args.bench](args)


if __name__ == "__main__":
    main()
