"""Start the Streamlit app (``imgsearch ui``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def launch(settings, port: int = 8501) -> int:
    app = Path(__file__).with_name("app.py")
    env = {**os.environ, "IMGSEARCH_API_URL": settings.api_url, "IMGSEARCH_API_KEY": settings.api_key,
           "PYTHONPATH": os.pathsep.join([str(app.parent.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    return subprocess.call(command, env=env)
