"""Describes the machine a result was measured on: CPU, ISA flags, OS, Python and library versions."""

from __future__ import annotations

import ctypes
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
# `lenet-edge --isa PROFILE` (lenet_edge/cpuid_mask.c): the /proc/cpuinfo flags a profile hides
# from the process's CPUID, so from every library's kernel choice.
_VEX_EXTRAS = {"avx_vnni", "avx_ifma", "avx_vnni_int8", "avx_ne_convert", "avx_vnni_int16", "avx10"}
_NOT_ZEN4 = {"avx512_fp16", "avx512_vp2intersect", "avx512pf", "avx512er", "avx512_4vnniw", "avx512_4fmaps"}
MASK_PROFILES = {
    # an AVX2-only x86 (AMD Zen 2/3), also what qemu-x86_64 -cpu max offers
    "avx2": lambda flag: flag.startswith(("avx512", "amx")) or flag in _VEX_EXTRAS,
    # AVX-512 with VNNI and BF16, without AMX and the VEX VNNI family (AMD Zen 4's set)
    "avx512vnni": lambda flag: flag.startswith("amx") or flag in _VEX_EXTRAS or flag in _NOT_ZEN4,
}
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


def isa_mask() -> str | None:
    """The CPUID mask profile this process runs under (lenet-edge --isa), or None."""
    try:
        fn = ctypes.CDLL(None).lenet_edge_isa_mask_profile
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    name = fn().decode()
    return name if name in MASK_PROFILES else None


def cpuinfo_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo (or of the given text); empty where there is none."""
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
    return fields


def cpu_info(cpuinfo: str | None = None, mask: str | None = None) -> dict[str, Any]:
    """CPU model, the ISA flags that decide kernels, core. Read live, the flags are the ones this
    process sees: under `lenet-edge --isa` the hidden ones move to `isa_flags_hidden`."""
    if cpuinfo is None:
        mask = isa_mask()
    fields = cpuinfo_fields(cpuinfo)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    wanted = ARM_FLAGS if "Features" in fields else X86_FLAGS
    model = fields.get("model name") or fields.get("Model") or ""
    if not model and "CPU part" in fields:  # ARM cpuinfo names the core by part number
        model = f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    isa = sorted(f for f in wanted if f in flags)
    out: dict[str, Any] = {
        "model": model or platform.processor() or "unknown",
        "isa_flags": isa,
        "logical_cpus": os.cpu_count(),
    }
    # x86 CPUID family / model / stepping: under a hypervisor the name can be only "AMD EPYC", and
    # these tell the generations apart (AMD family 25 is Zen 3 and Zen 4, 26 is Zen 5)
    for key, field in (("family", "cpu family"), ("model_number", "model"), ("stepping", "stepping")):
        if fields.get(field, "").isdigit() and "Features" not in fields:
            out[key] = int(fields[field])
    if mask:
        hidden = MASK_PROFILES[mask]
        out["isa_flags"] = [f for f in isa if not hidden(f)]
        out["isa_mask"] = mask
        out["isa_flags_hidden"] = [f for f in isa if hidden(f)]
    # the core (a Raspberry Pi's cpuinfo names the board, not the core): what an estimate is for
    if (
        fields.get("CPU implementer", "").lower() == "0x41"
        and fields.get("CPU part", "").lower() in ARM_CORES
    ):
        out["core"] = ARM_CORES[fields["CPU part"].lower()]
    return out


def whole_isa(report: dict[str, Any]) -> bool:
    """A benchmark result taken on its CPU's whole ISA: no `lenet-edge --isa` mask, AMX not refused
    (`--amx off`). The report quotes such a run, and only such a run's search records are filed."""
    cpu = (report.get("environment") or {}).get("cpu") or {}
    return not cpu.get("isa_mask") and (report.get("settings") or {}).get("amx") != "off"


def describe_cpu(cpu: dict[str, Any]) -> str:
    """One line for a result table: model, flags, and the mask if one was on."""
    cpuid = (
        f", family {cpu['family']} model {cpu['model_number']}"
        if isinstance(cpu.get("family"), int) and isinstance(cpu.get("model_number"), int)
        else ""
    )
    text = f"{cpu['model']}{cpuid} ({', '.join(cpu['isa_flags'])})"
    if cpu.get("isa_mask"):
        text += (
            f" [lenet-edge --isa {cpu['isa_mask']}: CPUID hid {', '.join(cpu.get('isa_flags_hidden', []))}; "
            "the kernels of that ISA on this core, not another CPU]"
        )
    return text


def code_version(root: Path | None = None) -> dict[str, Any] | None:
    """The lenet-edge commit this code runs from, and whether tracked files differ from it, when
    the code is a git checkout of its own (`root` holds .git); None otherwise (a device bundle, an
    installed copy, no git): a results file then says nothing rather than guess."""
    import subprocess

    root = Path(__file__).resolve().parent.parent if root is None else root
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "dirty": None if status is None else bool(status)}


def command_line(command: str, argv: list[str] | None) -> str:
    """How a results file was made, as a user would type it: `lenet-edge [--isa P] <command> <args>`."""
    import shlex
    import sys

    mask = isa_mask()
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["lenet-edge", *(["--isa", mask] if mask else []), command, *args])


def provenance_text(report: dict[str, Any]) -> str:
    """One Markdown line: the command that made a results file, and the code it ran (from
    `environment()`'s lenet_edge_code); empty if the report records neither."""
    code = (report.get("environment") or {}).get("lenet_edge_code") or {}
    parts = []
    if report.get("command"):
        parts.append(f"Command: `{report['command']}`")
    if code.get("git_commit"):
        dirty = " with uncommitted changes" if code.get("dirty") else ""
        parts.append(f"code: lenet-edge {code['git_commit'][:12]}{dirty}")
    return "; ".join(parts) + "." if parts else ""


def environment(runtime_versions: dict[str, str] | None = None) -> dict[str, Any]:
    import numpy as np

    code = code_version()
    return {
        "cpu": cpu_info(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "libc": " ".join(platform.libc_ver()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **(runtime_versions or {}),
        **({"lenet_edge_code": code} if code else {}),
    }
