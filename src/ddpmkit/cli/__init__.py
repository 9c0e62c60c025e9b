"""The `ddpm` command line: parse -> config -> one library call -> say where outputs went.

One module per command, each with `add_parser(sub, command)` (its sub-command and options) and
`run(args) -> int`; `COMMANDS` lists them in the order of `ddpm --help`. A new command is one module
plus one line there. Bad input (a value, a path, a file) gets one line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import DdpmkitError
from . import (
    distill,
    edit,
    eval,
    export,
    forward,
    import_run,
    info,
    inpaint,
    interpolate,
    playground,
    sample,
    train,
    train_autoencoder,
    train_classifier,
)
from .common import Parser, command

COMMANDS = {
    "train": train,
    "train-autoencoder": train_autoencoder,
    "sample": sample,
    "forward": forward,
    "eval": eval,
    "train-classifier": train_classifier,
    "distill": distill,
    "inpaint": inpaint,
    "edit": edit,
    "interpolate": interpolate,
    "import": import_run,
    "export": export,
    "playground": playground,
    "info": info,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ddpm", description="Denoising Diffusion Probabilistic Models for 2-D points and small images."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub, command)
    return parser


def _one_line_warnings(command: str) -> None:
    """Library warnings (skipped files, duplicates, notes) as `ddpm CMD: warning: ...` lines."""
    import warnings

    warnings.formatwarning = lambda message, category, *_a, **_k: f"ddpm {command}: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings(args.command)
    try:
        return COMMANDS[args.command].run(args)
    except DdpmkitError as e:
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the file system refuses (too long, a loop of links, no permission)
        where = str(e.filename)[:200] if e.filename else "a file"
        print(f"ddpm {args.command}: error: cannot use {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
