"""`make test` runs the suite on every core (pytest-xdist, --dist loadgroup). A module whose tests
share a module-scoped fixture (a training, an export, a TFLite conversion) must run on one worker,
or each worker that gets one of its tests builds the fixture again: such a module names its own
xdist_group."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]
SHARED = re.compile(r"@pytest\.fixture\(scope=\"(?:module|package|class)\"")
GROUP = re.compile(r"pytest\.mark\.xdist_group\(\"(\w+)\"\)")


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "cluster" not in p.parts)


def test_every_module_sharing_a_fixture_is_one_xdist_group():
    missing, owners = [], {}
    for path in _modules():
        text = path.read_text()
        groups = set(GROUP.findall(text))
        if SHARED.search(text) and not groups:
            missing.append(path.relative_to(TESTS).as_posix())
        for g in groups:
            owners.setdefault(g, set()).add(path.name)
    assert not missing, f"module-scoped fixtures without an xdist_group: {missing}"
    shared = {g: sorted(m) for g, m in owners.items() if len(m) > 1}
    assert not shared, f"one xdist_group across modules (they would run one after another): {shared}"


def test_the_layout_check_sees_the_modules_it_guards():
    """The check above is not vacuous: the heavy modules are found and each carries its group."""
    names = {p.name: set(GROUP.findall(p.read_text())) for p in _modules() if SHARED.search(p.read_text())}
    assert {"test_faults.py", "test_reference.py", "test_third_model.py"} <= set(names)
    assert all(names.values())
