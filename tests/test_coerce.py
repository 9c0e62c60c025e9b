"""Command-line strings and JSON values -> annotated types (ddpmkit.coerce)."""

from __future__ import annotations

import pytest

from ddpmkit.coerce import coerce
from ddpmkit.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("7,14", tuple[int, ...], (7, 14)),
        ("[7, 14]", tuple[int, ...], (7, 14)),
        ("(7,)", tuple[int, ...], (7,)),
        ("[]", tuple[int, ...], ()),
        ([1, 2], tuple[int, ...], (1, 2)),
        ("off", bool, False),
        ("Yes", bool, True),
        (True, bool, True),
        ("1e4", int, 10000),
        (3.0, int, 3),
        ("2.5e-4", float, 2.5e-4),
        ("none", int | None, None),
        (None, float | None, None),
        ("12", int | None, 12),
        (5, str, "5"),
    ],
)
def test_reads_strings_and_json_values(value, tp, expected):
    out = coerce(value, tp, "x")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        ("nan", float),
        ("inf", float),
        ("1e999", float),
        (2.5, int),
        ("maybe", bool),
        ("abc", int),
        ([1], float),
    ],
)
def test_unreadable_values_name_the_option(value, tp):
    with pytest.raises(ConfigError, match=r"^train\.lr: cannot read"):
        coerce(value, tp, "train.lr")
