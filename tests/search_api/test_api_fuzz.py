"""Schemathesis fuzzes a real `imgsearch serve` from its OpenAPI schema; no answer may be a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(server, tmp_path):
    binary = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(binary),
            "run",
            f"{server}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--seed",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts and int(counts.group(1)) >= 200, output[-3000:]  # it really sent requests
