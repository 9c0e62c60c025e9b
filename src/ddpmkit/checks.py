"""The validators every config section and registry uses: one text per kind of error."""

from __future__ import annotations

import typing

from .errors import ConfigError


def check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    """The one validator of named options: ConfigError naming the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not value >= 0 or (value == 0 and not allow_zero):  # `not >=` also catches NaN
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


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
