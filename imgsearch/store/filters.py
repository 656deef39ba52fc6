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

from imgsearch.store.fields import FILTERABLE, Clause

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
class ImageFilter:
    """The rows a search may return: all clauses hold. An empty filter keeps every row."""

    clauses: tuple[Clause, ...] = ()

    @classmethod
    def from_request(cls, request_filter: BaseModel | None) -> ImageFilter:
        """The clauses of a request's ``filter``, in the order the columns are declared."""
        if request_filter is None:
            return cls()
        given = request_filter.model_dump(exclude_none=True)
        return cls(tuple(clause for column in FILTERABLE for clause in column.filter.clauses(column, given)))

    def expr(self) -> str:
        """The Milvus boolean expression; '' keeps every row."""
        parts = []
        for clause in self.clauses:
            if clause.op == "prefix":
                # A range over the strings that start with the prefix: exact, unlike LIKE, whose '_' is a wildcard.
                end = prefix_end(clause.value)
                low = f"{clause.column} >= {quote(clause.value)}"
                parts.append(f"({low} and {clause.column} < {quote(end)})" if end is not None else low)
            elif clause.op == "in":
                parts.append(f"{clause.column} in [{', '.join(quote(v) for v in clause.value)}]")
            elif clause.op == "filled":
                parts.append(f'{clause.column} {"!=" if clause.value else "=="} ""')
            elif clause.op in ("any", "all"):
                parts.append(
                    f"array_contains_{clause.op}({clause.column}, [{', '.join(quote(v) for v in clause.value)}])"
                )
            else:
                parts.append(f"{clause.column} {clause.op} {int(clause.value)}")
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
            elif clause.op == "in":
                wanted = set(clause.value)
                keep &= np.fromiter((value in wanted for value in values), dtype=bool, count=size)
            elif clause.op == "filled":
                keep &= np.fromiter((bool(value) == clause.value for value in values), dtype=bool, count=size)
            elif clause.op == "any":
                wanted = set(clause.value)
                keep &= np.fromiter((not wanted.isdisjoint(value) for value in values), dtype=bool, count=size)
            elif clause.op == "all":
                wanted = set(clause.value)
                keep &= np.fromiter((wanted.issubset(value) for value in values), dtype=bool, count=size)
            else:
                keep &= _COMPARE[clause.op](np.asarray(values), clause.value)
        return keep


_COMPARE = {">=": np.greater_equal, "<=": np.less_equal, "<": np.less}
