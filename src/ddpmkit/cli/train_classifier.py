"""`ddpm train-classifier`: the feature classifier that `ddpm eval` scores images with."""

from __future__ import annotations

from ..threads import THREADS_HELP, set_threads
from .common import BATCH, COUNT, SEED, SIDE, THREADS, bounded


def add_parser(sub, command) -> None:
    p = command(sub, "train-classifier", "train the feature classifier `ddpm eval` uses")
    p.add_argument("--dataset", default="mnist", help="the labelled image set the classifier learns")
    p.add_argument("--data-dir", help="folder of the dataset's files")
    p.add_argument("--cache-dir", help="where the classifier is cached (default: $DDPMKIT_CACHE/classifiers)")
    p.add_argument(
        "--epochs",
        type=bounded(1, 10**4),
        default=None,
        help="passes over the training set (default: 3, more for small sets)",
    )
    p.add_argument("--batch-size", type=BATCH, default=128, help="images per optimizer step")
    p.add_argument("--image-size", type=SIDE, help="side in pixels (default: the dataset's)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 or 3 (default: the dataset's)")
    p.add_argument("--train-images", type=COUNT, help="a random subset of N training images (default: all)")
    p.add_argument("--test-images", type=COUNT, help="a random subset of N test images (default: all)")
    p.add_argument("--seed", type=SEED, default=0, help="initialisation, batch order and subsets")
    p.add_argument("--threads", type=THREADS, default=0, help=THREADS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..eval.classifier import train_classifier

    set_threads(args.threads)
    info = train_classifier(
        args.dataset,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        image_size=args.image_size,
        channels=args.channels,
        max_train_images=args.train_images,
        max_test_images=args.test_images,
        progress=not args.quiet,
    )
    print(
        f"{args.dataset}: test accuracy {100 * info['test_accuracy']:.2f}% in {info['seconds']:.0f} s; "
        f"cached in {info['path']}"
    )
    return 0
