"""Describes the machine a result was measured on: CPU, ISA flags, OS, Python and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# ISA features that decide which int8/fp32 kernels a runtime can use.
X86_FLAGS = (
    "sse4_1",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
ARM_FLAGS = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    wanted = ARM_FLAGS if "Features" in fields else X86_FLAGS
    model = fields.get("model name") or fields.get("Model") or ""
    if not model and "CPU part" in fields:  # ARM cpuinfo names the core by part number
        model = f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return {
        "model": model or platform.processor() or "unknown",
        "isa_flags": sorted(f for f in wanted if f in flags),
        "logical_cpus": os.cpu_count(),
    }


def environment(runtime_versions: dict[str, str] | None = None) -> dict[str, Any]:
    import numpy as np

    return {
        "cpu": cpu_info(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "libc": " ".join(platform.libc_ver()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **(runtime_versions or {}),
    }
