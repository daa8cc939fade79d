"""Committed checkpoints -> export -> accuracy equals results/reference.json (exactly)."""

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = [pytest.mark.regression, pytest.mark.xdist_group("reference")]
pytest.importorskip("paddle")

REFERENCE = json.loads((ROOT / "results" / "reference.json").read_text())
MODELS = ["lenet_pool", "lenet_stride"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir):
    d = tmp_path_factory.mktemp("ref_onnx")
    proc = run_cli("-m", "lenet_edge.export", "--checkpoint-dir", "results/checkpoints", "--out-dir", str(d))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


@pytest.mark.parametrize("name", MODELS)
def test_committed_checkpoint_matches_recorded_sha256(name):
    from lenet_edge.runtime.files import sha256_file

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
    # The README and the report quote this size: a change to what export writes must re-record it.
    assert rec["onnx_bytes"] == ref["fp32"]["onnx_bytes"], (
        "the export's size is another code's: run `make export quantize` and "
        "`make reference TRAIN_DIR=results/checkpoints`"
    )


@pytest.mark.parametrize("name", MODELS)
def test_evaluate_cli_reproduces_reference(exported, name):
    proc = run_cli("-m", "runtime.evaluate", "--json", "-", str(exported / f"{name}.fp32.onnx"))
    assert proc.returncode == 0, proc.stderr[-1000:]
    (acc,) = json.loads(proc.stdout).values()
    assert acc["top1"] == REFERENCE["models"][name]["fp32"]["test_top1"] and acc["n"] == 10_000


def test_reference_accuracy_in_expected_band():
    # The brief's expectation for the blog recipe; a guard against committing a broken run.
    assert 0.984 <= REFERENCE["models"]["lenet_pool"]["fp32"]["test_top1"] <= 0.990
    assert 0.986 <= REFERENCE["models"]["lenet_stride"]["fp32"]["test_top1"] <= 0.993


def test_readme_tables_match_reference():
    from lenet_edge.export.reference import (
        QUANT_END,
        QUANT_START,
        TABLE_END,
        TABLE_START,
        render_quant_table,
        render_table,
    )

    readme = (ROOT / "README.md").read_text()
    table = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == render_table(REFERENCE), "README results table is stale: run `make readme`"
    quant = readme.split(QUANT_START, 1)[1].split(QUANT_END, 1)[0].strip()
    assert quant == render_quant_table(REFERENCE), "README quantization table is stale: run `make readme`"


# ---- INT8: the committed checkpoints, exported and quantized with the default recipes ----


@pytest.fixture(scope="module")
def quantized(exported):
    proc = run_cli("-m", "lenet_edge.quantize", "--onnx-dir", str(exported), "--no-check", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = {}
    for path in exported.glob("*.int8.*.quantize.json"):
        rec = json.loads(path.read_text())
        recs[rec["model"]] = rec
    assert set(recs) == set(MODELS)
    return recs


@pytest.fixture(scope="module")
def tolerances():
    from lenet_edge.quantize.checks import load_tolerances

    return load_tolerances()


@pytest.mark.parametrize("name", MODELS)
def test_int8_within_tolerances(quantized, tolerances, name):
    from lenet_edge.quantize.checks import int8_failures

    rec = quantized[name]
    assert rec["fp32"]["test_top1"] == REFERENCE["models"][name]["fp32"]["test_top1"]  # exact, deterministic
    assert int8_failures(rec, tolerances) == []
    mc = rec["mcnemar"]
    print(
        f"{name}: INT8 drop {rec['accuracy_drop_pp']:+.2f} pp, agreement {100 * rec['agreement_with_fp32']:.2f} %, "
        f"McNemar {mc['ref_only_correct']}/{mc['new_only_correct']} one-sided p={mc['p_new_worse']:.3g}, "
        f"size {rec['size_ratio_vs_fp32']:.3f} x FP32"
    )


@pytest.mark.parametrize("name", MODELS)
def test_int8_matches_committed_reference(quantized, tolerances, name):
    rec, ref = quantized[name], REFERENCE["models"][name]["int8"]
    assert rec["recipe"] == ref["recipe"] and rec["calibration"]["sha256"] == ref["calibration_sha256"]
    assert rec["onnx_bytes"] == ref["onnx_bytes"], (
        "the default INT8 file's size is another code's: run `make export quantize` and "
        "`make reference TRAIN_DIR=results/checkpoints`"
    )
    assert abs(100 * (rec["test_top1"] - ref["test_top1"])) <= tolerances["int8_top1_drop_pp_max"]
    assert rec["agreement_with_fp32"] >= tolerances["int8_agreement_min"]
    assert rec["nodes"]["clean_total"] < rec["nodes"]["exported_total"]  # the clean-up did something


@pytest.mark.parametrize("name", MODELS)
def test_int8_file_carries_metadata_and_contract(quantized, exported, name):
    import onnx

    rec = quantized[name]
    model = onnx.load(str(exported / rec["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["model"] == name and meta["recipe"] == rec["recipe_name"]
    assert meta["fp32_sha256"] == rec["fp32"]["onnx_sha256"]
    assert meta["calibration_sha256"] == rec["calibration"]["sha256"]
    assert "0..255" in meta["input_contract"] and float(meta["agreement_with_fp32"]) > 0.99
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == [
        "scores"
    ]


def test_per_layer_sqnr_recorded(quantized):
    for rec in quantized.values():
        if rec["recipe"]["quant_format"] == "qdq":
            w = rec["sqnr"]["weights_sqnr_db"]
            assert len(w) >= 5 and all(v > 20 for v in w.values()), w  # int8 weights: ~35-45 dB


def test_broken_quantizer_fails_the_checks_and_never_replaces_a_good_model(quantized, exported, tolerances):
    """The checks above can fail: calibrating on all-zero images must break the tolerances; and
    a recipe that fails them is refused before it is written, leaving the good model and record."""
    import numpy as np

    from lenet_edge.quantize.calibration import Calibration, load_calibration
    from lenet_edge.quantize.checks import int8_failures
    from lenet_edge.quantize.ort_quant import QuantizeError, quantize_model, quantize_record_path
    from lenet_edge.quantize.recipe import DEFAULT_RECIPES
    from lenet_edge.runtime.files import sha256_file

    class ZeroCalibration(Calibration):
        def pixels(self, data_dir=None):
            return np.zeros((1000, 1, 28, 28), np.float32)

    good = load_calibration()
    zeros = ZeroCalibration(indices=good.indices, sha256="zeros", source="zeros")
    target = exported / "lenet_pool.int8.qdq.onnx"
    before = {f: sha256_file(f) for f in (target, quantize_record_path(target))}
    seen = []

    def check(rec):
        seen.append(int8_failures(rec, tolerances))
        return seen[-1]

    with pytest.raises(QuantizeError, match="nothing written"):
        quantize_model(
            exported / "lenet_pool.fp32.onnx",
            target,
            DEFAULT_RECIPES["lenet_pool"],
            zeros,
            sqnr=False,
            progress=False,
            check=check,
        )
    fails = seen[0]
    assert any("drop" in f for f in fails) and any("agreement" in f for f in fails), fails
    assert {f: sha256_file(f) for f in before} == before
    assert not list(exported.glob(".*.tmp"))


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_export_refuses_a_checkpoint_with_non_finite_weights(tmp_path, bad):
    """Before: NaN weights exported with exit 0, parity 'passed' and top-1 9.8 %."""
    import numpy as np

    from lenet_edge.runtime.files import sha256_file, write_json_atomic
    from lenet_edge.train.checkpoint import npz_bytes, record_path

    with np.load(ROOT / "results" / "checkpoints" / "lenet_pool.npz") as z:
        state = {k: z[k] for k in z.files}
    key = sorted(state)[0]
    state[key].flat[0] = float(bad)
    ckpt = tmp_path / "lenet_pool.npz"
    ckpt.write_bytes(npz_bytes(state))
    rec = json.loads((ROOT / "results" / "checkpoints" / "lenet_pool.train.json").read_text())
    rec["checkpoint_sha256"] = sha256_file(ckpt)
    write_json_atomic(record_path(ckpt), rec)
    out = tmp_path / "out"
    proc = run_cli(
        "-m",
        "lenet_edge.export",
        "--model",
        "lenet_pool",
        "--checkpoint-dir",
        str(tmp_path),
        "--out-dir",
        str(out),
    )
    assert_one_line_error(proc, "lenet_pool.npz", key, "NaN/Inf")
    assert not out.exists() or not any(out.iterdir())


def test_export_parity_fails_when_onnx_gives_nan(exported, monkeypatch):
    """The parity check itself: NaN on one side is a failure, not a max |Δ| that compares False."""
    import numpy as np

    import lenet_edge.export.onnx_export as ex
    from lenet_edge.runtime.errors import ConversionError

    real = ex.OnnxRunner

    class NanRunner(real):
        def predict_batched(self, pixels, batch_size=1000):
            out = super().predict_batched(pixels, batch_size)
            out[0, 0] = np.nan
            return out

    monkeypatch.setattr(ex, "OnnxRunner", NanRunner)
    with pytest.raises(ConversionError, match="parity failed"):
        ex.export_model(ROOT / "results" / "checkpoints" / "lenet_pool.npz", exported / "nan", force=True)
    assert not (exported / "nan" / "lenet_pool.fp32.onnx").exists()


# ---- TFLite: the same exports through onnx2tf, checked in ai-edge-litert and tflite-runtime ----

TFLITE_VENV, DEVICE_VENV = ROOT / ".venv-tflite", ROOT / ".venv-device"
needs_tflite_envs = pytest.mark.skipif(
    not ((TFLITE_VENV / "bin" / "onnx2tf").is_file() and (DEVICE_VENV / "bin" / "python").is_file()),
    reason="run `make setup-tflite setup-device` (make test does)",
)


@pytest.fixture(scope="module")
def tflite(quantized, exported):
    proc = run_cli("-m", "lenet_edge.quantize.tflite", "--onnx-dir", str(exported), timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-1500:])
    return {name: json.loads((exported / f"{name}.tflite.json").read_text()) for name in MODELS}


@needs_tflite_envs
@pytest.mark.parametrize("name", MODELS)
def test_tflite_parity_and_int8_in_both_interpreters(tflite, tolerances, name):
    rec = tflite[name]
    assert rec["failures"] == []
    assert set(rec["checks"]) == {"ai-edge-litert", "tflite-runtime"}  # every file loads in both
    for interp, c in rec["checks"].items():
        assert c["fp32"]["max_abs_diff_vs_onnx"] <= tolerances["tflite_fp32_max_abs_diff"], interp
        assert (
            c["fp32"]["agreement_with_onnx"] == 1.0
            and c["fp32"]["top1"] == REFERENCE["models"][name]["fp32"]["test_top1"]
        )
        i8 = c["int8_full"]
        assert i8["accuracy_drop_pp"] <= tolerances["int8_top1_drop_pp_max"]
        assert i8["agreement_with_fp32"] >= tolerances["int8_agreement_min"]
        assert i8["mcnemar"]["p_new_worse"] >= tolerances["mcnemar_p_int8_worse_min"]
        assert c["ort_int8_vs_tflite_int8_same_correctness"] >= 0.998  # the cross-runtime check
    assert (
        rec["outputs"]["int8.full"]["bytes"]
        <= tolerances["int8_size_ratio_max"] * rec["outputs"]["fp32"]["bytes"]
    )


@needs_tflite_envs
def test_tflite_int8_takes_uint8_camera_bytes(tflite, exported):
    code = (
        "import sys; sys.path.insert(0, '.'); from runtime.runner import TfliteRunner; "
        f"r = TfliteRunner('{exported}/lenet_pool.int8.full.tflite'); i = r.info(); "
        "print(i['input_dtype'], i['input_quantization'])"
    )
    proc = subprocess.run(
        [str(DEVICE_VENV / "bin" / "python"), "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.stdout.split()[:1] == ["uint8"] and "[1.0, 0]" in proc.stdout, proc.stderr[-1000:]


@needs_tflite_envs
def test_tflite_runtime_runs_int8_graphs_on_its_xnnpack_int8_kernels(tflite, exported):
    # tflite-runtime 2.14's default XNNPACK delegate has its int8 kernels off: the runner creates
    # the wheel's own delegate with them on (runtime.runner.xnnpack_int8_delegate); off again with
    # LENET_EDGE_XNNPACK_INT8=0, which leaves no delegated partition in an int8 graph
    code = (
        "import sys; sys.path.insert(0, '.'); from runtime.runner import TfliteRunner; "
        f"r = TfliteRunner('{exported}/lenet_pool.int8.full.tflite'); "
        "print(r.backend, r.info()['delegate'].split(' (')[0], "
        "sum(o['op_name'] == 'DELEGATE' for o in r.it._get_ops_details()))"
    )
    seen = {}
    for flag in ("1", "0"):
        env = {**os.environ, "LENET_EDGE_TFLITE": "tflite-runtime", "LENET_EDGE_XNNPACK_INT8": flag}
        proc = subprocess.run(
            [str(DEVICE_VENV / "bin" / "python"), "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-1000:]
        assert "INFO: Created TensorFlow Lite" not in proc.stderr  # the runner drops the per-load line
        seen[flag] = proc.stdout.split()
    assert (
        seen["1"][:5] == ["tflite-runtime", "XNNPACK", "with", "int8", "kernels"] and int(seen["1"][-1]) >= 1
    )
    assert seen["0"][:2] == ["tflite-runtime", "default"] and seen["0"][-1] == "0"


@needs_tflite_envs
def test_interpreter_rejecting_a_file_is_one_line(tmp_path):
    from tests.conftest import assert_one_line_error

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"TFL3" + bytes(60))
    for interp in ("ai-edge-litert", "tflite-runtime"):
        proc = subprocess.run(
            [str(DEVICE_VENV / "bin" / "python"), "-m", "runtime.evaluate", str(bad)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "LENET_EDGE_TFLITE": interp},
        )
        assert_one_line_error(proc, "model.tflite", "cannot load the model")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no native INFO line before it


@needs_tflite_envs
def test_litert_search_edits_layers_checks_times_and_publishes(tflite, exported, tmp_path):
    """quantize.litert_search on lenet_pool (few timed runs): a layer taken to float computes from its
    own int8 weights through DEQUANTIZE (same bytes, INT8 size; TFLite's version for its int8 input), one taken to int8 is within half a
    step of its floats; every candidate has a
    check verdict, only passing ones are timed; the choice is published with a record that goes stale
    when its source changes; a damaged source is one line."""
    import shutil

    from lenet_edge.quantize.published import main as published_main
    from lenet_edge.quantize.published import stale_reason

    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("lenet_pool.fp32.tflite", "lenet_pool.int8.dynamic.tflite"):
        shutil.copy(exported / f, d / f)
    py = str(DEVICE_VENV / "bin" / "python")
    code = (
        "import sys, numpy as np; from ai_edge_litert.tools import flatbuffer_utils as fbu; "
        "from ai_edge_litert import schema_py_generated as sc; "
        "from lenet_edge.quantize.litert_search import layers, with_int8_layers; "
        "data = open(sys.argv[1], 'rb').read(); m = fbu.read_model_from_bytearray(bytearray(data)); "
        "ls = layers(m); src = {x.label for x in ls if x.int8}; "
        "assert src == {'CONV_2D:1', 'FULLY_CONNECTED:0', 'FULLY_CONNECTED:1'}, src; "
        "out = with_int8_layers(data, frozenset(src - {'FULLY_CONNECTED:0'} | {'CONV_2D:0'})); "
        "new = fbu.read_model_from_bytearray(bytearray(out)); ops, ts = new.subgraphs[0].operators, new.subgraphs[0].tensors; "
        "code = lambda o: fbu.get_builtin_code_from_operator_code(new.operatorCodes[o.opcodeIndex]); "
        "d = ops[0]; assert code(d) == sc.BuiltinOperator.DEQUANTIZE and len(ops) == len(m.subgraphs[0].operators) + 1; "
        "t = m.subgraphs[0].tensors[m.subgraphs[0].operators[ls[2].op].inputs[1]]; q = ts[d.inputs[0]]; "
        "assert bytes(new.buffers[q.buffer].data) == bytes(m.buffers[t.buffer].data) and list(q.quantization.scale) == list(t.quantization.scale); "
        "fc = ops[ls[2].op + 1]; assert fc.inputs[1] == d.outputs[0] and ts[fc.inputs[1]].type == sc.TensorType.FLOAT32; "
        "assert new.operatorCodes[d.opcodeIndex].version == (5 if len(q.quantization.scale) > 1 else 2); "
        "t0 = m.subgraphs[0].tensors[m.subgraphs[0].operators[ls[0].op].inputs[1]]; "
        "f = np.frombuffer(bytes(m.buffers[t0.buffer].data), np.float32).reshape(t0.shape); "
        "t1 = ts[ops[ls[0].op + 1].inputs[1]]; s = np.asarray(t1.quantization.scale, np.float32).reshape(-1, 1, 1, 1); "
        "q1 = np.frombuffer(bytes(new.buffers[t1.buffer].data), np.int8).reshape(t0.shape); "
        "assert t1.quantization.quantizedDimension == 0 and np.all(np.abs(q1 * s - f) <= s / 2 + 1e-7); "
        "assert len(out) < len(data) + 1024; print('ok')"  # the float FC layer costs no weight bytes
    )
    proc = subprocess.run(
        [py, "-c", code, str(d / "lenet_pool.int8.dynamic.tflite")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.stdout.strip().endswith("ok"), proc.stderr[-1500:]
    out = tmp_path / "litert.json"
    args = ["-m", "lenet_edge.quantize.litert_search", "--model", "lenet_pool", "--onnx-dir", str(d)]
    proc = subprocess.run(
        [py, *args, "--json", str(out), "--runs", "60", "--rounds", "3", "--amx", "on"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    (m,) = json.loads(out.read_text())["models"]
    assert [x["layer"] for x in m["layers"]][:2] == ["CONV_2D:0", "CONV_2D:1"]
    assert m["candidates"][0]["origin"] == "converter" and m["candidates"][0]["passed"]
    for r in m["candidates"]:
        assert r["passed"] == (r.get("p50_us") is not None), r  # checked first, only survivors timed
        assert r["passed"] or r["why"], r
    # a layer computing in float from its int8 weights keeps the file at INT8 size
    conv = m["candidates"][0]["bytes"]
    big = [r for r in m["candidates"] if "FULLY_CONNECTED0" in r["label"]]
    assert big and all(r["passed"] and r["bytes"] < conv + 2048 for r in big), big
    choice = next(r for r in m["candidates"] if r["label"] == m["choice"]["label"])
    assert choice["passed"] and choice["agreement_with_fp32"] >= tolerances_min_agreement()
    pub = d / "lenet_pool.int8.search.tflite"
    rec = json.loads((d / "lenet_pool.int8.search.tflite.quantize.json").read_text())
    assert stale_reason(pub) == "" and rec["search"]["choice"] == m["choice"]["label"]
    assert published_main(["--onnx-dir", str(d), "--suffix", ".onnx"]) == 0  # the bundle's list: none
    (d / "lenet_pool.int8.dynamic.tflite").write_bytes(b"TFL3" + bytes(60))
    assert "changed since the search" in stale_reason(pub)
    proc = subprocess.run(
        [py, *args, "--no-timing", "--json", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert_one_line_error(proc, "lenet_pool.int8.dynamic.tflite", "not a readable .tflite")


@needs_tflite_envs
def test_litert_search_chooses_amx_by_a_cross_process_pair_and_the_record_carries_it(
    tflite, exported, tmp_path
):
    """litert_search.choose_amx (what --amx auto does on a CPU with AMX; called directly so it runs
    on any x86): the same search in a child with AMX refused, the two choices paired across two
    processes, the rule applied as stated; if refusing wins, the published file is that search's
    choice byte for byte and its record says amx off, which the benchmark then honours."""
    import shutil

    from lenet_edge.runtime.amx import applies

    if not applies():
        pytest.skip("AMX refusal is Linux x86_64 only")
    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("lenet_pool.fp32.tflite", "lenet_pool.int8.dynamic.tflite"):
        shutil.copy(exported / f, d / f)
    code = (
        "import argparse, json, sys; from pathlib import Path; "
        "from lenet_edge.quantize.litert_search import choose_amx, search_model; from lenet_edge.quantize.search import AMX_OFF_BELOW; "
        "from lenet_edge.quantize.published import publish_tflite; "
        "from lenet_edge.runtime.amx import recipe_amx; from lenet_edge.runtime.files import owned_temp_dir, sha256_file; "
        "from lenet_edge.workflow import data_source; d = Path(sys.argv[1]); "
        "a = argparse.Namespace(onnx_dir=d, runs=60, rounds=3, data_dir=None, workflow=None)\n"
        "with owned_temp_dir('t') as work:\n"
        "    m = search_model('lenet_pool', d, work, data_source('lenet_pool'), True, 60, 3, say=lambda *x: None)\n"
        "    m = choose_amx(m, a, work)\n"
        "    v = m['amx_choice']['off_over_on']; assert v['processes'] == 2 and v['rounds'] == 20, v\n"
        "    assert m['amx'] == ('off' if v['ci95'][1] < AMX_OFF_BELOW else 'on'), v\n"
        "    off = m['amx_choice']['search']; pick = next(r for r in off['candidates'] if r['file'] == off['choice']['file'])\n"
        "    out = publish_tflite(d, 'lenet_pool', work, m, 'cpu')\n"
        "    if m['amx'] == 'off': assert sha256_file(out) == pick['sha256'] and m['choice']['label'] == pick['label']\n"
        "    assert recipe_amx(out) == m['amx']; print('ok', m['amx'])"
    )
    proc = subprocess.run(
        [str(DEVICE_VENV / "bin" / "python"), "-c", code, str(d)], cwd=ROOT, capture_output=True, text=True
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    assert last.split()[:1] == ["ok"], (proc.stdout[-800:], proc.stderr[-1500:])


def tolerances_min_agreement() -> float:
    from lenet_edge.quantize.checks import load_tolerances

    return load_tolerances()["int8_agreement_min"]


def test_failed_conversion_is_one_line_and_writes_nothing(exported, tmp_path):
    from tests.conftest import assert_one_line_error

    d = tmp_path / "onnx"
    d.mkdir()
    proc = run_cli("-m", "lenet_edge.quantize.tflite", "--onnx-dir", str(d))
    assert_one_line_error(proc, "lenet_pool.fp32.onnx", "not found")
    assert list(d.iterdir()) == []


def test_bundle_checks_int8_with_reference_and_fused_kernels(quantized, exported, tmp_path, mnist_dir):
    """INT8 in a bundle: bit-exact with ORT's reference kernels, same predictions with the fused ones;
    an expected output off by one quantization step of the reference kernels fails the check."""
    import io
    import tarfile

    import numpy as np

    from lenet_edge.runtime.bundle import BundleError, build_bundle, self_check
    from lenet_edge.runtime.files import sha256_bytes

    int8 = exported / "lenet_pool.int8.qdq.onnx"
    build_bundle([int8], tmp_path / "b.tar.gz", mnist_dir)
    with tarfile.open(tmp_path / "b.tar.gz") as t:
        t.extractall(tmp_path, filter="data")
    b = tmp_path / "lenet-edge-bundle"
    res = self_check(b)
    (row,) = res["models"]
    assert row["passed"] and row["bit_exact"] and row["bit_exact_reference_kernels"] is True
    # nudge one reference-kernel logit by 1e-3 and re-sign the manifest: the check must fail
    with np.load(b / "data/expected.npz") as f:
        exp = {k: f[k].copy() for k in f.files}
    exp["lenet_pool.int8.qdq.reference_kernels"][0, 0] += 1e-3
    buf = io.BytesIO()
    np.savez(buf, **exp)
    (b / "data/expected.npz").write_bytes(buf.getvalue())
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["data/expected.npz"] = sha256_bytes(buf.getvalue())
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="disagrees with the host"):
        self_check(b)


@pytest.mark.parametrize("name", MODELS)
def test_int8_from_the_optimized_graph_meets_the_tolerances(exported, tolerances, name, tmp_path):
    """make optimize, then quantize --variant s2d: the INT8 model names the optimized FP32 file as
    its source, passes the same tolerances, and a tampered optimized file is refused."""
    import shutil

    from lenet_edge.quantize.checks import int8_failures

    d = tmp_path / "onnx"
    d.mkdir()
    for f in (f"{name}.fp32.onnx", f"{name}.fp32.export.json"):
        shutil.copy(exported / f, d / f)
    assert run_cli("-m", "lenet_edge.optimize", "--model", name, "--onnx-dir", str(d)).returncode == 0
    proc = run_cli(
        "-m",
        "lenet_edge.quantize",
        "--model",
        name,
        "--onnx-dir",
        str(d),
        "--variant",
        "s2d",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    rec = json.loads((d / f"{name}.int8.s2d.qdq.quantize.json").read_text())
    assert rec["fp32"]["onnx"] == f"{name}.fp32.s2d.onnx" and int8_failures(rec, tolerances) == []
    # ONNX Runtime target: same logits on every test image, uint8 input, record readable as INT8's
    proc = run_cli("-m", "optimize.ort_int8", "--model", name, "--onnx-dir", str(d))
    assert proc.returncode == 0, proc.stderr[-1500:]
    ort_rec = json.loads((d / f"{name}.int8.s2d.ort.quantize.json").read_text())
    t = ort_rec["ort_target"]
    assert t["check"] == {
        "images": 10000,
        "max_abs_logit_diff_vs_source": 0.0,
        "limit": 1e-5,  # integer rewrites only: exact
        "top1_identical": 10000,
    }
    assert t["input_dtype"] == "uint8" and int8_failures(ort_rec, tolerances) == []
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(d / f"{name}.int8.s2d.ort.onnx")).metadata_props}
    assert meta["input_contract"].startswith("input 'pixels': uint8 [N,1,28,28], raw pixel values 0..255")
    # provenance as one link: the QDQ source by sha256 (its metadata and record carry the rest)
    assert meta["source"] == f"{name}.int8.s2d.qdq.onnx sha256:{ort_rec['ort_target']['source_sha256']}"
    assert "checkpoint_sha256" not in meta and meta["model"] == name
    assert t["nodes_per_call"].get("Transpose", 0) <= 1  # the input reorder only
    assert not {"Pad", "Expand"} & set(t["nodes_per_call"])  # stored compactly, folded at load
    qdq = d / f"{name}.int8.s2d.qdq.onnx"
    qdq.write_bytes(qdq.read_bytes() + b"\x00")  # no longer the file its record describes
    proc = run_cli("-m", "optimize.ort_int8", "--model", name, "--onnx-dir", str(d), "--force")
    assert_one_line_error(proc, f"{name}.int8.s2d.qdq.quantize.json")
    s2d = d / f"{name}.fp32.s2d.onnx"
    s2d.write_bytes(s2d.read_bytes() + b"\x00")
    proc = run_cli(
        "-m", "lenet_edge.quantize", "--model", name, "--onnx-dir", str(d), "--variant", "s2d", "--force"
    )
    assert_one_line_error(proc, f"{name}.fp32.s2d.onnx")


def test_search_builds_checks_and_times_every_candidate(exported, tolerances, tmp_path):
    """quantize.search on lenet_pool with few timed runs: every candidate has a check verdict, the
    timed ones a p50, failing ones none; the choice is a checked candidate; --no-timing picks the
    documented default without timing."""
    import shutil

    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("lenet_pool.fp32.onnx", "lenet_pool.fp32.export.json"):
        shutil.copy(exported / f, d / f)
    for variant in ("s2d", "s2d4"):  # what `make optimize` writes
        opt = (
            "-m",
            "lenet_edge.optimize",
            "--model",
            "lenet_pool",
            "--onnx-dir",
            str(d),
            "--variant",
            variant,
        )
        assert run_cli(*opt).returncode == 0
    out = tmp_path / "search.json"
    args = [
        "-m",
        "lenet_edge.quantize.search",
        "--model",
        "lenet_pool",
        "--onnx-dir",
        str(d),
        "--json",
        str(out),
    ]
    keep = tmp_path / "keep"  # what a choose_amx child leaves for its parent: the choice and its record
    keep.mkdir()
    proc = run_cli(*args, "--runs", "60", "--rounds", "3", "--amx", "on", "--choice-dir", str(keep))
    assert proc.returncode == 0, proc.stderr[-1500:]
    (m,) = json.loads(out.read_text())["models"]
    assert sorted(f.name for f in keep.iterdir()) == sorted(
        [m["choice"]["file"], m["choice"]["file"].removesuffix(".onnx") + ".quantize.json"]
    )
    rows = m["candidates"] + m["mixed_precision"]["trials"] + m["one_thread_passes"]
    assert len(m["candidates"]) >= 15 and m["mixed_precision"]["layers"][:2] == ["Conv:0", "Conv:1"]
    assert {r["source"] for r in m["candidates"]} == {"export", "s2d", "s2d4"} and not m["sources_left_out"]
    for r in rows:
        assert r["passed"] == (r.get("p50_us") is not None), r  # checked first, only survivors timed
        assert r["passed"] or r["why"]
    mp = m["mixed_precision"]
    assert mp["weight_only"] and mp["trials"]  # the fastest candidate is an ORT target
    int8_size = {  # per source graph, its smallest all-INT8 ORT target
        src: min(c["bytes_per_param"] for c in m["candidates"] if c["source"] == src and c["passed"])
        for src in {c["source"] for c in m["candidates"]}
    }
    for r in mp["trials"]:  # FP32 layers keep int8 weights there: INT8 size, so the size check holds
        assert r["label"].endswith(("-w8.ort", "-w8.ort+uint8-transpose")), r
        assert not r["passed"] or r["bytes_per_param"] < int8_size[r["source"]] + 0.05, r
    # every ORT target is also a candidate in its one-thread form (it can reorder the sources), and
    # the trials are timed in the form of the candidate they start from, or, where the one-thread
    # form does not apply to a trial, in its plain ORT form
    forms = {r["label"]: r for r in m["candidates"]}
    for r in m["candidates"]:
        if r["passed"] and r["label"].endswith(".ort"):
            t = forms[r["label"] + "+uint8-transpose"]
            assert t["passed"] or t["why"], t
    timed = [r for r in mp["trials"] if r["passed"]]
    one_thread = any(r["label"].endswith("+uint8-transpose") for r in timed)
    trials = {r["label"]: r for r in mp["trials"]}
    for r in timed:
        if not r["label"].endswith("+uint8-transpose"):
            assert r["label"].endswith(".ort"), r
            assert not one_thread or trials[r["label"] + "+uint8-transpose"].get("not_applicable"), r
    assert any(r["passed"] for r in mp["trials"])
    from lenet_edge.quantize.published import stale_reason

    pub = d / "lenet_pool.int8.search.onnx"
    assert stale_reason(pub) == ""
    assert (
        json.loads((d / "lenet_pool.int8.search.quantize.json").read_text())["search"]["choice"]
        == (m["choice"]["label"])
    )
    labels = {r["label"]: r for r in rows if r["passed"]}
    # a choice that is a plain ORT target is tried once more in its one-thread form: built, checked,
    # timed as a pair with it; or, if it computes in FP32 from its float input, not applicable
    one_threads = m["one_thread_passes"]
    assert len(one_threads) <= 1
    for one_thread in one_threads:
        assert one_thread["label"].endswith(".ort+uint8-transpose"), one_thread
        assert one_thread["passed"] or one_thread["why"].startswith("uint8-transpose: no Cast(float)")
        if one_thread["passed"]:
            vs = one_thread["vs_current_best"]
            assert vs["rounds"] == 20 and vs["ci95"][0] <= vs["ratio"] <= vs["ci95"][1], vs
    assert m["choice"]["label"] in labels
    import onnx

    meta = {q.key: q.value for q in onnx.load(pub).metadata_props}
    if m["choice"]["label"].endswith("+uint8-transpose"):
        assert meta["tuned_for_threads"] == "1 (uint8-transpose)"  # the runner warns more threads
    else:
        assert "tuned_for_threads" not in meta
        paired_first = [r for r in m["candidates"] if r.get("vs_fastest_first_run")]
        assert (
            m["choice"]["p50_us"] == min(r["p50_us"] for r in m["candidates"] if r["passed"])
            or m["mixed_precision"]["kept_fp32"]
            or any(r["label"] == m["choice"]["label"] for r in paired_first)
        )
    assert "Choice:" in out.with_suffix(".md").read_text()
    proc = run_cli(*args, "--no-timing")
    assert proc.returncode == 0 and "documented default" in proc.stdout
    assert (
        json.loads(out.read_text())["models"][0]["choice"]["label"] == "s2d.static-qdq-u8s8-pc-rr-minmax.ort"
    )
    _choose_amx_publishes_the_refused_choice_with_its_setting(m, d, keep, tmp_path, out)


def _choose_amx_publishes_the_refused_choice_with_its_setting(m, d, keep, tmp_path, out):
    """quantize.search.choose_amx's plumbing, with the child search (its `--choice-dir` output is
    `keep`, checked above) and the verdict stubbed: the pair is timed across two processes; when
    refusing wins, the refused choice and its record are what `publish` writes, with `amx: off`,
    which the benchmark then reads back."""
    import argparse
    import shutil
    from pathlib import Path

    from lenet_edge.quantize import search
    from lenet_edge.quantize.published import publish, stale_reason
    from lenet_edge.runtime.amx import recipe_amx

    work = tmp_path / "work"
    work.mkdir()
    for f in keep.iterdir():
        shutil.copy(f, work / f.name)  # this process's choice: the same file

    def child(module, name, args, w, extra):
        assert module == "lenet_edge.quantize.search" and extra[0] == "--choice-dir"
        for f in keep.iterdir():
            shutil.copy(f, Path(extra[1]) / f.name)
        return json.loads(json.dumps(m))

    verdicts = []

    def pair(name, off, on, call, runs):
        v, _ = real_pair(name, off, on, call, runs)
        verdicts.append(v)
        return v, True  # as if refusing had won

    real_pair = search.pair_amx
    a = argparse.Namespace(onnx_dir=d, runs=60, rounds=3, data_dir=None, workflow=None)
    old = search.search_with_amx_refused, search.pair_amx
    search.search_with_amx_refused, search.pair_amx = child, pair
    try:
        got = search.choose_amx(m, a, work)
    finally:
        search.search_with_amx_refused, search.pair_amx = old
    (v,) = verdicts
    assert v["processes"] == 2 and v["rounds"] == 20 and v["ci95"][0] <= v["ratio"] <= v["ci95"][1], v
    assert got["amx"] == "off" and got["choice"]["file"] == "amx-off." + m["choice"]["file"]
    assert got["amx_choice"]["on"]["choice"] == m["choice"] and got["amx_choice"]["off_over_on"] is v
    src = d / (m["choice"]["source"] == "s2d" and "lenet_pool.fp32.s2d.onnx" or "lenet_pool.fp32.onnx")
    pub = publish(d, "lenet_pool", work, got, src, "cpu")
    rec = json.loads((d / "lenet_pool.int8.search.quantize.json").read_text())
    assert rec["search"]["amx"] == "off" and recipe_amx(pub) == "off" and stale_reason(pub) == ""
    assert "with AMX off**" in search.to_markdown(json.loads(out.read_text()) | {"models": [got]})


def test_stock_quantize_static_is_recorded_not_checked(exported, tmp_path):
    """`quantize --stock`: ORT defaults on the plain export, for the benchmark's stock INT8 row."""
    import shutil

    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("lenet_pool.fp32.onnx", "lenet_pool.fp32.export.json"):
        shutil.copy(exported / f, d / f)
    proc = run_cli("-m", "lenet_edge.quantize", "--model", "lenet_pool", "--onnx-dir", str(d), "--stock")
    assert proc.returncode == 0, proc.stderr[-1500:]
    rec = json.loads((d / "lenet_pool.stock.int8.qdq.quantize.json").read_text())
    assert rec["stock"] is True and "every other option at its default" in rec["call"]
    assert 0.95 < rec["test_top1"] <= 1 and rec["onnx_sha256"]
    from lenet_edge.runtime.bench import is_stock

    assert is_stock(d / "lenet_pool.stock.int8.qdq.onnx")


def test_a_dynamic_range_recipe_quantizes(exported, tmp_path):
    """Dynamic-range INT8 quantizes each batch with its own range: the check that renaming tensors
    changed no output must batch both sides alike (it compared chunks of 256 with chunks of 1,000,
    and every dynamic recipe of the sweep failed)."""
    proc = run_cli(
        "-m", "lenet_edge.quantize.sweep", "--model", "lenet_pool", "--onnx-dir", str(exported),
        "--recipes", "dynamic-u8s8-pc-rr", "--out-dir", str(tmp_path / "jobs"), "--json", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert row["status"] == "ok", row["status"]


@pytest.mark.parametrize("name", MODELS)
def test_smallest_int8_file_meets_the_size_goal(exported, tolerances, name, tmp_path):
    """make quantize-ort's small artifact from the committed checkpoints: the folded graph, INT8
    with float16-exact weight scales, ORT target with --goal size: <= 1.05 bytes per parameter
    (issue 12's goal), the same logits as its QDQ source on every test image, the INT8 tolerances."""
    import shutil

    from lenet_edge.quantize.checks import int8_failures

    d = tmp_path / "onnx"
    d.mkdir()
    for f in (f"{name}.fp32.onnx", f"{name}.fp32.export.json"):
        shutil.copy(exported / f, d / f)
    for args in (
        ("-m", "lenet_edge.optimize", "--variant", "fold"),
        ("-m", "lenet_edge.quantize", "--variant", "fold", "--no-progress"),
        ("-m", "optimize.ort_int8", "--variant", "fold", "--goal", "size"),
    ):
        proc = run_cli(*args, "--model", name, "--onnx-dir", str(d))
        assert proc.returncode == 0, proc.stderr[-1500:]
    qdq = json.loads((d / f"{name}.int8.fold.qdq.quantize.json").read_text())
    assert qdq["weight_scales"]["tensors"] == {"lenet_pool": 5, "lenet_stride": 7}[name]
    assert qdq["weight_scales"]["max_relative_change"] <= 2.0**-11
    rec = json.loads((d / f"{name}.int8.fold.ort.quantize.json").read_text())
    t = rec["ort_target"]
    assert t["goal"] == "size" and t["check"]["max_abs_logit_diff_vs_source"] == 0.0
    assert t["check"]["top1_identical"] == 10000 and int8_failures(rec, tolerances) == []
    assert rec["onnx_bytes"] == (d / f"{name}.int8.fold.ort.onnx").stat().st_size
    assert rec["bytes_per_param"] <= 1.05, rec["bytes_per_param"]
