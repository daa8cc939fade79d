"""`lenet-edge --isa PROFILE COMMAND`: run an inference command with some of the CPU's ISA
extensions hidden, so that onnxruntime, XNNPACK (LiteRT, tflite-runtime) and numpy pick the kernels
a smaller CPU runs. Profiles: `avx2` hides AVX-512, AVX-VNNI and AMX (an AVX2-only x86: AMD Zen
2/3, Intel before Ice Lake; also what qemu-x86_64 -cpu max offers); `avx512vnni` hides AMX and the
VEX-encoded VNNI family (AVX-512 with VNNI and BF16: AMD Zen 4's set).

Why: a performance goal "on an AVX2 and on an AVX-512 machine" and the x86 validation of the
cycle estimates (arm/validate_x86.py, which emulates an AVX2 CPU) need AVX2 kernels, and the
machine at hand may have AVX-512 (or AMX, which a Zen 4 lacks and onnxruntime's int8 GEMM uses).
The mask changes which kernels run, not the core that runs them: a masked Xeon is not a Zen 3.
Results record `isa_mask` and both flag sets.

How: lenet_edge/cpuid_mask.c, compiled once into build/isa/ and loaded with LD_PRELOAD into a
re-executed `lenet-edge`, uses Linux's CPUID faulting (CPU flag cpuid_fault, kernel >= 4.12)
to rewrite what CPUID reports. Refused, in one line, where that is not available.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lenet_edge.runtime.env import MASK_PROFILES, cpuinfo_fields, isa_mask

SOURCE = Path(__file__).resolve().with_name("cpuid_mask.c")
BUILD = Path(__file__).resolve().parent.parent / "build" / "isa"
# Paddle and TensorFlow install their own SIGSEGV handlers (the mask's CPUID trap): inference only.
COMMANDS = ("bench", "evaluate", "profile", "search", "search-litert", "select", "bundle")
ENV = "LENET_EDGE_ISA_MASK"


class IsaError(Exception):
    pass


def _cpuinfo_flags() -> set[str]:
    return set(cpuinfo_fields().get("flags", "").split())


def check_supported(profile: str) -> None:
    if profile not in MASK_PROFILES:
        raise IsaError(f"--isa {profile!r}: unknown profile (known: {', '.join(MASK_PROFILES)})")
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise IsaError(
            f"--isa {profile}: needs Linux on x86_64 (this is {platform.system()} {platform.machine()})"
        )
    if "cpuid_fault" not in _cpuinfo_flags():
        raise IsaError(
            f"--isa {profile}: this CPU/hypervisor offers no CPUID faulting (no cpuid_fault in /proc/cpuinfo); "
            "run on an AVX2 machine instead"
        )


def library() -> Path:
    """The compiled mask, built on first use (named by the source's hash: a change rebuilds it)."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    lib = BUILD / f"libcpuidmask-{digest}.so"
    if lib.is_file():
        return lib
    cc_env = os.environ.get("CC", "")
    try:  # CC as make and the shells take it: a command with flags (`CC="gcc -std=c11"`)
        cc = shlex.split(cc_env) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    except ValueError as e:
        raise IsaError(f"CC={cc_env!r}: not a command line ({e})") from None
    if not cc:
        raise IsaError(f"--isa: needs a C compiler to build {SOURCE.name} (apt-get install gcc)")
    BUILD.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BUILD, prefix=".libcpuidmask-", suffix=".so")
    os.close(fd)
    try:
        try:
            p = subprocess.run(
                [*cc, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", tmp, str(SOURCE)],
                capture_output=True,
                text=True,
            )
        except OSError as e:  # CC=nonexistent-cc, CC=a-file-that-is-not-a-program
            what = f"CC={cc_env}" if cc_env else cc[0]
            raise IsaError(
                f"{what}: cannot run the C compiler ({e.strerror or e.__class__.__name__})"
            ) from None
        if p.returncode != 0:
            raise IsaError(f"{SOURCE}: compiling the CPUID mask failed: {p.stderr.strip()[-300:]}")
        os.replace(tmp, lib)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return lib


def masked_env(profile: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose processes start with the mask (children inherit it)."""
    check_supported(profile)
    env = dict(os.environ if env is None else env)
    lib = str(library())
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p and "libcpuidmask-" not in p]
    env["LD_PRELOAD"] = " ".join([lib, *preload])
    env[ENV] = profile
    return env


def enter(profile: str, command: str, argv: list[str]) -> None:
    """Make this `lenet-edge` process run under the mask: re-execute it with the mask preloaded,
    or, once re-executed, check that the mask took effect. Raises IsaError for the user."""
    if command not in COMMANDS:
        raise IsaError(f"--isa applies to the inference commands ({', '.join(COMMANDS)}), not {command!r}")
    active = isa_mask()
    if active == profile:
        return
    if os.environ.get(ENV) == profile:  # re-executed, yet the mask is not active
        raise IsaError(
            f"--isa {profile}: the CPUID mask did not take effect (LD_PRELOAD refused or no CPUID faulting; "
            f"or {ENV}={profile} was left in the environment: it is set for the re-executed process only)"
        )
    env = masked_env(profile)
    os.execve(sys.executable, [sys.executable, "-m", "lenet_edge.cli", "--isa", profile, *argv], env)
