import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit

HEAVY = ("paddle", "paddle2onnx", "tensorflow", "onnx", "onnxruntime", "onnxslim", "matplotlib", "scipy")


def _entry_points() -> list[str]:
    """Every command-line entry point: each package's __main__ and each module with a __main__ guard."""
    found = []
    for pkg in ("train", "export", "optimize", "quantize", "runtime", "report"):
        for f in sorted((ROOT / pkg).glob("*.py")):
            text = f.read_text()
            if f.name == "__main__.py":
                found.append(f"lenet_edge.{pkg}")
            elif 'if __name__ == "__main__"' in text:
                found.append(f"lenet_edge.{pkg}.{f.stem}")
    return found


CLIS = _entry_points()


def test_every_entry_point_is_found():
    # the list is discovered, so a new CLI is covered by itself; these must be among them
    for m in (
        "train",
        "export",
        "optimize",
        "quantize",
        "quantize.tflite",
        "quantize.sweep",
        "runtime.bench",
        "runtime.bundle",
        "runtime.ingest",
        "runtime.profile",
        "export.variants",
        "report.study",
    ):
        assert f"lenet_edge.{m}" in CLIS, m


@pytest.mark.parametrize("module", CLIS)
def test_help_exits_zero_without_importing_heavy_libraries(module):
    # `--help` must be instant: no framework is imported before arguments are parsed. Checked by
    # what is in sys.modules, not by wall time (timings are for the benchmark target, not tests).
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('HEAVY', ','.join(heavy))\n"
        "sys.exit(code or 0)\n"
    )
    proc = run_cli("-c", code)
    assert proc.returncode == 0 and "usage: python -m" in proc.stdout, proc.stderr[-1000:]
    heavy = proc.stdout.rsplit("HEAVY", 1)[1].strip()
    assert heavy == "", f"{module} --help imports {heavy}"


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
    # runtime/ ships alone: numpy, one inference runtime and itself (relative imports), nothing else
    forbidden = {
        "paddle",
        "paddle2onnx",
        "tensorflow",
        "onnx",
        "train",
        "export",
        "quantize",
        "tqdm",
        "lenet_edge",
    }
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
        "lenet_edge.export",
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
    proc = run_cli("-m", "lenet_edge.train", "--epochs", "0", "--model", "lenet_pool")
    assert_one_line_error(proc, "lenet_pool: epochs must be 1..1000, got 0")


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--seed", "-1"], "seed must be 0..4294967295, got -1"),  # was a TypeError from paddle.seed
        (["--epochs", "1000000000000"], "epochs must be 1..1000"),  # trained for ever
        (["--batch", "1000000000000"], "batch size must be 1..60000"),  # one 60,000-image step
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),  # trained to NaN, exit 0
        (["--test-limit", "0"], "data limits must be >= 1, got 0"),
    ],
)
def test_train_checks_every_models_numbers_before_a_training_process_starts(argv, why, monkeypatch):
    """With two models the parent starts one training process per model: each refused a bad number
    on its own (two error lines, or a traceback from paddle.seed) after importing Paddle. Now the
    parent refuses it first, naming the model, and starts nothing."""
    import subprocess as sp

    from lenet_edge.runtime.errors import ConfigError
    from lenet_edge.train.__main__ import main

    monkeypatch.setattr(sp, "Popen", lambda *a, **k: pytest.fail("a training process was started"))
    with pytest.raises(ConfigError, match=f"lenet_pool: {re.escape(why)}"):
        main([*argv, "--jobs", "2"])


@pytest.mark.parametrize(
    ("module", "argv", "why"),
    [
        ("lenet_edge.train", ["--jobs", "0"], "--jobs: must be 1..1,024, got 0"),
        ("lenet_edge.quantize.sweep", ["--jobs", "-1"], "--jobs: must be 1..1,024, got -1"),  # ran 1 at once
        ("lenet_edge.report.study", ["--jobs", "0"], "--jobs: must be 1..1,024, got 0"),
        ("lenet_edge.jobs", ["--count", "1000000000000"], "--count: must be 1..100,000"),
        ("lenet_edge.train.bench", ["--steps", "0"], "--steps: must be 1..938, got 0"),  # ZeroDivisionError
        ("lenet_edge.train.bench", ["--steps", "1000000000000"], "--steps: must be 1..938"),  # MemoryError
        ("lenet_edge.train.bench", ["--rounds", "0"], "--rounds: must be 1..100, got 0"),  # exit 0, no figure
        (
            "lenet_edge.export",
            ["--atol", "inf"],
            "--atol: must be a finite number, got 'inf'",
        ),  # every parity passed
        ("lenet_edge.quantize", ["--max-drop-pp", "nan"], "--max-drop-pp: must be a finite number"),
        ("lenet_edge.quantize", ["--max-drop-pp", "-1"], "--max-drop-pp -1.0: must be >= 0"),  # a size error
        ("lenet_edge.report.study", ["--seeds", "1000000000000"], "must be <= 1000"),  # MemoryError
        ("lenet_edge.report.study", ["--epochs", "0"], "epochs must be 1..1000, got 0"),  # 10 failed jobs
        ("lenet_edge.quantize.calibration", ["--size", "500"], "take effect only with --write"),  # ignored
    ],
)
def test_count_and_tolerance_flags_are_refused_out_of_range_when_parsed(module, argv, why):
    """Every --jobs, count and tolerance flag takes its range only, refused by argparse (exit 2,
    the flag named) before any work: before, `--jobs -1` ran one job, `bench-train --steps 0`
    divided by zero, `--atol inf` let every export parity check pass."""
    proc = run_cli("-m", module, *argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert why in proc.stderr.strip().splitlines()[-1]
