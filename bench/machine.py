"""What machine a figure was measured on: printed and written with every benchmark result."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from imgsearch.model.cpu import SPEED_FLAGS, cpu_flags, cpu_model


def machine_info() -> dict:
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_flags": [flag for flag in SPEED_FLAGS if flag in flags],
    }


def print_machine(info: dict) -> None:
    print(
        f"CPU: {info['cpu_model']} x{info['cpu_count']}; flags: {' '.join(info['cpu_flags']) or '(none of note)'}",
        flush=True,
    )


def write_result(path: Path, result: dict) -> None:
    """The figures as JSON at ``path`` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}", flush=True)
