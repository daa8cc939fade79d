"""The aarch64 tools' build folder and how they write into it: stdlib only (these scripts run on
the host's Python before any virtual environment exists, so they cannot use runtime/files.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` to a temporary file beside `path` (named with this process's id), renamed over `path`:
    a reader sees the old file or the whole new one, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_dead_staging(folder: Path, prefix: str) -> None:
    """The `PREFIX.PID.tmp` folders in `folder` whose process is gone: a killed run's staging."""
    for p in folder.glob(f"{prefix}.*.tmp"):
        pid = p.name[len(prefix) + 1 : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def arm_build() -> Path:
    """Where the aarch64 tools keep the sysroot, the unpacked bundle and the counts: $ARM_BUILD
    (empty is unset; a relative path is taken from the current folder, once, here), else build/arm."""
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("ARM_BUILD") or root / "build" / "arm").absolute()


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be the tools' build folder (made here if missing), or None."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create it ({e.strerror or e.__class__.__name__})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "cannot write there"
    return None
