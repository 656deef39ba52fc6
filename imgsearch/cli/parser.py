"""The ``imgsearch`` parser, made from the commands each module of this package declares.

A command's arguments are declared the first time the command is parsed or its help is shown, not when the parser
is built: `imgsearch --help` and the other commands do not import what one command derives its flags from (the
search filters come from ``imgsearch.store.fields``, which loads pymilvus)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from imgsearch.cli import index, models, search, serve, tags, up, watch
from imgsearch.cli.common import Command

GROUPS = (up, index, watch, search, tags, models, serve)
# The order `imgsearch --help` lists the commands in; one not named here comes after them.
ORDER = (
    "up",
    "index",
    "watch",
    "search",
    "serve",
    "ui",
    "upgrade",
    "tag",
    "duplicates",
    "evaluate",
    "models",
    "tune",
    "migrate",
    "drop",
)


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that declares its arguments (``declare(parser)``) when first used."""

    def __init__(
        self, *args: Any, declare: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._declare = declare

    def declared(self) -> CommandParser:
        """This parser with its arguments declared (once)."""
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)
        return self

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self.declared()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.declared()
        return super().format_usage()

    def format_help(self) -> str:
        self.declared()
        return super().format_help()


def commands() -> list[Command]:
    """Every command, in the order of ORDER."""
    listed = [command for group in GROUPS for command in group.COMMANDS]
    return sorted(listed, key=lambda command: ORDER.index(command.name) if command.name in ORDER else len(ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description="Semantic image search on Milvus.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for command in commands():
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description, declare=command.arguments
        )
        sub.set_defaults(run=command.run)
    return parser


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``, its arguments declared: to read them (tests, documentation)."""
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[name].declared()
