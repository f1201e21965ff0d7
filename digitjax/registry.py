"""The one place a name from the config is looked up: models, schedules, optimizers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from digitjax.errors import UserError

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, field: str) -> T:
    """`table[name]`, or a UserError naming `config.<field>` and the names it takes."""
    if name not in table:
        raise UserError(f"config.{field}: expected one of {sorted(table)}, got '{name}'")
    return table[name]
