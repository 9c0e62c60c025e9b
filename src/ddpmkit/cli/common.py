"""What several `ddpm` commands share: the parser and help classes, `command` (a sub-command's
parser with ddpm's formatter), the parsing of --steps and of --guidance lists, the class options."""

from __future__ import annotations

import argparse
import math

from ..checks import SEED_MAX, check_interval
from ..denoiser import DEFAULT_GUIDANCE
from ..errors import ConfigError

RUN_DIR_HELP = "run directory written by `ddpm train`"
_GUIDANCE = (
    "classifier-free guidance weight w (Ho & Salimans 2022, Eq. 6):\n"
    "  out = (1 + w) * model(x_t, class) - w * model(x_t, null)\n"
    "w = 0 is the plain conditional model; other libraries' 'guidance scale' is s = 1 + w. "
    "Each step then costs 2 model calls. "
)
_DEFAULT = f"(default: the run's, else {DEFAULT_GUIDANCE:g})"
GUIDANCE_HELP = _GUIDANCE + "Several values (0,1,3) draw a guidance sweep " + _DEFAULT  # ddpm sample
STEER_GUIDANCE_HELP = _GUIDANCE + "One value " + _DEFAULT  # inpaint, edit, interpolate


class Parser(argparse.ArgumentParser):
    """Bad usage gets one line (not the whole usage) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None (the help text says what happens then)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)

    def _split_lines(self, text, width):  # keep the line breaks of tables in help texts
        split = super()._split_lines
        return [line for part in text.splitlines() for line in split(part, width)]


def command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """The parser of sub-command `name` (`sub`: the parent's subparsers), with ddpm's formatter."""
    return sub.add_parser(name, help=help, formatter_class=HelpFormatter)


def bounded(lo: int, hi: int):
    """An argparse type: an integer in lo..hi, or one line saying why not (before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:100]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must lie in {lo}..{hi}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


COUNT = bounded(1, 10**7)  # samples, images, steps: at least one, and not a typo's billions
BATCH = bounded(1, 2**16)
SEED = bounded(0, SEED_MAX)
THREADS = bounded(0, 1024)
SIDE = bounded(1, 4096)  # an image side in pixels


def steps_or_all(value: str) -> int | str:
    """--steps N, or "all" for every one of the model's T steps."""
    if value == "all":
        return value
    try:
        return COUNT(value)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or 'all')") from None


def floats(text: str, flag: str = "--guidance") -> list[float]:
    """--guidance 0,0.5,1 -> [0.0, 0.5, 1.0]; ConfigError for anything but finite numbers (each is
    then checked as a guidance weight by `checks.check_guidance`)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected numbers separated by commas, got {text[:100]!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{flag}: expected finite numbers separated by commas, got {text[:100]!r}")
    return values


def interval(text: str) -> tuple[float, ...]:
    """--guidance-interval LO,HI -> (LO, HI): finite numbers (`floats`) that `checks.check_interval`
    accepts; an argparse type."""
    try:
        values = check_interval(floats(text, "--guidance-interval"))
    except ConfigError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 <= LO < HI (e.g. 0.3,5), got {text[:100]!r}")
    return values


def add_class_options(p: argparse.ArgumentParser) -> None:
    """`ddpm sample`'s --class, --guidance W[,W...], --guidance-rescale, --guide and --guidance-interval."""
    p.add_argument(
        "--class", dest="cls", metavar="C",
        help="class-conditional runs: a class index or name, several (3,5,sneaker) or 'all' (the "
        "picture has one row per class), or 'data': -n samples in all, labels in the training set's "
        "class proportions (how FID of a conditional model is measured)",
    )  # fmt: skip
    p.add_argument("--guidance", metavar="W[,W...]", help=GUIDANCE_HELP)
    p.add_argument(
        "--guidance-rescale", type=float, metavar="PHI",
        help="pull the guided output's std back to the conditional one's (Lin et al. 2024; 0.7 theirs)",
    )  # fmt: skip
    p.add_argument(
        "--guide", metavar="RUN",
        help="autoguidance (Karras et al. 2024): guide with this weaker run of the same data and process "
        "(a smaller network, or one trained for less) instead of the null label: out = (1 + w) * "
        "model(x_t, class) - w * guide(x_t, class). Needs no class: it guides unconditional runs too",
    )  # fmt: skip
    p.add_argument(
        "--guidance-interval", type=interval, metavar="LO,HI",
        help="guide only at noise levels sigma = sqrt((1 - abar) / abar) in (LO, HI] (Kynkaanniemi "
        "et al. 2024; a HI above the schedule's top, e.g. 1e6, guides up to pure noise); elsewhere one "
        "model call per step (default: every step)",
    )  # fmt: skip
