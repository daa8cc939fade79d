"""Turns typed errors into one line on stderr and an exit code; used by every stage's CLI."""

from __future__ import annotations

import sys
from collections.abc import Callable

from runtime.errors import LenetEdgeError


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except LenetEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written for the unfinished step", file=sys.stderr)
        return 130
