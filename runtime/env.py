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
# Arm Ltd. (implementer 0x41) core part numbers -> the -mcpu name llvm-mca and the estimates use.
ARM_CORES = {
    "0xd03": "cortex-a53",
    "0xd04": "cortex-a35",
    "0xd05": "cortex-a55",
    "0xd07": "cortex-a57",
    "0xd08": "cortex-a72",
    "0xd09": "cortex-a73",
    "0xd0a": "cortex-a75",
    "0xd0b": "cortex-a76",
    "0xd0c": "neoverse-n1",
    "0xd0d": "cortex-a77",
    "0xd41": "cortex-a78",
}


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
    out = {
        "model": model or platform.processor() or "unknown",
        "isa_flags": sorted(f for f in wanted if f in flags),
        "logical_cpus": os.cpu_count(),
    }
    # the core (a Raspberry Pi's cpuinfo names the board, not the core): what an estimate is for
    if (
        fields.get("CPU implementer", "").lower() == "0x41"
        and fields.get("CPU part", "").lower() in ARM_CORES
    ):
        out["core"] = ARM_CORES[fields["CPU part"].lower()]
    return out


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
