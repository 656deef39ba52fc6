"""Start the Streamlit app (``imgsearch ui``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def launch(settings, port: int = 8501, address: str = "127.0.0.1") -> NoReturn:
    """Replace this process with Streamlit, so a signal to ``imgsearch ui`` reaches the server itself and no
    child outlives it."""
    app = Path(__file__).with_name("app.py")
    env = {**os.environ, "IMGSEARCH_API_URL": settings.api_url, "IMGSEARCH_API_KEY": settings.api_key,
           "PYTHONPATH": os.pathsep.join([str(app.parent.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
               "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
