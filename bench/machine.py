"""What machine a figure was measured on: printed and written with every benchmark result."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that change how fast a CPU runs the model (fp32 SIMD width, int8 and bf16 instructions).
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                  "amx_int8")


def machine_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "cpu_flags": [flag for flag in RELEVANT_FLAGS if flag in flags]}


def print_machine(info: dict) -> None:
    print(f"CPU: {info['cpu_model']} x{info['cpu_count']}; flags: {' '.join(info['cpu_flags']) or '(none of note)'}",
          flush=True)
