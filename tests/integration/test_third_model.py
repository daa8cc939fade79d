"""A third model through the whole toolchain: a depthwise-separable CNN on 3x32x32 input with
random weights, an ONNX file and a .npz data set made here (tests/third_model.py), never committed,
with its own workflow file. It must pass the checks the LeNets pass: export parity, the INT8
tolerances (its workflow's), the TFLite checks in both interpreters, the ORT target's identical
logits, and the bundle's self-check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.third_model import NAME, make_workflow

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DEVICE_BIN = ROOT / ".venv-device" / "bin"


def _run(*cmd: str | Path, cwd: Path = ROOT) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (cmd, proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def third(tmp_path_factory):
    d = tmp_path_factory.mktemp("third")
    wf = make_workflow(d / "model")
    onnx_dir = d / "onnx"
    le = BIN / "lenet-edge"
    _run(le, "export", "--workflow", wf, "--out-dir", onnx_dir)
    for stage in (["optimize"], ["quantize"], ["quantize", "--variant", "s2d"], ["quantize-ort"], ["tflite"]):
        _run(le, *stage, "--workflow", wf, "--onnx-dir", onnx_dir)
    return wf, onnx_dir, d


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def _use(monkeypatch, wf_path: Path) -> None:
    """The third workflow for this test only (the environment variable --workflow sets)."""
    from lenet_edge.workflow import EXTRA_ENV

    monkeypatch.setenv(EXTRA_ENV, str(wf_path))


def test_export_parity_and_record(third, monkeypatch):
    from lenet_edge.export.onnx_export import read_export_record
    from lenet_edge.workflow import parse_workflow

    wf_path, onnx_dir, _ = third
    _use(monkeypatch, wf_path)
    rec = read_export_record(onnx_dir / f"{NAME}.fp32.onnx")  # checked: known model, sha256
    wf = parse_workflow(wf_path)
    assert rec["source"] == "onnx" and rec["params"] == wf.params
    assert rec["parity"]["passed"] and rec["parity"]["top1_identical"] == rec["parity"]["images"]
    assert rec["parity"]["max_abs_logit_diff"] <= rec["parity"]["atol"]


def test_int8_meets_the_tolerances(third, monkeypatch):
    from lenet_edge.quantize.checks import int8_failures, load_tolerances, tolerances_for

    wf_path, onnx_dir, _ = third
    _use(monkeypatch, wf_path)
    tol = tolerances_for(NAME)
    # the workflow overrides the two size ratios only, each with its reason
    base = load_tolerances()
    assert {k for k in tol if tol[k] != base[k]} == {"int8_size_ratio_max", "int8_dynamic_size_ratio_max"}
    for f in (f"{NAME}.int8.qdq", f"{NAME}.int8.s2d.qdq"):
        rec = _json(onnx_dir / f"{f}.quantize.json")
        assert int8_failures(rec, tol) == [], f
        assert rec["num_classes"] == 10
    ort = _json(onnx_dir / f"{NAME}.int8.s2d.ort.quantize.json")
    assert ort["ort_target"]["check"]["max_abs_logit_diff_vs_source"] == 0.0
    tfl = _json(onnx_dir / f"{NAME}.tflite.json")
    assert tfl["failures"] == [] and set(tfl["checks"]) == {"ai-edge-litert", "tflite-runtime"}


def test_evaluate_bench_and_bundle(third):
    wf_path, onnx_dir, d = third
    data = wf_path.parent / "data.npz"
    models = [
        onnx_dir / f"{NAME}.fp32.onnx",
        onnx_dir / f"{NAME}.int8.qdq.onnx",
        onnx_dir / f"{NAME}.int8.s2d.ort.onnx",
        onnx_dir / f"{NAME}.fp32.tflite",
        onnx_dir / f"{NAME}.int8.full.tflite",
    ]
    out = _run(DEVICE_BIN / "lenet-edge", "evaluate", *models, "--data-dir", data)
    assert out.count("top-1 100.00 %") == len(models), out  # labelled by the FP32 model itself
    bench = d / "bench" / "b.json"
    _run(
        DEVICE_BIN / "lenet-edge",
        "bench",
        *models,
        "--batch",
        "1",
        "--threads",
        "1",
        "--calls",
        "run",
        "--runs",
        "20",
        "--warmup",
        "2",
        "--rounds",
        "1",
        "--json",
        bench,
    )
    rows = _json(bench)["results"]
    assert {r["model"] for r in rows} == {NAME} and len(rows) == len(models)
    _run(DEVICE_BIN / "lenet-edge", "bundle", "build", *models, "--data-dir", data, "--out-dir", d / "bundle")
    _run("tar", "xzf", d / "bundle" / "lenet-edge-bundle.tar.gz", "-C", d / "bundle")
    out = _run(
        DEVICE_BIN / "python", "-m", "runtime.bundle", "check", ".", cwd=d / "bundle" / "lenet-edge-bundle"
    )
    assert f"{len(models)}/{len(models)} models match the host" in out, out


def test_the_third_model_is_not_in_the_repository():
    assert not (ROOT / "workflows" / f"{NAME}.toml").exists()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    assert f"{NAME}.onnx" not in tracked and "data.npz" not in tracked


def test_nothing_to_train_for_an_onnx_source(third):
    wf_path, _, _ = third
    proc = subprocess.run(
        [str(BIN / "lenet-edge"), "train", "--workflow", str(wf_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nothing to train" in proc.stderr


def test_a_paddle_inference_model_exports_with_parity_against_paddle(third, tmp_path):
    from tests.third_model import PADDLE_NAME, make_paddle_inference

    wf_path, _, _ = third
    wf = make_paddle_inference(tmp_path / "pd", wf_path.parent / "data.npz")
    out = tmp_path / "onnx"
    _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", out)
    rec = _json(out / f"{PADDLE_NAME}.fp32.export.json")
    assert rec["source"] == "paddle-inference" and rec["parity"]["against"].startswith("Paddle")
    assert rec["parity"]["passed"] and rec["parity"]["top1_identical"] == rec["parity"]["images"]
    # the weights file is part of what the export vouches for: change it and the export is stale
    _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", out)  # up to date: no re-export
    weights = wf.parent / "net.pdiparams"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", out)
    again = _json(out / f"{PADDLE_NAME}.fp32.export.json")
    assert again["checkpoint_sha256"] != rec["checkpoint_sha256"] and again["parity"]["passed"]
