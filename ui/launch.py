"""Start the Streamlit app (``imgsearch ui``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from imgsearch.settings import Settings


def launch(settings: Settings, port: int = 8501, address: str = "127.0.0.1") -> NoReturn:
    """Replace this process with Streamlit, so a signal to ``imgsearch ui`` reaches the server itself and no
    child outlives it."""
    app = Path(__file__).with_name("app.py")
    env = {
        **os.environ,
        "IMGSEARCH_API_URL": settings.api_url,
        "IMGSEARCH_API_KEY": settings.api_key,
        "IMGSEARCH_UI_PASSWORD": settings.ui_password,
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    if address not in ("127.0.0.1", "localhost", "::1") and not settings.ui_password:
        print(
            f"imgsearch ui: warning: listening on {address} without IMGSEARCH_UI_PASSWORD: anyone who can reach "
            f"port {port} can search and see your images",
            file=sys.stderr,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
