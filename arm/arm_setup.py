#!/usr/bin/env python3
"""The aarch64 sysroot, its wheels and the counting plugin, each step skipping what is already
there. Stdlib only: arm_check.py (the host's Python) and the lenet-edge CLI (search --target
cortex-*) both run it. Exit 0 when ready, else the failing step's exit code, named on stderr.
"""

import subprocess
import sys
from pathlib import Path

from arm_files import arm_build  # beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def ensure() -> int:
    sysroot = arm_build() / "sysroot"
    for step in (
        ["setup_sysroot.sh", sysroot],
        ["install_wheels.sh", sysroot, sysroot / "opt" / "armlab" / "site"],
        ["build_plugin.sh", sysroot],
    ):
        script = HERE / str(step[0])
        if not script.is_file():
            print(f"error: {script}: needs a source checkout of lenet-edge", file=sys.stderr)
            return 2
        rc = subprocess.run(["bash", str(script), *map(str, step[1:])], cwd=ROOT).returncode
        if rc != 0:
            print(f"error: arm/{step[0]} failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(ensure())
