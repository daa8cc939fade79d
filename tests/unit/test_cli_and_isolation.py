import ast
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit

CLIS = [
    "train",
    "train.data",
    "train.bench",
    "export",
    "export.reference",
    "runtime.evaluate",
    "report",
    "report.study",
    "report.invariance",
]


@pytest.mark.parametrize("module", CLIS)
def test_help_is_instant_and_exits_zero(module):
    t0 = time.perf_counter()
    proc = run_cli("-m", module, "--help")
    assert proc.returncode == 0 and "usage: python -m" in proc.stdout, proc.stderr[-1000:]
    # Heavy libraries are imported inside commands only (Paddle alone takes seconds).
    assert time.perf_counter() - t0 < 3.0


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_runtime_imports_only_numpy_and_a_runtime():
    allowed_third_party = {"numpy", "onnxruntime", "tflite_runtime", "ai_edge_litert"}
    forbidden = {"paddle", "paddle2onnx", "tensorflow", "onnx", "train", "export", "quantize", "tqdm"}
    for f in sorted((ROOT / "runtime").glob("*.py")):
        mods = _imports(f)
        assert not mods & forbidden, (f.name, mods & forbidden)
        import sys

        third = {m for m in mods if m not in sys.stdlib_module_names and m != "runtime"}
        assert third <= allowed_third_party, (f.name, third)


def test_evaluate_rejects_a_non_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    assert_one_line_error(run_cli("-m", "runtime.evaluate", str(bad)), str(bad), "cannot load")


def test_export_reports_a_missing_checkpoint(tmp_path):
    proc = run_cli(
        "-m",
        "export",
        "--model",
        "lenet_pool",
        "--checkpoint-dir",
        str(tmp_path),
        "--out-dir",
        str(tmp_path / "out"),
    )
    assert_one_line_error(proc, "lenet_pool.npz", "not found")
    assert not (tmp_path / "out").exists()


def test_train_rejects_bad_flags():
    proc = run_cli("-m", "train", "--epochs", "0", "--model", "lenet_pool")
    assert_one_line_error(proc, "must be positive")
