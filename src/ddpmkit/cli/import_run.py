"""`ddpm import`: a diffusers DDPMPipeline / DDIMPipeline folder (or, when asked, a Hub repository) as
a ddpmkit run directory that every other command works on."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub, command) -> None:
    p = command(sub, "import", "a diffusers DDPMPipeline / DDIMPipeline folder as a ddpmkit run")
    p.add_argument("source", help="the pipeline folder (model_index.json, unet/, scheduler/); with "
                   "--download a Hugging Face Hub id such as google/ddpm-cifar10-32")  # fmt: skip
    p.add_argument("-o", "--out", required=True, help="the run directory to write")
    p.add_argument("--dataset", help="the data the model was trained on (mnist, folder:PATH, ...), for "
                   "`ddpm eval --nll` and the playground (default: unnamed)")  # fmt: skip
    p.add_argument("--data-dir", help="--dataset's folder of files (MNIST, Fashion-MNIST IDX files)")
    p.add_argument("--null-label", action=argparse.BooleanOptionalAction, default=None,
                   help="class-conditional models: the class embedding's last row is the null label, "
                   "which unlabelled samples and guidance use (default: no)")  # fmt: skip
    p.add_argument("--download", action="store_true", help="fetch SOURCE from the Hub (JSON and safetensors "
                   "files only; needs huggingface_hub and the internet)")  # fmt: skip
    p.add_argument("--revision", help="--download: a branch, tag or commit")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")


def run(args) -> int:
    from ..interop.diffusers import hub_snapshot, import_pipeline

    source = Path(args.source)
    if args.download:
        source = hub_snapshot(args.source, args.revision)
    elif not source.exists():
        hub = "; to download it from the Hub, add --download" if args.source.count("/") == 1 else ""
        raise ConfigError(f"{args.source}: no such folder{hub}")
    result = import_pipeline(source, args.out, dataset=args.dataset, data_dir=args.data_dir,
                             null_label=args.null_label, overwrite=args.overwrite)  # fmt: skip
    for note in result.notes:
        print(f"note: {note}")
    d, m = result.cfg.diffusion, result.cfg.model
    classes = f", {m.num_classes} classes" if m.num_classes else ""
    print(f"imported {args.source} -> {result.run_dir}: UNet2DModel on {result.cfg.data.channels}x"
          f"{result.cfg.data.image_size}x{result.cfg.data.image_size}{classes}; {d.schedule} schedule, "
          f"T = {d.timesteps}, predicts {d.objective}, variance {d.variance}; "
          f"sample it: ddpm sample {result.run_dir}")  # fmt: skip
    return 0
