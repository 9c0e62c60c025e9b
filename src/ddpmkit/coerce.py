"""JSON values and command-line strings -> the types a config dataclass annotates ("7,14" -> (7, 14),
"off" -> False, "1e4" -> 10000), with one ConfigError text for everything unreadable."""

from __future__ import annotations

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
            return _BOOLS[value.lower()] if isinstance(value, str) else bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):
                raise OverflowError(value)
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError, KeyError):
        what = "a finite number" if tp is float else getattr(tp, "__name__", tp)
        raise ConfigError(f"{name}: cannot read {value!r} as {what}") from None
