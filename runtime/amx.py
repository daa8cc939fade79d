"""`--amx off`: keep this process's inference runtimes off Intel AMX.

On a Xeon with AMX, XNNPACK (LiteRT, tflite-runtime) and onnxruntime's MLAS take AMX tile kernels
for int8 GEMMs. For nets this small, tile configuration costs more than it saves: measured on the
Xeon, LiteRT's dynamic-range `lenet_pool` ran 26.7 µs with AMX and 16.3 µs without (FP32: 21.4 µs).
Linux hands AMX to a process only after it asks (arch_prctl ARCH_REQ_XCOMP_PERM for the tile data
state); both libraries ask, and take their AVX-512 VNNI kernels when refused. `deny_amx()` makes the
kernel refuse: a seccomp filter that answers that one request with EPERM (everything else passes).
It holds for the process and every process it starts, and must run before a runtime has asked.
Stdlib (ctypes) and runtime/ only: it ships to devices with runtime/.
"""

from __future__ import annotations

import ctypes
import errno
import json
import platform
import struct
from pathlib import Path

from .errors import ConfigError
from .files import quantize_record_path

SYS_ARCH_PRCTL = 158  # x86_64
ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM = 0x1022, 0x1023
XFEATURE_XTILEDATA = 18
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000


def applies() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


_REFUSED_HERE = False  # set by deny_amx: this process (and its children) run without AMX


def refused_here() -> bool:
    """Whether deny_amx ran in this process."""
    return _REFUSED_HERE


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def amx_permitted() -> bool:
    """Whether this process may already execute AMX tile instructions."""
    if not applies():
        return False
    mask = ctypes.c_ulong(0)
    if _libc().syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return False  # a kernel without dynamic XSTATE permissions: no AMX for anyone
    return bool(mask.value >> XFEATURE_XTILEDATA & 1)


def _filter() -> bytes:
    """Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}."""

    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    return b"".join([
        ins(ld, 0, 0, 4), ins(jeq, 0, 5, AUDIT_ARCH_X86_64),   # another ABI: allow
        ins(ld, 0, 0, 0), ins(jeq, 0, 3, SYS_ARCH_PRCTL),      # another syscall: allow
        ins(ld, 0, 0, 16), ins(jeq, 0, 1, ARCH_REQ_XCOMP_PERM),  # arch_prctl(REQ_XCOMP_PERM, ...)
        ins(ret, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        ins(ret, 0, 0, SECCOMP_RET_ALLOW),
    ])  # fmt: skip


def deny_amx() -> None:
    """Refuse AMX to this process and its children (no-op where there is no AMX to refuse:
    not Linux x86_64). Raises ConfigError if AMX was already granted or the filter is refused."""
    if not applies():
        return
    if amx_permitted():
        raise ConfigError(
            "--amx off: AMX was already granted to this process; it must be refused before a runtime starts"
        )

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = _filter()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = Fprog(len(code) // 8, ctypes.addressof(buf))
    libc = _libc()
    if (
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0
    ):
        raise ConfigError(
            f"--amx off: the kernel refused the seccomp filter ({errno.errorcode.get(ctypes.get_errno(), '?')})"
        )
    # the request is now refused, whatever the CPU (EPERM from the filter, not the kernel's EINVAL)
    if (
        libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != -1
        or ctypes.get_errno() != errno.EPERM
    ):
        raise ConfigError("--amx off: the seccomp filter does not refuse the AMX request")
    global _REFUSED_HERE
    _REFUSED_HERE = True


def recipe_amx(model: Path) -> str:
    """The AMX setting a file's recipe asks for: "off" if its record (<file>.quantize.json, or in a
    device bundle its manifest.json entry) says a search measured it faster with AMX refused to its
    runtime (`deny_amx`), else "on"."""
    rec = quantize_record_path(model)
    manifest = model.parent.parent / "manifest.json"
    if rec.is_file():
        src, key = rec, "search"
    elif model.parent.name == "models" and manifest.is_file():
        src, key = manifest, f"models/{model.name}"
    else:
        return "on"
    try:
        data = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{src}: not a readable JSON record ({type(e).__name__})") from e
    if src is manifest:  # the entry of this model, if the manifest lists it
        models = data.get("models") if isinstance(data, dict) else None
        data = {key: next((m for m in models or [] if isinstance(m, dict) and m.get("file") == key), None)}
    entry = data.get(key) if isinstance(data, dict) else None
    amx = entry.get("amx", "on") if isinstance(entry, dict) else "on"
    if amx not in ("on", "off"):
        raise ConfigError(f"{src}: {key}: amx must be 'on' or 'off', got {amx!r}")
    return amx


def effective_amx(model: Path) -> str:
    """What the file runs with in this benchmark: off everywhere if this process refused AMX
    (`--amx off`), else what its recipe asks for."""
    return "off" if refused_here() else recipe_amx(model)
