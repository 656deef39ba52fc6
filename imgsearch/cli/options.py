"""Options declared once: the flags several commands share, choice lists read from the settings' and the request's
``Literal`` types, and the search filter flags derived from the filterable columns of ``imgsearch.store.fields``.

The functions that add flags are called when a command's arguments are declared (the first time the command is
parsed or its help shown), so the modules they read are imported then, not by ``imgsearch --help``."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def choices(literal: Any) -> list[str]:
    """The values of a ``Literal`` type (or of ``Literal[...] | None``), in their declared order."""
    args = typing.get_args(literal)
    if typing.get_origin(literal) is typing.Literal:
        return list(args)
    return [value for arg in args if arg is not type(None) for value in choices(arg)]


def request_choices(field: str) -> list[str]:
    """The values a ``SearchRequest`` field of ``Literal`` type takes (sort, cutoff)."""
    from imgsearch.search.requests import SearchRequest

    return choices(SearchRequest.model_fields[field].annotation)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 or auto [IMGSEARCH_DEVICE]")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Which collection, and the model and device for a new one."""
    parser.add_argument(
        "--milvus-uri", dest="milvus_uri", help="Milvus Lite dir (*.db) or server URI [IMGSEARCH_MILVUS_URI]"
    )
    parser.add_argument("--collection", help="collection name [IMGSEARCH_COLLECTION]")
    parser.add_argument(
        "--model",
        help="a model name or local directory, IMAGE+TEXT for a pair, hf-hub:NAME for open_clip; "
        "`imgsearch models` lists known ones [IMGSEARCH_MODEL]",
    )
    add_device(parser)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """For the commands that run the model."""
    from imgsearch.settings import BackendSetting, PrecisionSetting

    parser.add_argument(
        "--precision",
        choices=choices(PrecisionSetting),
        help="how the model runs (auto: the fastest that agrees with fp32) [IMGSEARCH_PRECISION]",
    )
    parser.add_argument(
        "--backend",
        choices=choices(BackendSetting),
        help="what runs the model; onnx and openvino need their extras (auto: with --precision auto, "
        "the fastest installed one that agrees with fp32; else torch) [IMGSEARCH_BACKEND]",
    )


# ── Search filters ────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Spelling:
    """How a filter parameter reads on the command line, where the generic ``--param-name`` would not do."""

    flag: str
    metavar: str | None
    help: str


# In the order `imgsearch search --help` lists them; a filter parameter not named here still gets a flag,
# --its-name with the request field's description, after these.
SPELLINGS: dict[str, Spelling] = {
    "taken_after": Spelling("--after", "DATE", "taken at or after (2019-06-01, 2019-06-01T18:00)"),
    "taken_before": Spelling("--before", "DATE", "taken before this date or time"),
    "formats": Spelling("--format", "FORMAT", "only this file format (JPEG, PNG, HEIF ...); repeat for several"),
    "cameras": Spelling("--camera", "MODEL", "only this camera model, as EXIF names it (X100V); repeat for several"),
    "path_prefix": Spelling("--path-prefix", "PREFIX", "only paths that start with this"),
    "tags_any": Spelling("--tag", "TAG", "only images with this tag (imgsearch tag); repeat for any of several"),
    "tags_all": Spelling("--all-tags", "TAG", "only images with this tag; repeat: with every one of them"),
    "has_text": Spelling("--has-text", "yes|no", "yes: only pictures with text read in them; no: only those without"),
}
# Filters the API takes that `imgsearch search` does not offer (it never has): leaving one out is a choice made
# here; a new filterable column gets its flags without a line in this file.
NOT_OFFERED = frozenset({"min_width", "max_width", "min_height", "max_height"})


@dataclass(frozen=True)
class FilterFlag:
    """One search flag for one parameter of the request's filter (``SearchFilter``); ``dest`` is that parameter."""

    dest: str
    flag: str
    metavar: str | None
    help: str
    repeated: bool  # a list parameter: the flag is given once per value
    type: type | None  # int or float; None: the text as given, which the request parses (dates)


def _without_none(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def filter_flags(filterable: Iterable[Any] | None = None) -> list[FilterFlag]:
    """The search filter flags, one per parameter of each filterable column's filter (``imgsearch.store.fields``),
    but those in NOT_OFFERED; in SPELLINGS' order, then the others in column order."""
    if filterable is None:
        from imgsearch.store.fields import FILTERABLE

        filterable = FILTERABLE
    flags = []
    for column in filterable:
        for param, (annotation, info) in column.filter.fields(column).items():
            if param in NOT_OFFERED:
                continue
            value_type = _without_none(annotation)
            repeated = typing.get_origin(value_type) is list
            spelling = SPELLINGS.get(param)
            if spelling is None:
                described = info.description or param.replace("_", " ")
                spelling = Spelling(
                    "--" + param.replace("_", "-"), None, described + ("; repeat for several" if repeated else "")
                )
            scalar = value_type if value_type in (int, float) else None
            flags.append(FilterFlag(param, spelling.flag, spelling.metavar, spelling.help, repeated, scalar))
    order = list(SPELLINGS)
    return sorted(flags, key=lambda flag: order.index(flag.dest) if flag.dest in order else len(order))


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    for flag in filter_flags():
        parser.add_argument(
            flag.flag,
            dest=flag.dest,
            metavar=flag.metavar,
            help=flag.help,
            type=flag.type,
            action="append" if flag.repeated else "store",
        )


def given_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter parameters given on the command line, for ``SearchFilter(**...)``."""
    return {flag.dest: value for flag in filter_flags() if (value := getattr(args, flag.dest, None)) is not None}


def filter_flag_names() -> str:
    """The filter flags, "--after, --before, ...", for a message."""
    return ", ".join(flag.flag for flag in filter_flags())
