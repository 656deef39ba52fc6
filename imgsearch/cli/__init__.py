"""The ``imgsearch`` command: index folders, search from a terminal, serve the API, start the UI.

One module per group of commands (``index``, ``search``, ``tags``, ``models``, ``serve``) declares its commands'
arguments and runs them; ``options`` holds the flags they share and those derived from other declarations;
``parser`` puts them together. Here: parse, run, and turn errors into messages and exit codes."""

from __future__ import annotations

import logging
import sys

from imgsearch.cli.common import EXIT_ERROR, EXIT_USAGE, UsageError
from imgsearch.cli.parser import build_parser
from imgsearch.errors import ImgsearchError, validation_message

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"imgsearch {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImgsearchError as exc:
        print(f"imgsearch {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # pydantic ValidationError for bad settings, OS errors
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):  # one line per field, not pydantic's block with a link
            print(f"imgsearch {args.command}: error: {validation_message(exc.errors())}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(exc, OSError):
            print(f"imgsearch {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
