"""The `imgsearch` command's options that are derived, not typed out: the search filter flags from the filterable
columns (imgsearch.store.fields), the choice lists from the settings' and the request's Literal types. Fast: no
model, no collection; only the last test starts a process."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import typing
from datetime import datetime

import pytest
from pydantic import ValidationError
from pymilvus import DataType

from imgsearch.cli import main
from imgsearch.cli.options import NOT_OFFERED, filter_flags
from imgsearch.cli.parser import build_parser, command_parser
from imgsearch.cli.search import search_request
from imgsearch.search.requests import SearchRequest
from imgsearch.settings import BackendSetting, PrecisionSetting
from imgsearch.store.fields import FILTERABLE, Column, OneOf, Range, SearchFilter
from imgsearch.tagging.labels import Mode
from tests.support import REPO

# What users type today: these spellings must not change when the columns behind them do.
TODAYS_FILTER_FLAGS = {
    "--after": "taken_after",
    "--before": "taken_before",
    "--format": "formats",
    "--camera": "cameras",
    "--path-prefix": "path_prefix",
    "--tag": "tags_any",
    "--all-tags": "tags_all",
    "--has-text": "has_text",
}


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _options(command: str) -> dict[str, argparse.Action]:
    parser = command_parser(build_parser(), command)
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _filter_params() -> list[str]:
    return [param for column in FILTERABLE for param in column.filter.fields(column)]


def _sample(param: str) -> str:
    """A value the request accepts for the filter parameter ``param``."""
    annotation = str(SearchFilter.model_fields[param].annotation)
    if "bool" in annotation:
        return "yes"
    return "2019-06-01" if "datetime" in annotation else "5" if "int" in annotation else "x"


def test_every_filterable_column_has_its_search_flag():
    dests = {action.dest for action in _options("search").values()}
    offered = [param for param in _filter_params() if param not in NOT_OFFERED]
    assert offered and all(param in dests for param in offered)
    assert NOT_OFFERED.issubset(_filter_params())  # no stale entry: each names a real filter parameter


def test_todays_filter_flags_keep_their_names_and_dests():
    options = _options("search")
    assert {flag: options[flag].dest for flag in TODAYS_FILTER_FLAGS} == TODAYS_FILTER_FLAGS
    assert {flag.flag for flag in filter_flags()} == set(TODAYS_FILTER_FLAGS)  # and no new flag slipped in
    help_text = command_parser(build_parser(), "search").format_help()
    assert all(flag in help_text for flag in TODAYS_FILTER_FLAGS)


@pytest.mark.parametrize("flag", filter_flags(), ids=lambda flag: flag.flag)
def test_a_filter_flag_ends_up_in_the_request_filter(flag):
    args = _parse("search", "a dog", flag.flag, _sample(flag.dest))
    request, images = search_request(args)
    given = request.filter.model_dump(exclude_none=True)
    assert list(given) == [flag.dest] and images == []
    expected = SearchRequest.model_validate(
        {"text": "x", "filter": {flag.dest: [_sample(flag.dest)] if flag.repeated else _sample(flag.dest)}}
    )
    assert request.filter == expected.filter


def test_filter_flags_together_and_repeated():
    args = _parse(
        "search",
        "beach",
        "--after",
        "2019-06-01",
        "--before",
        "2019-07-01T18:00",
        "--format",
        "JPEG",
        "--format",
        "PNG",
        "--camera",
        "X100V",
        "--path-prefix",
        "/photos/",
        "--tag",
        "sea",
        "--tag",
        "sun",
        "--all-tags",
        "family",
    )
    request, _ = search_request(args)
    assert request.filter.model_dump(exclude_none=True) == {
        "taken_after": datetime(2019, 6, 1),
        "taken_before": datetime(2019, 7, 1, 18),
        "formats": ["JPEG", "PNG"],
        "cameras": ["X100V"],
        "path_prefix": "/photos/",
        "tags_any": ["sea", "sun"],
        "tags_all": ["family"],
    }


def test_no_filter_flag_no_bound_and_the_other_options_reach_the_request():
    args = _parse(
        "search",
        "2:red car",
        "+",
        "boat",
        "-k",
        "7",
        "--newest",
        "--collapse",
        "--hybrid",
        "--cutoff",
        "auto",
        "--explain",
    )
    request, _ = search_request(args)
    assert request.filter.model_dump(exclude_none=True) == {}
    assert [(term.text, term.weight) for term in request.terms] == [("red car", 2.0), ("boat", 1.0)]
    assert (request.limit, request.sort, request.cutoff, request.explain) == (7, "newest", "auto", True)
    assert (request.collapse, request.collapse_threshold, request.lexical_weight) == (True, 0.95, 0.5)


def test_image_terms_become_uploads_in_order(tmp_path):
    first, second = tmp_path / "a.jpg", tmp_path / "b.png"  # a term naming an existing file is an image
    first.write_bytes(b"not decoded yet"), second.write_bytes(b"nor this")
    args = _parse("search", str(first), "-", "fruit", "--image", str(second))
    request, images = search_request(args)
    assert images == [str(first), str(second)]
    assert [(term.upload_ref, term.text, term.weight) for term in request.terms] == [
        ("0", None, 1.0),
        (None, "fruit", -1.0),
    ]


def test_a_bad_filter_value_is_refused_before_any_model_loads(capsys):
    with pytest.raises(ValidationError):
        search_request(_parse("search", "x", "--after", "yesterday"))
    assert main(["search", "x", "--after", "yesterday"]) == 1
    assert capsys.readouterr().err.startswith("imgsearch search: error: taken_after: Input should be a valid")


def test_usage_errors_exit_2(capsys):
    assert main(["search"]) == 2
    assert "imgsearch search: give a query" in capsys.readouterr().err
    assert main(["search", "x", "-k", "201"]) == 2
    assert capsys.readouterr().err == "imgsearch search: -k must be between 1 and 200\n"


def test_a_new_filterable_column_gets_flags_without_a_cli_change():
    depth = Column("depth", DataType.INT64, lambda f: 0, filter=Range("min_depth", "max_depth"))
    lens = Column("lens", DataType.VARCHAR, lambda f: "", max_length=32, filter=OneOf("lenses", "only these lenses"))
    flags = {flag.flag: flag for flag in filter_flags([depth, lens])}
    assert set(flags) == {"--min-depth", "--max-depth", "--lenses"}
    assert (flags["--min-depth"].dest, flags["--min-depth"].type, flags["--min-depth"].repeated) == (
        "min_depth",
        int,
        False,
    )
    assert flags["--lenses"].repeated and flags["--lenses"].help.startswith("only these lenses")


CHOICES = [
    ("index", "--precision", PrecisionSetting),
    ("search", "--backend", BackendSetting),
    ("migrate", "--precision", PrecisionSetting),
    ("evaluate", "--backend", BackendSetting),
    ("search", "--cutoff", SearchRequest.model_fields["cutoff"].annotation),
    ("tag", "--mode", Mode),
]


@pytest.mark.parametrize("command, flag, literal", CHOICES)
def test_choice_lists_are_the_literals(command, flag, literal):
    assert _options(command)[flag].choices == list(typing.get_args(literal))


@pytest.mark.parametrize("value", typing.get_args(PrecisionSetting))
def test_every_value_of_the_literal_is_taken(value):
    assert _parse("index", "photos", "--precision", value).precision == value


@pytest.mark.parametrize(
    "argv",
    [
        ["index", "photos", "--precision", "fp64"],
        ["search", "x", "--backend", "tvm"],
        ["search", "x", "--cutoff", "some"],
        ["tag", "--mode", "sigmoid"],
    ],
)
def test_a_choice_outside_the_literal_is_refused_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    assert f"error: argument {argv[-2]}: invalid choice: '{argv[-1]}'" in capsys.readouterr().err


def test_setting_flags_set_the_settings(tmp_path, monkeypatch):
    from imgsearch.cli.common import settings

    monkeypatch.chdir(tmp_path)  # no .env
    args = _parse("index", "photos", "--collection", "holiday", "--batch-size", "7", "--precision", "bf16")
    chosen = settings(args)
    assert (chosen.collection, chosen.batch_size, chosen.precision) == ("holiday", 7, "bf16")


def test_only_serve_imports_the_search_api():
    importers = set()
    for path in REPO.joinpath("imgsearch", "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgsearch.search_api"):
                importers.add(path.name)
            if isinstance(node, ast.Import) and any(a.name.startswith("imgsearch.search_api") for a in node.names):
                importers.add(path.name)
    assert importers == {"serve.py"}


def test_help_lists_every_command_and_imports_nothing_heavy():
    code = (
        "import sys\nfrom imgsearch.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('numpy', 'pymilvus', 'torch', 'imgsearch.store') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert shown.rstrip().endswith("LOADED []")
    listed = shown.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed[:8] == ["up", "index", "watch", "search", "serve", "ui", "upgrade", "tag"]
    assert listed[8:] == ["duplicates", "evaluate", "models", "tune", "migrate", "drop"]
