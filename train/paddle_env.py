"""Imports Paddle with its caches under lenet-edge's cache root, not ~/.cache/paddle.

Paddle creates ~/.cache/paddle/dataset when it is imported and ~/.cache/paddle/to_static_tmp/<pid>
on every jit.save, from HOME, whatever XDG_CACHE_HOME says. Pointing HOME at our cache root for
exactly those moments keeps every file the pipeline makes under one root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


def cache_root() -> Path:
    """$XDG_CACHE_HOME/lenet-edge (default ~/.cache/lenet-edge): the MNIST cache lives here too."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet-edge"


@contextmanager
def paddle_home() -> Iterator[Path]:
    """HOME -> <cache root>/paddle-home for the block (Paddle derives its cache folders from it)."""
    home = cache_root() / "paddle-home"
    home.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


def import_paddle() -> ModuleType:
    """`import paddle`, the first time under paddle_home(), so its import-time folders land there."""
    if "paddle" not in sys.modules:
        with paddle_home():
            import paddle  # noqa: F401
    return sys.modules["paddle"]
