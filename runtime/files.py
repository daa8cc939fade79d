"""Atomic writes, owned temp folders, hashing of files and of the code that makes an artifact.

An artifact is either complete on disk or absent: it is written to a temp file named after the
writing process, then renamed. Temp files and folders left by a process that was killed (kill -9
skips every cleanup) are removed by the next writer of the same artifact or stage.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The project's own top-level packages (the import closure of a stage stays inside these).
PACKAGES = ("train", "export", "optimize", "quantize", "runtime", "report")
TEMP_PREFIX = "lenet-edge-"


def quantize_record_path(onnx_file: str | Path) -> Path:
    """<name>.quantize.json beside an INT8 model: the record quantize, quantize-ort and search write
    and bench, select and bundle read."""
    p = Path(onnx_file)
    return p.with_name(p.name.removesuffix(".onnx") + ".quantize.json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- fault injection (tests only) -------------------------------------------------------------
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process here if LENET_EDGE_KILL_AT names this point ("name" or "name#k" for
    the k-th time it is reached). The fault tests use it to kill a stage at exact moments, such as
    between writing a model and writing its record; without the variable it does nothing."""
    want = os.environ.get("LENET_EDGE_KILL_AT")
    if not want:
        return
    point, _, nth = want.partition("#")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --- stale temp files and folders ---------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_if_orphaned(p: Path, pid_text: str) -> None:
    """Remove p if the process that made it (pid in its name) no longer exists."""
    if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
        return
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except FileNotFoundError:
        pass  # another process cleaned it first


def remove_stale_temp_files(path: Path) -> None:
    """Delete `.NAME.PID.xxxx.tmp` siblings of `path` whose writer is dead."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp$")
    for sib in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        m = pattern.match(sib.name)
        if m:
            _remove_if_orphaned(sib, m.group(1))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def owned_temp_dir(stage: str) -> Iterator[Path]:
    """A temp folder `lenet-edge-STAGE-PID-xxxx` removed on exit; first removes the folders of
    this stage whose process was killed before it could clean up."""
    root = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(TEMP_PREFIX + stage)}-(\d+)-[^/]+$")
    for old in root.glob(f"{TEMP_PREFIX}{stage}-*"):
        m = pattern.match(old.name)
        if m:
            _remove_if_orphaned(old, m.group(1))
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{stage}-{os.getpid()}-") as tmp:
        yield Path(tmp)


# --- atomic writes ------------------------------------------------------------------------------


def write_problem(path: str | Path, folder: bool = False) -> str | None:
    """Why `path` (a file, or with `folder` a folder) could not be written, found before the work
    that makes it, or None: a folder where a file goes (or the reverse), a file on the way, a place
    that takes no new file (/proc, read-only, no permission). Creates nothing that stays."""
    path = Path(path)
    if path.is_dir() and not folder:
        return "is a directory, expected a file to write"
    if path.exists() and not path.is_dir() and folder:
        return "is a file, expected a folder"
    place = path if folder and path.is_dir() else path.parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        return f"cannot write there ({place} is a file, not a folder)"
    try:
        fd, probe = tempfile.mkstemp(prefix=".lenet-edge-probe.", dir=place)
    except OSError as e:  # /proc answers ENOENT for a folder that is there
        why = "takes no new files" if e.errno == errno.ENOENT else e.strerror or e.__class__.__name__
        return f"cannot write there ({place}: {why})"
    os.close(fd)
    os.unlink(probe)
    return None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it over `path` only if the block succeeds."""
    from .errors import LenetEdgeError

    path = Path(path)
    if path.is_dir():
        raise LenetEdgeError(f"{path}: is a directory, expected a file to write")
    try:  # an output path is user input: a file where a folder should be, /proc, no permission
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        blocker = next((a for a in reversed(path.parents) if a.exists() and not a.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else e.strerror or e.__class__.__name__
        raise LenetEdgeError(f"{path}: cannot write there ({why})") from e
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual mode
    try:
        yield tmp_path
        fault_point("before-rename")
        try:
            os.replace(tmp_path, path)
        except OSError as e:
            raise LenetEdgeError(f"{path}: cannot write there ({e.strerror or e.__class__.__name__})") from e
        fault_point("after-rename")
    finally:
        # Interrupted or failed: the half-written temp file never takes the real name.
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_bytes(obj: Any) -> bytes:
    """How every JSON result is written: indented, keys in their order, a final newline."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def write_json_and_markdown(path: str | Path, obj: Any, markdown: str) -> Path:
    """A result as PATH (JSON) and its Markdown twin PATH with .md: both temp files are made before
    either is written, so a path that cannot be written leaves neither; the twin's path."""
    from .errors import LenetEdgeError

    path = Path(path)
    md = path.with_suffix(".md")
    if md == path:
        raise LenetEdgeError(
            f"{path}: name the JSON result something other than .md (its Markdown twin is {md})"
        )
    with atomic_path(path) as tj, atomic_path(md) as tm:
        tj.write_bytes(json_bytes(obj))
        tm.write_bytes(markdown.encode())
    return md


def missing_file(path: str | Path, what: str = "file") -> str | None:
    """Why `path` is not a regular file to read ("model file not found", "is a directory, ..."),
    or None. A FIFO or a device is refused: reading one waited forever."""
    p = Path(path)
    if p.is_file():
        return None
    if p.is_dir():
        return f"is a directory, not a {what}"
    if p.exists():
        return f"not a regular file (a FIFO, socket or device), expected a {what}"
    return f"{what} not found"


def read_json(path: str | Path) -> Any:
    from .errors import LenetEdgeError

    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():  # `ingest FIFO` waited forever
        raise LenetEdgeError(f"{path}: {missing_file(path, 'JSON file')}")
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise LenetEdgeError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise LenetEdgeError(f"{path}: is a directory, expected a JSON file") from e
    except PermissionError as e:
        raise LenetEdgeError(f"{path}: permission denied") from e
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, >4300-digit integers
        raise LenetEdgeError(f"{path}: not valid JSON ({str(e)[:200]})") from e


def inside(folder: str | Path, path: str | Path) -> Path:
    """`path` resolved, if it lies inside `folder` (symlinks followed); else LenetEdgeError."""
    from .errors import LenetEdgeError

    base, p = Path(folder).resolve(), Path(path).resolve()
    if p != base and base not in p.parents:
        raise LenetEdgeError(f"{path}: resolves outside {folder}")
    return p


# --- what code made an artifact -----------------------------------------------------------------
def _module_file(module: str) -> Path | None:
    parts = module.removeprefix("lenet_edge.").split(".")
    if parts[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def import_closure(*modules: str) -> list[Path]:
    """The project's .py files that `modules` import, directly or not, at any depth (imports
    inside functions included: a stage's lazy imports decide its output too)."""
    seen: dict[Path, None] = {}
    todo = list(modules)
    while todo:
        mod = todo.pop()
        f = _module_file(mod)
        if f is None or f in seen:
            continue
        seen[f] = None
        # the package a relative import starts from (runtime/ imports itself relatively)
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                if not base:
                    continue
                todo.append(base)
                todo += [f"{base}.{a.name}" for a in node.names]  # `from pkg import mod`
    return sorted(seen)


def code_sha256(*modules: str) -> str:
    """sha256 over the path and bytes of every project file in the import closure of `modules`:
    the freshness key of a stage's code. Editing any of them makes its artifacts stale."""
    h = hashlib.sha256()
    for f in import_closure(*modules):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
