"""What every command module shares: how a command is declared, exit codes, and settings from the flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgsearch.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command cannot run as asked: ``main`` prints ``imgsearch COMMAND: message`` and exits with EXIT_USAGE."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and one-line help in ``imgsearch --help``, the function that declares its arguments
    (called the first time the command is parsed or its help is shown, so it may import what it derives them from),
    and the function that runs it and returns the exit code."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with command-line flags on top: a flag whose dest is a setting's name (and
    that was given) sets that setting."""
    from imgsearch.settings import Settings, old_index_notice

    overrides = {name: value for name in Settings.model_fields if (value := getattr(args, name, None)) is not None}
    config = Settings(**overrides)
    if notice := old_index_notice(config):
        print(notice, file=sys.stderr)
    return config


def with_indexed_model(args: argparse.Namespace, settings: Settings, store: Any) -> Settings:
    """``settings`` with the model that made the collection, unless one was given (flag or environment):
    queries and label texts must be embedded by it."""
    from imgsearch.store.catalogue import NOT_IMGSEARCH

    recorded = store.model_info()[0]
    if args.model is None and "IMGSEARCH_MODEL" not in os.environ and recorded != NOT_IMGSEARCH:
        return settings.model_copy(update={"model": recorded})
    return settings


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, newlines in a file name) are
    written as escapes, so a hostile file name cannot rewrite the screen or the clipboard."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def confirmed(args: argparse.Namespace, question: str) -> bool:
    """--yes, or a yes typed on a terminal; without a terminal, refuse (UsageError)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing without --yes when not on a terminal")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: on a terminal, and not when the output is JSON."""
    return sys.stderr.isatty() and not args.json
