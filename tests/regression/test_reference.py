"""Committed checkpoints -> export -> accuracy equals results/reference.json (exactly)."""

import json

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.regression
pytest.importorskip("paddle")

REFERENCE = json.loads((ROOT / "results" / "reference.json").read_text())
MODELS = ["lenet_pool", "lenet_stride"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir):
    d = tmp_path_factory.mktemp("ref_onnx")
    proc = run_cli("-m", "export", "--checkpoint-dir", "results/checkpoints", "--out-dir", str(d))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


@pytest.mark.parametrize("name", MODELS)
def test_committed_checkpoint_matches_recorded_sha256(name):
    from runtime.files import sha256_file

    ref = REFERENCE["models"][name]
    assert sha256_file(ROOT / ref["checkpoint"]) == ref["checkpoint_sha256"]


@pytest.mark.parametrize("name", MODELS)
def test_fp32_accuracy_equals_reference(exported, name):
    rec = json.loads((exported / f"{name}.fp32.export.json").read_text())
    ref = REFERENCE["models"][name]
    assert rec["params"] == ref["params"] == {"lenet_pool": 61_706, "lenet_stride": 66_346}[name]
    # The pipeline is deterministic: same weights, same data -> the same 10,000 predictions.
    assert rec["test_top1"] == ref["fp32"]["test_top1"]
    assert rec["test_top2"] == ref["fp32"]["test_top2"]
    assert rec["parity"]["max_abs_logit_diff"] <= 1e-4 and rec["parity"]["top1_identical"] == 10_000


@pytest.mark.parametrize("name", MODELS)
def test_evaluate_cli_reproduces_reference(exported, name):
    proc = run_cli("-m", "runtime.evaluate", "--json", str(exported / f"{name}.fp32.onnx"))
    assert proc.returncode == 0, proc.stderr[-1000:]
    (acc,) = json.loads(proc.stdout).values()
    assert acc["top1"] == REFERENCE["models"][name]["fp32"]["test_top1"] and acc["n"] == 10_000


def test_reference_accuracy_in_expected_band():
    # The brief's expectation for the blog recipe; a guard against committing a broken run.
    assert 0.984 <= REFERENCE["models"]["lenet_pool"]["fp32"]["test_top1"] <= 0.990
    assert 0.986 <= REFERENCE["models"]["lenet_stride"]["fp32"]["test_top1"] <= 0.993


def test_readme_table_matches_reference():
    from export.reference import TABLE_END, TABLE_START, render_table

    readme = (ROOT / "README.md").read_text()
    table = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == render_table(REFERENCE), "README results table is stale: run `make readme`"
