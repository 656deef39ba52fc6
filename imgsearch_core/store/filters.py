"""One filter, two evaluations: a Milvus boolean expression, and a mask over in-memory columns.

The vector copy answers searches from numpy, Milvus from its expression; ``tests/test_filters.py`` checks on
random rows and filters that both keep the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from imgsearch_core.store.fields import FILTERABLE

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATES = range(0xD800, 0xE000)


def quote(value: str) -> str:
    """A Milvus string literal for ``value``. A raw newline would end the literal, so it is escaped too; these
    five escapes are the ones both Milvus Lite and the Milvus server read."""
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order, which is also
    UTF-8 byte order); None if there is none (the prefix is all U+10FFFF)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code in _SURROGATES:  # no path can hold a lone surrogate: skip to the next real character
            code = _SURROGATES.stop
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


@dataclass(frozen=True)
class Clause:
    column: str
    op: str  # "prefix", ">=" or "<="
    value: Any


@dataclass(frozen=True)
class ImageFilter:
    """The rows a search may return: all clauses hold. An empty filter keeps every row."""

    clauses: tuple[Clause, ...] = ()

    @classmethod
    def from_request(cls, request_filter: BaseModel | None) -> ImageFilter:
        if request_filter is None:
            return cls()
        given = request_filter.model_dump(exclude_none=True)
        clauses = []
        for column in FILTERABLE:
            if column.filter == "prefix":
                if given.get(f"{column.name}_prefix"):
                    clauses.append(Clause(column.name, "prefix", given[f"{column.name}_prefix"]))
            else:
                for side, op in (("min", ">="), ("max", "<=")):
                    if f"{side}_{column.name}" in given:
                        clauses.append(Clause(column.name, op, int(given[f"{side}_{column.name}"])))
        return cls(tuple(clauses))

    def __bool__(self) -> bool:
        return bool(self.clauses)

    def expr(self) -> str:
        """The Milvus boolean expression; '' keeps every row."""
        parts = []
        for clause in self.clauses:
            if clause.op == "prefix":
                # A range over the strings that start with the prefix: exact, unlike LIKE, whose '_' is a wildcard.
                end = prefix_end(clause.value)
                low = f"{clause.column} >= {quote(clause.value)}"
                parts.append(f"({low} and {clause.column} < {quote(end)})" if end is not None else low)
            else:
                parts.append(f"{clause.column} {clause.op} {clause.value}")
        return " and ".join(parts)

    def mask(self, columns: Mapping[str, Sequence[Any] | np.ndarray], size: int) -> np.ndarray | None:
        """Which of ``size`` rows match, from their column values; None when every row does."""
        if not self.clauses:
            return None
        keep = np.ones(size, dtype=bool)
        for clause in self.clauses:
            values = columns[clause.column]
            if clause.op == "prefix":
                prefix = clause.value
                keep &= np.fromiter((value.startswith(prefix) for value in values), dtype=bool, count=size)
            elif clause.op == ">=":
                keep &= np.asarray(values) >= clause.value
            else:
                keep &= np.asarray(values) <= clause.value
        return keep
