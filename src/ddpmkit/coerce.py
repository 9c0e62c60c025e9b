"""JSON values and command-line strings -> the types a config dataclass annotates ("7,14" -> (7, 14),
"off" -> False, "1e4" -> 10000), with one ConfigError text for everything unreadable."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from .errors import ConfigError

_BOOLS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a JSON value or a command-line string to the annotated type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, next(a for a in args if a is not type(None)), name)
    try:
        if origin is tuple:
            # "7,14", "[7, 14]", "(7,)" and "" / "[]" (empty) from a command line; a list from JSON
            items = value.strip().strip("[]()").split(",") if isinstance(value, str) else list(value)
            return tuple(coerce(v, args[0], name) for v in items if str(v).strip() != "")
        if tp is bool:
            if isinstance(value, str):
                return _BOOLS[value.lower()]
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise TypeError(value)
            return bool(value)
        if isinstance(value, bool) or (tp is not str and not isinstance(value, (str, int, float))):
            raise TypeError(value)  # True is not the number 1, a list is not a number
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):
                raise OverflowError(value)
            return number
        if not isinstance(value, (str, int, float)):  # None, lists, objects: not a name or a path
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError, OverflowError, KeyError):
        what = "a finite number" if tp is float else getattr(tp, "__name__", tp)
        raise ConfigError(f"{name}: cannot read {repr(value)[:200]} as {what}") from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def typed(obj: Any) -> None:
    """Coerce every field of a (frozen) config dataclass to its annotated type, in place, with the one
    ConfigError text: the same check whether the value came from a command line, a JSON file or a
    Python call (`dataclasses.replace(cfg.sample, steps="x")` is refused, not carried along)."""
    section = type(obj).__name__.removesuffix("Config").lower()  # DiffusionConfig -> diffusion
    for f in dataclasses.fields(obj):
        tp, value = _hints(type(obj))[f.name], getattr(obj, f.name)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{section}.{f.name} must be a {tp.__name__}, got {type(value).__name__}")
            continue
        object.__setattr__(obj, f.name, coerce(value, tp, f"{section}.{f.name}"))
