"""The long-running processes: ``imgsearch serve`` (the HTTP search API) and ``imgsearch ui`` (the web UI)."""

from __future__ import annotations

import argparse

from imgsearch.cli.common import EXIT_OK, Command, settings
from imgsearch.cli.options import add_common, add_model_options


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from imgsearch.settings import Settings

    host, port = (Settings.model_fields[name].default for name in ("host", "port"))
    parser.add_argument("--host", help=f"bind address [IMGSEARCH_HOST] (default {host})")
    parser.add_argument("--port", type=int, help=f"port [IMGSEARCH_PORT] (default {port})")
    parser.add_argument(
        "--watch",
        nargs="+",
        metavar="PATH",
        help="keep these folders indexed as they change (caught up at start; see docs/watching.md)",
    )
    add_common(parser)
    add_model_options(parser)


def cmd_serve(args: argparse.Namespace) -> int:
    from imgsearch.cli.watch import watched_folders
    from imgsearch.search_api.main import serve  # the only command that needs the API

    roots = watched_folders(args.watch) if args.watch else None
    serve(settings(args), watch_roots=roots)
    return EXIT_OK


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", dest="api_url", help="search API address [IMGSEARCH_API_URL]")
    parser.add_argument("--port", type=int, default=8501, help="UI port (default 8501)")
    parser.add_argument(
        "--host",
        dest="ui_host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes the UI to the network)",
    )


def cmd_ui(args: argparse.Namespace) -> int:
    from imgsearch.ui.launch import launch

    launch(settings(args), port=args.port, address=args.ui_host)  # replaces this process; never returns
    return EXIT_OK


COMMANDS = (
    Command("serve", "start the HTTP search API", _serve_arguments, cmd_serve),
    Command("ui", "start the Streamlit web UI (talks to the API)", _ui_arguments, cmd_ui),
)
