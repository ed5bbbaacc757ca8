"""What machine a benchmark ran on: every table records the CPU model and its flags."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from imgsearch.embedder import cpu_flags

SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
               "amx_int8")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def cpu_line() -> str:
    """``<model>, <n> cores, flags: <the flags that decide inference speed>``."""
    flags = cpu_flags()
    shown = " ".join(f for f in SHOWN_FLAGS if f in flags) or "none of " + " ".join(SHOWN_FLAGS)
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, flags: {shown}"
