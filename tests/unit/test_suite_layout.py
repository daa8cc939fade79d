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


def _sharing_modules() -> dict[str, set[str]]:
    """Every test module outside tests/cluster that shares a fixture -> the xdist groups it names."""
    found = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        text = path.read_text()
        if "cluster" not in path.parts and SHARED.search(text):
            found[path.relative_to(TESTS).as_posix()] = set(GROUP.findall(text))
    return found


def test_every_module_sharing_a_fixture_is_one_xdist_group():
    modules = _sharing_modules()
    missing = [name for name, groups in modules.items() if not groups]
    assert not missing, f"module-scoped fixtures without an xdist_group: {missing}"
    owners: dict[str, set[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        for g in set(GROUP.findall(path.read_text())):
            owners.setdefault(g, set()).add(path.name)
    shared = {g: sorted(m) for g, m in owners.items() if len(m) > 1}
    assert not shared, f"one xdist_group across modules (they would run one after another): {shared}"


def test_the_layout_check_sees_the_modules_it_guards():
    """The check above is not vacuous: the heavy modules are found and each carries its group."""
    names = {Path(name).name: groups for name, groups in _sharing_modules().items()}
    assert {"test_faults.py", "test_reference.py", "test_third_model.py"} <= set(names)
    assert all(names.values())
