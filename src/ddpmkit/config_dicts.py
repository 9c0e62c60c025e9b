"""Dicts, JSON and command-line strings -> typed configs: presets, the 0.1 layout, dotted overrides.

`config.py` holds the dataclasses; this module the generic plumbing that fills them: a nested dict
is checked key by key against a dataclass's fields and coerced to their types (`from_dict`), dotted
overrides (`train.lr=1e-3`) are applied to a config's dict (`override`), and every leaf option is
listed for the command line (`option_fields`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from importlib import resources
from typing import Any, TypeVar

from .checks import check_choice
from .coerce import coerce
from .errors import ConfigError
from .model_config import LEGACY_FAMILIES, MODEL_FAMILIES

C = TypeVar("C")


# ----- presets -----------------------------------------------------------------------------------
def preset_names() -> list[str]:
    files = resources.files("ddpmkit.presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's JSON (a partial config) as a dict in the current layout."""
    check_choice("preset", name, preset_names())
    return upgrade(json.loads(resources.files("ddpmkit.presets").joinpath(f"{name}.json").read_text()))


# ----- dicts, JSON and command-line strings -> typed configs ------------------------------------------
def legacy_model_key(name: str) -> str | None:
    """'hidden' -> 'mlp.hidden', 'base_channels' -> 'unet.base_channels' (the flat v0.1 model section)."""
    for family in LEGACY_FAMILIES:
        if name in {f.name for f in fields(MODEL_FAMILIES[family])}:
            return f"{family}.{name}"
    return None


def upgrade(d: Any) -> Any:
    """Read configs written by ddpmkit 0.1, whose model section was flat, in the current layout."""
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        return d
    model = {k: v for k, v in d["model"].items() if legacy_model_key(k) is None}
    for k, v in d["model"].items():
        if legacy := legacy_model_key(k):
            family, name = legacy.split(".")
            model[family] = {**model.get(family, {}), name: v}
    return {**d, "model": model}


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """The dataclass `cls` from a nested dict: unknown keys refused, values coerced to the field types."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        kwargs[name] = from_dict(tp, value) if is_dataclass(tp) else coerce(value, tp, name)
    return cls(**kwargs)


def override(cfg: C, updates: Mapping[str, Any]) -> C:
    """Apply dotted overrides, e.g. {"train.lr": "1e-3", "model.unet.base_channels": 16}.

    The flat names of ddpmkit 0.1 (`model.hidden`, `model.base_channels`, ...) are accepted too.
    """
    d = cfg.to_dict()
    for key, value in updates.items():
        parts = key.split(".")
        if len(parts) == 2 and parts[0] == "model" and legacy_model_key(parts[1]):
            parts = ["model", *legacy_model_key(parts[1]).split(".")]
        node = d
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown option {key!r}")
        node[parts[-1]] = value
    return type(cfg).from_dict(d)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (patch wins), for presets on top of defaults."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def option_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, type, default) of every leaf option, to generate command-line flags."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if is_dataclass(tp):
            out += option_fields(tp, f"{prefix}{f.name}.")
        elif prefix:  # top-level scalars (preset) are not options
            out.append((f"{prefix}{f.name}", tp, default))
    return out
