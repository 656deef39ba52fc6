"""What this machine's CPU can do fast: the flags benchmarks print and ``auto`` choices are keyed by."""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

log = logging.getLogger(__name__)


# The flags that change how fast a CPU runs the model (fp32 SIMD width, int8 and bf16 instructions): what a
# benchmark figure is printed with, and what `auto`'s cached choice is keyed by.
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


# int8 dot products summed in 32 bits in one instruction. Without them (AVX2 alone) int8 kernels multiply uint8 by
# int8 in pairs summed in 16 bits, which saturate on large values.
INT8_DOT_PRODUCTS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


BF16_INSTRUCTIONS = frozenset({"avx512_bf16", "amx_bf16"})  # bf16 products in hardware; elsewhere bf16 is emulated


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's entries in /proc/cpuinfo (empty where there is none)."""
    entries: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and entries:
                break  # the end of the first processor
            entries.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return entries


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()
