"""Training convolutions with oneDNN: builds and loads the `fastconv` Paddle custom operator.

Paddle 3.3's dygraph CPU convolution (im2col + one small GEMM per image) was ~85 % of a training
step. The Paddle wheel ships oneDNN (`paddle/libs/libdnnl.so.3`) but uses it only for inference;
`fastconv.cc` trains the convolution with oneDNN's JIT kernels through Paddle's documented
custom-operator mechanism (`paddle.utils.cpp_extension`), 2-5x faster per layer
(docs/performance.md). The layers, autograd, optimizer and data order stay Paddle's.

Building it needs a C++ compiler and oneDNN's headers, which the wheel does not ship: they come
from PyPI's `onednn-devel` wheel of the same oneDNN minor version (pinned by version and sha256,
downloaded once with pip, headers only) into the lenet-edge cache. The library is the one Paddle
loads. The build is cached by the source, Paddle and header versions; concurrent trainings wait for
one build (a file lock). Where any of it is missing (another CPU architecture, no compiler, no
registry), training falls back to Paddle's kernel and says why; the training record names the
kernel either way (`versions.conv_kernel`), since weights trained with the two differ in the last
bits (summation order).

`python -m lenet_edge.train.fastconv` builds it and prints the kernel training would use.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

from lenet_edge.runtime.files import sha256_file
from lenet_edge.train.paddle_env import cache_root, import_paddle

SOURCE = Path(__file__).with_name("fastconv.cc")
# oneDNN 3.6.1's headers (oneAPI 2025.0.1); Paddle 3.3.1 ships libdnnl 3.6.2: same API and ABI.
HEADERS = {
    "requirement": "onednn-devel==2025.0.1",
    "file": "onednn_devel-2025.0.1-py2.py3-none-manylinux_2_28_x86_64.whl",
    "sha256": "6daea2b679ccc59bf0c3a174b97ff99270d04bff1c5cacd7f1bc9b8eee99c86f",
    "include": "onednn_devel-2025.0.1.data/data/include/",
    "onednn": (3, 6),
}
KERNELS = ("auto", "onednn", "paddle")
ENV = "LENET_EDGE_CONV_KERNEL"  # auto | onednn | paddle; the train CLI's --conv-kernel sets it


class Unavailable(Exception):
    """fastconv cannot be built or loaded here (the reason, in words)."""


def _libdnnl() -> Path:
    paddle = import_paddle()
    return Path(paddle.__file__).parent / "libs" / "libdnnl.so.3"


def onednn_version() -> tuple[int, int, int]:
    """The version of the oneDNN library Paddle ships (and fastconv links)."""

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    lib = ctypes.CDLL(str(_libdnnl()))
    lib.dnnl_version.restype = ctypes.POINTER(Version)
    v = lib.dnnl_version().contents
    return v.major, v.minor, v.patch


def _headers() -> Path:
    """oneDNN's include folder in the cache, fetched from PyPI (checked by sha256) the first time."""
    dest = cache_root() / "onednn-headers" / HEADERS["requirement"].replace("==", "-")
    if (dest / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        cmd += ["-d", tmp, HEADERS["requirement"]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / HEADERS["file"]
        if proc.returncode != 0 or not wheel.is_file():
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise Unavailable(f"pip download {HEADERS['requirement']} failed: {last}")
        if sha256_file(wheel) != HEADERS["sha256"]:
            raise Unavailable(f"{wheel.name}: sha256 differs from the pinned one")
        out = Path(tmp) / "include"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(HEADERS["include"]) and not name.endswith("/"):
                    rel = Path(name[len(HEADERS["include"]) :])
                    if ".." in rel.parts or rel.is_absolute():
                        raise Unavailable(f"{wheel.name}: member {name} leaves its folder")
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out / rel).write_bytes(z.read(name))
        if not (out / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
            raise Unavailable(f"{wheel.name}: no oneapi/dnnl/dnnl.hpp inside")
        try:
            out.rename(dest)
        except OSError:  # another process published it first
            if not (dest / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
                raise
    return dest


def _build_key() -> str:
    paddle = import_paddle()
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(f"{paddle.__version__}|{HEADERS['requirement']}|{platform.machine()}".encode())
    return h.hexdigest()[:16]


def source_sha256() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def _check_platform() -> None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise Unavailable(f"built for Linux x86_64 only (this is {platform.system()} {platform.machine()})")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise Unavailable("no C++ compiler (apt install g++)")
    if not _libdnnl().is_file():
        raise Unavailable(f"{_libdnnl()}: Paddle ships no oneDNN here")
    have = onednn_version()
    if have[:2] != HEADERS["onednn"]:
        raise Unavailable(
            f"Paddle's oneDNN is {'.'.join(map(str, have))}, the pinned headers are for "
            f"{'.'.join(map(str, HEADERS['onednn']))}"
        )


_LOADED: ModuleType | None = None


def load() -> ModuleType:
    """The compiled operators (`fastconv`, `fastconv_first`), built first if needed."""
    global _LOADED
    if _LOADED is None:
        _LOADED = _load()
    return _LOADED


def _load() -> ModuleType:
    _check_platform()  # imports Paddle, which the builder below needs first
    inc = _headers()
    build = cache_root() / "fastconv" / _build_key()
    build.mkdir(parents=True, exist_ok=True)
    libs = _libdnnl().parent
    import logging
    import warnings

    from paddle.utils.cpp_extension import load as cpp_load

    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build; the others wait, then load it
        if not any(build.rglob("*.so")):
            print("building fastconv (oneDNN training convolution), once per version ...", file=sys.stderr)
        quiet = logging.getLogger("utils.cpp_extension")  # its INFO lines on every load
        level = quiet.level
        quiet.setLevel(logging.WARNING)

        def build_and_load() -> ModuleType:
            with _stdout_silenced(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="No ccache found")
                return cpp_load(
                    name="lenet_edge_fastconv",
                    sources=[str(SOURCE)],
                    extra_cxx_cflags=["-O2", "-std=c++17"],
                    extra_include_paths=[str(inc)],
                    extra_ldflags=[f"-L{libs}", "-l:libdnnl.so.3", f"-Wl,-rpath,{libs}"],
                    build_directory=str(build),
                    verbose=False,
                )

        try:
            try:
                module = build_and_load()
            except Exception:
                if not any(build.rglob("*.so")):
                    raise
                # A build stopped mid-link (Ctrl-C during the first `make`) leaves a truncated
                # library newer than its source: the builder keeps it and every later training
                # fell back to Paddle's kernel. Start that build over, once.
                print("fastconv: the cached build does not load; building it again ...", file=sys.stderr)
                clear_build(build)
                module = build_and_load()
        except Exception as e:  # the compiler's or the loader's failure, in one line
            raise Unavailable(f"build failed in {build}: {str(e).strip().splitlines()[-1][:300]}") from e
        finally:
            quiet.setLevel(level)
    return module


def clear_build(build: Path) -> None:
    """Everything in a fastconv build folder but its lock (held by the caller)."""
    for p in build.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class _stdout_silenced:
    """Paddle's builder prints "Compiling user custom op" on stdout on every load, built or not; a
    pipeline's stdout carries results only (the compiler's errors go to stderr)."""

    def __enter__(self) -> None:
        sys.stdout.flush()
        self.saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)


def describe(ops: ModuleType | None) -> str:
    """The kernel's name as the training record keeps it."""
    if ops is None:
        return "paddle"
    v = ".".join(map(str, onednn_version()))
    return f"oneDNN {v} (lenet-edge fastconv {source_sha256()[:12]})"


def choose(kernel: str | None = None) -> tuple[ModuleType | None, str]:
    """(operators or None, the kernel's name) for `kernel` (default $LENET_EDGE_CONV_KERNEL, else
    auto): `paddle` is Paddle's own kernel; `onednn` fails if fastconv cannot be had; `auto` falls
    back to Paddle's kernel with one line on stderr saying why."""
    from lenet_edge.runtime.errors import ConfigError

    kernel = kernel or os.environ.get(ENV) or "auto"
    if kernel not in KERNELS:
        raise ConfigError(f"conv kernel {kernel!r}: expected one of {', '.join(KERNELS)} (${ENV})")
    if kernel == "paddle":
        return None, describe(None)
    try:
        ops = load()
    except Unavailable as e:
        if kernel == "onednn":
            raise ConfigError(f"fastconv: {e}") from e
        print(f"note: fastconv unavailable ({e}); training with Paddle's conv kernel", file=sys.stderr)
        return None, describe(None)
    return ops, describe(ops)


def main(argv: list[str] | None = None) -> int:
    from lenet_edge.runtime.cli import parser

    p = parser("train.fastconv", __doc__)
    p.add_argument("--kernel", choices=KERNELS, default=None, help=f"default ${ENV}, else auto")
    args = p.parse_args(argv)
    _, name = choose(args.kernel)
    print(f"training convolutions: {name}")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
