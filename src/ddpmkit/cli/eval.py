"""`ddpm eval`: score a samples .npz (FID, precision/recall, copies, ...) or an image model's NLL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from ..threads import THREADS_HELP, set_threads
from .common import BATCH, COUNT, SEED, THREADS, bounded


def add_parser(sub, command) -> None:
    p = command(sub, "eval", "score samples (FID, precision/recall, ...) or a model's NLL")
    p.add_argument("samples", nargs="?", help=".npz from `ddpm sample` (arr_0)")
    p.add_argument("--dataset", default="mnist", help="the real data to compare with")
    p.add_argument("--data-dir", help="folder of the dataset's files")
    p.add_argument(
        "--cache-dir", help="classifier cache (default: $DDPMKIT_CACHE/classifiers or ~/.cache/ddpmkit)"
    )
    p.add_argument(
        "--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for standard FID"
    )
    p.add_argument(
        "--copies", action=argparse.BooleanOptionalAction, default=None,
        help="images: the copy detector (nearest training images, the 1/3 ratio test); default: on "
        "for folder: datasets",
    )  # fmt: skip
    p.add_argument("--nearest", metavar="PNG", help="images: draw the samples nearest to a training image")
    p.add_argument("--overwrite", action="store_true", help="replace the --nearest picture if it exists")
    p.add_argument("--nll", metavar="RUN_DIR", help="bits/dim of the test set under this image model")
    p.add_argument(
        "--subset", type=bounded(0, 10**7), default=256, help="--nll: number of test images (0 = all)"
    )
    p.add_argument(
        "--t-stride", type=COUNT, default=1, help="--nll: 1 = exact bound, K = one t per K (estimate)"
    )
    p.add_argument("--batch-size", type=BATCH, default=64, help="images per classifier / model call")
    p.add_argument("--seed", type=SEED, default=0, help="subsets, noise floors and --nll's noise")
    p.add_argument("--threads", type=THREADS, default=0, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    set_threads(args.threads)
    if args.nll:
        from ..eval.likelihood import format_nll, test_set_nll

        result = test_set_nll(args.nll, subset=args.subset, batch_size=args.batch_size,
                              t_stride=args.t_stride, seed=args.seed, progress=not args.quiet)  # fmt: skip
        table = format_nll(result)
    elif not args.samples:
        raise ConfigError("give a samples .npz to evaluate (or --nll RUN_DIR)")
    else:
        from ..eval import evaluate_samples_file, format_result

        if args.nearest:
            from ..outputs import claim

            if Path(args.nearest).suffix.lower() != ".png":
                raise ConfigError(f"--nearest names a .png picture, got {args.nearest}")
            claim([Path(args.nearest)], overwrite=args.overwrite)
        result = evaluate_samples_file(
            args.samples, args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
            inception_weights=args.inception_weights, seed=args.seed, progress=not args.quiet,
            copies=args.copies, nearest_picture=args.nearest,
        )  # fmt: skip
        table = format_result(result)
    print(json.dumps(result, indent=2) if args.json else table)
    return 0
