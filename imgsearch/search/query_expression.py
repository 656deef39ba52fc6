"""rclip-style query expressions for the command line: ``"2:golden retriever" + ./pool.jpg - fruit``.

The shell splits the line into arguments; this module reads them:

- an argument that is exactly ``+`` or ``-`` joins the next term with that sign (a leading ``-`` makes the
  first term negative);
- the arguments between two operators are one term, joined by spaces, so ``red bicycle - people`` has two;
- a term may start with a weight, ``2:`` or ``0.5:`` (a number, a colon, then no space);
- a term that names an existing file is an example image; any other term is text. A text wrapped in double
  quotes inside the argument (``'"IMG_2041"'`` in the shell) is matched against file and folder names only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_WEIGHT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+):(?=\S)")


class QueryExpressionError(ValueError):
    pass


@dataclass(frozen=True)
class ExpressionTerm:
    kind: str  # "text" or "image"
    value: str  # the text, or the image file's path
    weight: float  # signed


def parse_expression(
    arguments: list[str], is_file: Callable[[str], bool] = lambda value: Path(value).is_file()
) -> list[ExpressionTerm]:
    """The terms of a query given as command-line arguments; raises QueryExpressionError on a dangling or
    doubled operator, an empty term or a zero weight."""
    terms: list[ExpressionTerm] = []
    sign = 1.0
    words: list[str] = []
    expecting_term = True  # at the start and after an operator

    def finish() -> None:
        text = " ".join(words).strip()
        words.clear()
        if not text:
            raise QueryExpressionError("an empty term: put a text or an image file between the + and - signs")
        weight, body = 1.0, text
        match = _WEIGHT.match(text)
        if match:
            weight, body = float(match.group(1)), text[match.end() :]
        if weight == 0:
            raise QueryExpressionError(f"the term '{text}' has weight 0: leave it out instead")
        kind = "image" if is_file(body) else "text"
        terms.append(ExpressionTerm(kind, body, sign * weight))

    for argument in arguments:
        if argument in ("+", "-"):
            if words:
                finish()
            elif not (expecting_term and not terms and argument == "-" and sign == 1.0):
                raise QueryExpressionError(f"'{argument}' must stand between two terms")
            sign = -1.0 if argument == "-" else 1.0
            expecting_term = True
            continue
        words.append(argument)
        expecting_term = False
    if expecting_term:
        if terms or sign < 0:
            raise QueryExpressionError("the query ends with + or -: a term must follow it")
        return []
    finish()
    return terms
