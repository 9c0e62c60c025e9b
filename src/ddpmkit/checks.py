"""The validators every config section and registry uses: one text per kind of error."""

from __future__ import annotations

import typing
from collections.abc import Sequence

from .errors import ConfigError


def check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    """The one validator of named options: ConfigError naming the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not value >= 0 or (value == 0 and not allow_zero):  # `not >=` also catches NaN
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_unit(name: str, value: float, *, include_one: bool = False) -> None:
    """value in [0, 1) (or [0, 1] with include_one): probabilities, decays, ratios, strengths."""
    if not (0 <= value <= 1 if include_one else 0 <= value < 1):  # NaN fails both
        raise ConfigError(f"{name} must lie in [0, {'1]' if include_one else '1)'}, got {value}")


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """lo <= value <= hi for a finite number (sizes, counts, weights with an upper bound)."""
    if isinstance(value, bool) or not lo <= value <= hi:  # NaN fails; a bool is not a number here
        raise ConfigError(f"{name} must lie in [{lo}, {hi}], got {value}")


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 0..2^64-1; numpy takes < 2^32 from seeds we derive
MAX_GUIDANCE = 50.0  # classifier-free guidance w: s = 1 + w; Ho & Salimans went to w = 4


def check_seed(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{name} must be an integer in 0..2^63-1, got {value!r}")
    return value


def check_guidance(value: float, name: str = "guidance") -> float:
    """A classifier-free guidance weight: finite, in [-1, MAX_GUIDANCE] (-1: the unconditional model)."""
    check_range(name, value, -1.0, MAX_GUIDANCE)
    return float(value)


def check_colour(name: str, value: str) -> tuple[int, int, int]:
    """A PIL colour name or code ("white", "#808080", "rgb(0,0,0)") as RGB, else ConfigError."""
    from PIL import ImageColor  # lazy: config validation should not import PIL up front

    try:
        return tuple(ImageColor.getrgb(value)[:3])  # type: ignore[return-value]
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"{name} must be a colour (white, #808080, ...), got {value!r}") from None


class Registry(dict):
    """name -> implementation, filled by the package that owns them. Its names feed config validation,
    CLI choices and error messages; `registry[name]` of an unknown name raises ConfigError."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def check(self, name: str) -> None:
        check_choice(self.what, name, self)

    def __missing__(self, name: str):
        self.check(name)


def check_interval(interval: Sequence[float], name: str = "the guidance interval") -> tuple[float, ...]:
    """() or (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi -> a tuple of floats; ConfigError
    otherwise."""
    interval = tuple(float(v) for v in interval)
    if interval and not (len(interval) == 2 and 0 <= interval[0] < interval[1]):
        raise ConfigError(f"{name} is two noise levels sigma_lo,sigma_hi with 0 <= sigma_lo < sigma_hi "
                          f"(sigma = sqrt((1 - abar) / abar)), got {list(interval)}")  # fmt: skip
    return interval
