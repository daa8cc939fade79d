"""Regression tests for the defects that bad input and faults found (issue: nothing lost, nothing
let in). Each test fails on the code before its fix; docs/reliability.md lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lenet_edge.runtime.errors import ContractError, LenetEdgeError
from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit
onnx = pytest.importorskip("onnx")


def _tree_digest(folder):
    from lenet_edge.runtime.files import sha256_file

    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _bench_report(**env_over):
    from lenet_edge.runtime.bench import SCHEMA

    env = {"machine": "aarch64", "cpu": {"model": "Cortex-A76", "isa_flags": ["asimd", "asimddp"]}}
    env.update(env_over)
    return {
        "schema": SCHEMA,
        "created_unix": 1_790_000_000,
        "environment": env,
        "results": [
            {
                "model": "lenet_pool",
                "format": "fp32",
                "runtime": "onnxruntime",
                "call": "run",
                "batch": 1,
                "threads": 1,
                "latency_ms_p50": 0.1,
                "ratio_p50_vs_fp32": 1.0,
            }
        ],
    }


# ---- ingest: path traversal, types and ranges ----------------------------------------------------


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("created_unix", "1/../../tolerances", "created_unix must be an integer"),
        ("created_unix", 1.5e9, "created_unix must be an integer"),
        ("created_unix", True, "created_unix must be an integer"),
        ("created_unix", 10**30, "created_unix must be an integer"),
        ("results", [], "results must be a list"),
        ("results", "x", "results must be a list"),
        ("environment", [], "environment must be an object"),
    ],
)
def test_ingest_refuses_malformed_fields_and_writes_nothing(tmp_path, field, value, needle):
    devices = tmp_path / "results" / "devices"
    devices.mkdir(parents=True)
    (tmp_path / "results" / "tolerances.json").write_text('{"keep": "me"}')
    before = _tree_digest(tmp_path / "results")
    rep = _bench_report()
    rep[field] = value
    src = tmp_path / "r.json"
    src.write_text(json.dumps(rep))
    proc = run_cli("-m", "runtime.ingest", str(src), "--out-dir", str(devices))
    assert_one_line_error(proc, str(src), needle)
    assert _tree_digest(tmp_path / "results") == before


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("batch", "1", "batch must be an integer"),
        ("threads", 0, "threads must be an integer"),
        ("latency_ms_p50", float("nan"), "latency_ms_p50 must be a finite positive number"),
        ("latency_ms_p50", -1.0, "latency_ms_p50 must be a finite positive number"),
        ("ratio_p50_vs_fp32", float("inf"), "ratio_p50_vs_fp32 must be a finite positive number"),
        ("model", "", "model must be a non-empty string"),
        ("model", 7, "model must be a non-empty string"),
        ("file", "", "file must be a non-empty string"),
        ("latency_ms_p90", float("nan"), "latency_ms_p90 is not a finite number"),  # was filed
        (
            "vs_round_robin_best",
            {"ci95": [1.0, float("inf")]},
            r"vs_round_robin_best.ci95\[1\] is not a finite",
        ),
    ],
)
def test_ingest_checks_every_result_field(tmp_path, key, value, needle):
    from lenet_edge.runtime.ingest import ingest

    rep = _bench_report()
    rep["results"][0][key] = value
    src = tmp_path / "r.json"
    src.write_text(json.dumps(rep))
    with pytest.raises(LenetEdgeError, match=needle):
        ingest(src, tmp_path / "devices")
    assert not (tmp_path / "devices").exists()


def test_ingest_checks_the_core_a_board_names(tmp_path):
    from lenet_edge.runtime.ingest import validate

    rep = _bench_report()
    rep["environment"]["cpu"]["core"] = "cortex-a72"
    validate(rep, tmp_path / "r.json")  # a known core: beside its estimate in the report
    rep["environment"]["cpu"]["core"] = "cortex-z99"
    with pytest.raises(LenetEdgeError, match="not a known Arm core"):
        validate(rep, tmp_path / "r.json")


def test_ingest_builds_names_only_from_sanitised_parts(tmp_path):
    from lenet_edge.runtime.ingest import ingest

    rep = _bench_report(machine="../../../etc", cpu={"model": "x/../../y|z\nw", "isa_flags": ["a|b"]})
    rep["results"][0]["model"] = "pool|</td>"
    src = tmp_path / "r.json"
    src.write_text(json.dumps(rep))
    dest = ingest(src, tmp_path / "devices")
    assert dest.parent == tmp_path / "devices" and dest.name == "etc-x-y-z-w-1790000000.json"
    table = (tmp_path / "devices" / "README.md").read_text().splitlines()
    row = [ln for ln in table if "etc" in ln]
    assert len(row) == 1 and row[0].count("|") == 10  # no injected cell or line
    rep["created_unix"] += 1
    rep["results"][0]["model"] = "pool\x00\u2028\x85x"  # NUL and Unicode line separators
    src.write_text(json.dumps(rep))
    ingest(src, tmp_path / "devices")
    text = (tmp_path / "devices" / "README.md").read_text()
    assert not any(c in text for c in "\x00\u2028\x85") and "pool   x" in text


def test_ingest_refuses_a_hand_placed_bad_file_in_the_folder(tmp_path):
    from lenet_edge.runtime.ingest import ingest

    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "old.json").write_text(json.dumps({"schema": "lenet-edge/bench/v1"}))
    src = tmp_path / "r.json"
    src.write_text(json.dumps(_bench_report()))
    with pytest.raises(LenetEdgeError, match="old.json"):
        ingest(src, devices)
    assert sorted(p.name for p in devices.iterdir()) == ["old.json"]  # nothing written


# ---- NaN-safe comparisons --------------------------------------------------------------------------


def test_max_abs_diff_and_limits_fail_on_non_finite():
    from lenet_edge.runtime.numeric import exceeds, falls_below, max_abs_diff

    a = np.zeros((2, 10), np.float32)
    assert max_abs_diff(a, a) == 0.0
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[1, 3] = bad
        assert max_abs_diff(a, b) == float("inf") and max_abs_diff(b, a) == float("inf")
    assert max_abs_diff(a, a[:1]) == float("inf")  # shapes differ
    assert exceeds(float("nan"), 1.0) and exceeds(float("inf"), 1.0) and exceeds(None, 1.0)
    assert falls_below(float("nan"), 0.0) and not falls_below(0.5, 0.1) and not exceeds(0.5, 1.0)


def test_int8_checks_fail_a_record_full_of_nan():
    from lenet_edge.quantize.checks import int8_failures, load_tolerances

    nan = float("nan")
    rec = {
        "model": "m",
        "accuracy_drop_pp": nan,
        "agreement_with_fp32": nan,
        "mcnemar": {"p_new_worse": nan},
        "size_ratio_vs_fp32": nan,
    }
    assert len(int8_failures(rec, load_tolerances())) == 4


# ---- the runner checks the model's outputs against the contract -------------------------------------


def _model(tmp_path, name, nodes, out_shape, out_name="scores", in_shape=("N", 1, 28, 28), inits=()):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_shape))],
        initializer=list(inits),
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


def _slice_inits(n):
    from onnx import TensorProto, helper

    return [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [n]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]


def test_runner_refuses_a_model_with_the_wrong_output_shape(tmp_path):
    from onnx import helper

    from lenet_edge.runtime.runner import OnnxRunner

    p = _model(
        tmp_path,
        "three.onnx",
        [
            helper.make_node("Flatten", ["pixels"], ["f"], axis=1),
            helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["scores"]),
        ],
        ["N", 3],
        inits=_slice_inits(3),
    )
    # a 3-class model is a model of its own (the contract is [N,K] scores); fed MNIST, whose labels
    # reach 9, it is the wrong model for the data: one line
    assert OnnxRunner(p).classes == 3
    assert_one_line_error(run_cli("-m", "runtime.evaluate", str(p)), "three.onnx", "3 scores", "label 9")


def test_runner_refuses_wrong_output_name_and_input_shape(tmp_path):
    from onnx import helper

    from lenet_edge.runtime.runner import OnnxRunner

    p = _model(
        tmp_path, "name.onnx", [helper.make_node("Identity", ["pixels"], ["logits"])], ["N", 10], "logits"
    )
    with pytest.raises(ContractError, match="output must be one tensor named 'scores'"):
        OnnxRunner(p)
    p = _model(
        tmp_path,
        "rgb.onnx",
        [
            helper.make_node("Flatten", ["pixels"], ["f"], axis=1),
            helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["scores"]),
        ],
        ["N", 10],
        in_shape=("N", 3, 28, 28),
        inits=_slice_inits(10),
    )
    # an RGB model is a model of its own; MNIST pixels do not fit it: one clear ContractError
    r = OnnxRunner(p)
    assert r.image_shape == (3, 28, 28)
    with pytest.raises(
        ContractError, match=r"input shape must be \[N,3,28,28\] with N >= 1, got \[2, 1, 28, 28\]"
    ):
        r.predict(np.zeros((2, 1, 28, 28), np.float32))
    assert r.predict(np.zeros((2, 3, 28, 28), np.float32)).shape == (2, 10)
    p = _model(
        tmp_path,
        "rank3.onnx",
        [helper.make_node("Identity", ["pixels"], ["scores"])],
        ["N", 10],
        in_shape=("N", 10),
    )
    with pytest.raises(ContractError, match=r"must be float32 or uint8 \[N,C,H,W\]"):
        OnnxRunner(p)


def test_runner_refuses_nan_outputs(tmp_path):
    from onnx import helper

    p = _model(
        tmp_path,
        "nan.onnx",
        [
            helper.make_node("Flatten", ["pixels"], ["f"], axis=1),
            helper.make_node("Neg", ["f"], ["n"]),
            helper.make_node("Sqrt", ["n"], ["s"]),  # sqrt of a negative pixel: NaN
            helper.make_node("Slice", ["s", "starts", "ends", "axes"], ["scores"]),
        ],
        ["N", 10],
        inits=_slice_inits(10),
    )
    from lenet_edge.runtime.runner import OnnxRunner

    with pytest.raises(ContractError, match="nan.onnx: output contains NaN or Inf"):
        OnnxRunner(p).predict(np.full((2, 1, 28, 28), 200.0, np.float32))  # sqrt(-200): NaN


def test_predict_runs_in_bounded_chunks(tmp_path):
    from lenet_edge.export.variants import floor_model
    from lenet_edge.runtime.runner import CHUNK, OnnxRunner

    p = tmp_path / "floor.onnx"
    p.write_bytes(floor_model().SerializeToString())
    r = OnnxRunner(p)
    sizes = []
    inner = r.run
    r.run = lambda x: (sizes.append(len(x)), inner(x))[1]
    x = np.arange(1000 * 784, dtype=np.float32).reshape(1000, 1, 28, 28) % 256
    assert np.array_equal(r.predict(x), x.reshape(1000, -1)[:, :10])
    assert max(sizes) <= CHUNK and sum(sizes) == 1000


MEM_CHILD = """
import resource, sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper
sys.path.insert(0, {root!r})
from lenet_edge.runtime.runner import OnnxRunner
w = numpy_helper.from_array(np.full((64, 1, 5, 5), 0.01, np.float32), "w")
g = helper.make_graph(
    [helper.make_node("Conv", ["pixels", "w"], ["c"], pads=[2, 2, 2, 2]),
     helper.make_node("GlobalAveragePool", ["c"], ["g"]),
     helper.make_node("Flatten", ["g"], ["f"], axis=1),
     helper.make_node("Slice", ["f", "s", "e", "a"], ["scores"])],
    "wide", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
    initializer=[w, helper.make_tensor("s", TensorProto.INT64, [1], [0]),
                 helper.make_tensor("e", TensorProto.INT64, [1], [10]),
                 helper.make_tensor("a", TensorProto.INT64, [1], [1])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]); m.ir_version = 8
r = OnnxRunner(m.SerializeToString())
x = np.zeros(({n}, 1, 28, 28), np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r.predict(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_predict_memory_is_flat_in_n():
    # 64 channels x 28 x 28 floats = 200 kB of activations per image: 4,000 images in one batch
    # would need ~800 MB; in chunks the growth stays near the chunk's ~50 MB.
    def growth_mb(n):
        code = MEM_CHILD.format(root=str(ROOT), n=n)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-1000:]
        return int(out.stdout.strip())

    assert growth_mb(4000) < 200


# ---- quantize: malformed calibration files are one line -------------------------------------------


@pytest.mark.parametrize("content", ['{"indices": ["a"]}', '{"indices": [1.5]}', "[1, 2]", "{"])
def test_quantize_refuses_a_malformed_calibration_file(tmp_path, content):
    f = tmp_path / "cal.json"
    f.write_text(content)
    proc = run_cli("-m", "lenet_edge.quantize", "--onnx-dir", str(tmp_path), "--calibration-file", str(f))
    assert_one_line_error(proc, str(f))


# ---- IDX reader: header arithmetic cannot overflow --------------------------------------------------


def test_idx_with_overflowing_dims_is_a_data_error(tmp_path):
    from lenet_edge.runtime.errors import DataError
    from lenet_edge.runtime.mnist import read_idx

    p = tmp_path / "huge"
    dims = [0xFFFFFFFF] * 4
    p.write_bytes(bytes([0, 0, 0x08, 4]) + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (1 << 31, 1 << 31, 4)))
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_unverified_split_records_the_real_file_hashes(tmp_path):
    from lenet_edge.runtime.files import sha256_file
    from lenet_edge.runtime.mnist import load_split
    from tests.conftest import write_idx

    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    s = load_split("test", tmp_path, verify=False)
    assert s.sha256["t10k-images-idx3-ubyte"] == sha256_file(tmp_path / "t10k-images-idx3-ubyte")


def test_images_of_another_size_are_refused(tmp_path):
    from lenet_edge.runtime.errors import DataError
    from lenet_edge.runtime.mnist import load_split
    from tests.conftest import write_idx

    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 5, 5), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="28x28"):
        load_split("test", tmp_path, verify=False)


# ---- bundle manifest --------------------------------------------------------------------------------


def _manifest_dir(tmp_path, manifest):
    d = tmp_path / "b"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.mark.parametrize(
    "manifest,needle",
    [
        ({}, "not a lenet-edge bundle manifest"),
        ({"schema": "lenet-edge/bundle/v1"}, "'files' must be a non-empty object"),
        (
            {"schema": "lenet-edge/bundle/v1", "files": {"../x": "0" * 64}},
            "leaves the bundle",
        ),
        (
            {"schema": "lenet-edge/bundle/v1", "files": {"/etc/passwd": "0" * 64}},
            "leaves the bundle",
        ),
        (
            {
                "schema": "lenet-edge/bundle/v1",
                "files": {"data/inputs.npz": "0" * 64, "data/expected.npz": "0" * 64},
                "tolerances": {"fp32_max_abs_diff": 1e-4},
                "models": [],
            },
            "at least one model",
        ),
        (
            {
                "schema": "lenet-edge/bundle/v1",
                "files": {"data/inputs.npz": "0" * 64, "data/expected.npz": "0" * 64},
                "tolerances": {"fp32_max_abs_diff": float("nan")},
                "models": [{"file": "data/inputs.npz"}],
            },
            "fp32_max_abs_diff must be a finite number",
        ),
        (
            {
                "schema": "lenet-edge/bundle/v1",
                "files": {"data/inputs.npz": "0" * 64, "data/expected.npz": "0" * 64},
                "tolerances": {"fp32_max_abs_diff": 1e-4},
                "models": [{"file": "models/x.onnx"}],
            },
            "must name a file listed",
        ),
    ],
)
def test_bundle_check_refuses_malformed_manifests(tmp_path, manifest, needle):
    d = _manifest_dir(tmp_path, manifest)
    assert_one_line_error(run_cli("-m", "runtime.bundle", "check", str(d)), "manifest.json", needle)


# ---- kill -9 leftovers ------------------------------------------------------------------------------


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    from lenet_edge.runtime.files import write_json_atomic

    target = tmp_path / "a.json"
    dead = tmp_path / f".a.json.{_dead_pid()}.x1.tmp"
    alive = tmp_path / f".a.json.{os.getppid()}.x2.tmp"  # a live process: never touched
    other = tmp_path / f".b.json.{_dead_pid()}.x3.tmp"  # another artifact's: its own writer cleans it
    for p in (dead, alive, other):
        p.write_text("half")
    write_json_atomic(target, {"x": 1})
    assert (
        not dead.exists() and alive.exists() and other.exists() and json.loads(target.read_text()) == {"x": 1}
    )


def test_stale_temp_folders_of_dead_stages_are_removed(tmp_path, monkeypatch):
    import tempfile

    from lenet_edge.runtime.files import owned_temp_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"lenet-edge-quant-{_dead_pid()}-abc"
    alive = tmp_path / f"lenet-edge-quant-{os.getppid()}-def"
    foreign = tmp_path / "lenet-edge-quant-notapid"
    for d in (dead, alive, foreign):
        d.mkdir()
        (d / "f").write_text("x")
    with owned_temp_dir("quant") as mine:
        assert mine.is_dir() and str(os.getpid()) in mine.name
    assert not dead.exists() and alive.exists() and foreign.exists() and not mine.exists()


def test_fault_point_kills_only_at_the_named_hit(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from runtime.files import write_bytes_atomic\n"
        f"for i in range(3): write_bytes_atomic({str(tmp_path)!r} + f'/f{{i}}', b'x')\n"
    )
    env = {**os.environ, "LENET_EDGE_KILL_AT": "after-rename#2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert proc.returncode == -9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0", "f1"]


# ---- freshness keys cover the code that makes an artifact -------------------------------------------


def test_code_hash_covers_the_import_closure(tmp_path, monkeypatch):
    import shutil

    import lenet_edge.runtime.files as files

    for pkg in files.PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(files, "ROOT", tmp_path)
    names = {str(p.relative_to(tmp_path)) for p in files.import_closure("export.onnx_export")}
    assert {"train/models.py", "train/checkpoint.py", "runtime/contract.py", "export/onnx_export.py"} <= names
    before = files.code_sha256("export.onnx_export")
    (tmp_path / "train" / "models.py").write_text(
        (tmp_path / "train" / "models.py").read_text() + "\n# changed\n"
    )
    assert files.code_sha256("export.onnx_export") != before


@pytest.mark.parametrize(
    "module,must_cover",
    [
        ("train.loop", {"train/models.py", "train/checkpoint.py", "runtime/contract.py"}),
        ("export.onnx_export", {"train/models.py", "runtime/runner.py"}),
        ("quantize.ort_quant", {"quantize/cleanup.py", "quantize/calibration.py", "export/onnx_export.py"}),
        ("quantize.tflite", {"export/variants.py", "quantize/ort_quant.py", "runtime/runner.py"}),
    ],
)
def test_each_stage_hashes_its_imports(module, must_cover):
    import importlib

    from lenet_edge.runtime.files import code_sha256, import_closure

    names = {str(p.relative_to(ROOT)) for p in import_closure(module)}
    assert must_cover <= names
    assert importlib.import_module(module).source_sha256() == code_sha256(module)


def test_atomic_json_is_complete_or_absent_under_concurrent_writers(tmp_path):
    # two processes writing the same artifact: the file is always one whole JSON document
    code = (
        "import sys; sys.path.insert(0, {!r})\n"
        "from runtime.files import write_json_atomic\n"
        "for i in range(200): write_json_atomic({!r}, {{'w': sys.argv[1], 'i': i, 'pad': 'x' * 5000}})\n"
    ).format(str(ROOT), str(tmp_path / "a.json"))
    procs = [subprocess.Popen([sys.executable, "-c", code, w]) for w in "ab"]
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if (tmp_path / "a.json").exists():
            json.loads((tmp_path / "a.json").read_text())
    assert all(p.wait() == 0 for p in procs)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_tflite_files_that_fail_their_checks_are_never_published(tmp_path, monkeypatch, capsys):
    """Before: the .tflite files were written into place, then checked; a failing check left them."""
    import lenet_edge.quantize.tflite as tfl
    from lenet_edge.runtime.cli import run

    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    good = {f"lenet_pool.{t}.tflite": f"good {t}".encode() for t in ("fp32", "int8.full")}
    for f, data in good.items():
        (onnx_dir / f).write_bytes(data)
    (onnx_dir / "lenet_pool.tflite.json").write_text('{"good": true}')

    def fake_convert(fp32, out_dir, calibration, data_dir=None):
        outputs = {}
        for tag in ("fp32", "int8.full"):
            (out_dir / f"lenet_pool.{tag}.tflite").write_bytes(b"new, failing")
            outputs[tag] = {"file": f"lenet_pool.{tag}.tflite", "sha256": "0" * 64, "bytes": 12}
        return {"model": "lenet_pool", "outputs": outputs}

    monkeypatch.setattr(tfl, "convert_tflite", fake_convert)
    monkeypatch.setattr(
        tfl, "check_tflite", lambda *a, **k: {"checks": {}, "failures": ["lenet_pool: drop 5 pp"]}
    )
    assert run(tfl.main, ["--model", "lenet_pool", "--onnx-dir", str(onnx_dir)]) == 2
    err = capsys.readouterr().err
    assert "drop 5 pp (nothing written)" in err
    assert {f: (onnx_dir / f).read_bytes() for f in good} == good
    assert (onnx_dir / "lenet_pool.tflite.json").read_text() == '{"good": true}'
    assert sorted(p.name for p in onnx_dir.iterdir()) == sorted([*good, "lenet_pool.tflite.json"])


def test_an_interrupted_job_of_a_parallel_run_names_itself(monkeypatch, capsys):
    """`train --jobs 2`: a failure stops the sibling with SIGINT; its one line said "interrupted"
    without saying which model (the parent sets LENET_EDGE_JOB for each child)."""
    from lenet_edge.runtime.cli import run

    def stopped(argv):
        raise KeyboardInterrupt

    monkeypatch.delenv("LENET_EDGE_JOB", raising=False)
    assert run(stopped, []) == 130
    assert capsys.readouterr().err.startswith("interrupted: nothing was written")
    monkeypatch.setenv("LENET_EDGE_JOB", "lenet_stride")
    assert run(stopped, []) == 130
    assert (
        capsys.readouterr().err == "lenet_stride: interrupted: nothing was written for the unfinished step\n"
    )


def test_calibration_write_never_replaces_the_committed_subset_without_force(
    tmp_path, monkeypatch, mnist_dir
):
    """`calibration --write --size 10` replaced results/calibration.json, on which every INT8 model
    is calibrated, with 10 images (exit 0; its help said "once"); a 23-digit seed was written."""
    from lenet_edge.quantize import calibration

    cal = tmp_path / "calibration.json"
    committed = (ROOT / "results" / "calibration.json").read_bytes()
    cal.write_bytes(committed)
    monkeypatch.setattr(calibration, "CALIBRATION_FILE", cal)
    with pytest.raises(LenetEdgeError, match="calibration.json: exists, and every INT8 model was calibrated"):
        calibration.main(["--write", "--size", "10", "--data-dir", str(mnist_dir)])
    assert cal.read_bytes() == committed
    with pytest.raises(SystemExit):  # argparse: the range named
        calibration.main(["--write", "--seed", str(10**23)])
    with pytest.raises(LenetEdgeError, match="only with --write"):
        calibration.main(["--force"])
    assert calibration.main(["--write", "--force", "--size", "10", "--data-dir", str(mnist_dir)]) == 0
    assert calibration.load_calibration(cal).indices.size == 10


@pytest.mark.parametrize("command", ["quantize", "quantize-ort", "optimize"])
def test_a_variant_name_never_leaves_the_onnx_folder(command, tmp_path):
    """`quantize --variant x/../../esc/lenet_pool.fp32.s2d` read and wrote <onnx-dir>/../esc/...
    (exit 0); `quantize-ort` built its paths the same way. A variant names files: refused when
    parsed (optimize's check, now shared), one line, nothing written."""
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    bad = "x/../../esc/lenet_pool.fp32.s2d"
    proc = run_cli(
        "-m",
        "lenet_edge.cli",
        command,
        "--model",
        "lenet_pool",
        "--onnx-dir",
        str(onnx_dir),
        "--variant",
        bad,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    (line,) = proc.stderr.strip().splitlines()
    assert bad in line and "lower-case letters, digits and '-' only" in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["onnx"]


def test_ingest_never_replaces_a_readme_or_a_result_it_did_not_write(tmp_path):
    """`ingest R --out-dir .` in a checkout replaced the project's README.md with the device table;
    a second result of the same device and second replaced the first (exit 0 both)."""
    from lenet_edge.runtime.ingest import ingest

    (tmp_path / "README.md").write_text("# my project\n")
    src = tmp_path / "r.json"
    src.write_text(json.dumps(_bench_report()))
    proc = run_cli("-m", "runtime.ingest", str(src), "--out-dir", str(tmp_path))
    assert_one_line_error(proc, "README.md: exists and is not the device table")
    assert (tmp_path / "README.md").read_text() == "# my project\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "r.json"]
    devices = tmp_path / "devices"
    first = ingest(src, devices)
    assert ingest(src, devices) == first  # the same result again: nothing changes
    rep = _bench_report()
    rep["results"][0]["latency_ms_p50"] = 0.2
    src.write_text(json.dumps(rep))
    with pytest.raises(LenetEdgeError, match="holds another result of the same device and time"):
        ingest(src, devices)
    assert json.loads(first.read_text())["results"][0]["latency_ms_p50"] == 0.1


def test_a_json_result_never_overwrites_an_input_of_its_command(tmp_path):
    """`evaluate M --json M`, `bench M --json M`, `size M --json M` overwrote the model they read;
    `bundle check B --json B/manifest.json` the manifest; `bench --json x.md` was refused only after
    the benchmark. Refused when the arguments are parsed: one line, nothing touched."""
    from lenet_edge.export.variants import floor_model

    model = tmp_path / "m.onnx"
    model.write_bytes(floor_model().SerializeToString())
    before = model.read_bytes()
    for args in (
        ["-m", "runtime.evaluate", str(model), "--json", str(model)],
        ["-m", "runtime.bench", str(model), "--json", str(tmp_path / "." / "m.onnx")],
        ["-m", "lenet_edge.optimize.size", str(model), "--json", str(model)],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        (line,) = proc.stderr.strip().splitlines()
        assert "argument --json" in line and "m.onnx" in line, line
        assert "would overwrite" in line or "a model or record of the pipeline" in line, line
        assert model.read_bytes() == before
    proc = run_cli("-m", "runtime.bench", str(model), "--json", str(tmp_path / "x.md"))
    assert proc.returncode == 2 and "other than .md" in proc.stderr and "bench 1/" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["export", "--model", "lenet_pool", "--out-dir", "{file}/x"], "argument --out-dir"),
        (["quantize", "--model", "lenet_pool", "--out-dir", "{file}"], "is a file, expected a folder"),
        (["study", "--seeds", "1", "--json", "{file}/x.json"], "is a file, not a folder"),
        (["sweep", "--json", "{tmp}/sw.json"], "sw.md: is a directory"),
        (["sweep", "--json", "{tmp}/x.md"], "other than .md"),
        (["invariance", "{file}", "--json", "{tmp}"], "is a directory"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(args, needle, tmp_path):
    """`study --json /proc/x.json` failed after the study (48 s for a tiny one, hours for the real
    one), `export --out-dir /proc/x` after the export; `sweep` wrote its JSON and then failed on a
    folder named like its table, leaving half a pair. Now every --json / --out-dir is tried when the
    arguments are parsed: one line, exit 2, nothing written, no work done."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "sw.md").mkdir()
    argv = [a.format(file=blocker, tmp=tmp_path) for a in args]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    t0 = time.time()
    proc = run_cli("-m", "lenet_edge.cli", *argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    (line,) = proc.stderr.strip().splitlines()
    assert needle in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and time.time() - t0 < 60


def test_job_commands_refuse_missing_data_and_twice_named_models_before_any_job(tmp_path):
    """`study --data-dir EMPTY` printed its plan and a progress bar, then the error (three lines)
    and left an empty build/study/; `invariance a/m.onnx b/m.onnx` ran both models and only then
    said that two have the same name. Now: one line, exit 2, before any job; no cache folder."""
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    for a, b in (("a", "b"), ("a", "a")):
        (tmp_path / a).mkdir(exist_ok=True)
        (tmp_path / b).mkdir(exist_ok=True)
        (tmp_path / a / "m.onnx").write_bytes(b"not run")
        (tmp_path / b / "m.onnx").write_bytes(b"not run")
    (tmp_path / "a" / "lenet_pool.fp32.onnx").write_bytes(b"no record beside it")
    for args, needle in (
        (["study", "--seeds", "2", "--epochs", "1", "--data-dir", str(empty)], "input file of job"),
        (["sweep", "--model", "lenet_pool", "--onnx-dir", str(tmp_path / "a")], "input file of job"),
        (["invariance", str(tmp_path / "a/m.onnx"), str(tmp_path / "b/m.onnx")], "given already"),
        (["invariance", str(tmp_path / "a/m.onnx"), str(tmp_path / "a/m.onnx")], "given already"),
    ):
        json_out = tmp_path / "out.json"
        proc = run_cli("-m", "lenet_edge.cli", *args, "--out-dir", str(cache), "--json", str(json_out))
        assert_one_line_error(proc, needle)
        assert proc.stdout == "" and not cache.exists() and not json_out.exists(), args


def test_a_fifo_or_a_folder_given_as_an_input_file_is_named_not_waited_on(tmp_path):
    """`ingest FIFO`, `select --bench FIFO`, `train --workflow FIFO` waited forever for a writer;
    `evaluate DIR` said "model file not found"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args, needle in (
        (["ingest", str(fifo)], "not a regular file"),
        (["select", "--bench", str(fifo)], "not a regular file"),
        (["train", "--workflow", str(fifo)], "not a regular file"),
        (["bench", str(fifo)], "not a regular file"),
        (["evaluate", str(tmp_path)], "is a directory, not a model file"),
    ):
        proc = run_cli("-m", "lenet_edge.cli", *args, timeout=60)
        assert_one_line_error(proc, f"{args[-1]}: {needle}")


@pytest.mark.parametrize(
    "args,env,line",
    [
        # named another flag, an internal field or a dataclass's repr
        (["select", "--pair-rounds", "99999999999999"], {}, "argument --pair-rounds: must be 0..1,000,000"),
        (["export", "--atol", "-1"], {}, "error: --atol -1.0: must be a finite number > 0"),
        (
            ["quantize", "--model", "lenet_pool", "--percentile", "200"],
            {},
            "error: --percentile must be 90..100",
        ),
        (["bench", "x.onnx"], {"LENET_EDGE_ISA": "bogus"}, "(from the environment: LENET_EDGE_ISA=bogus)"),
        (["size", "x.onnx", "--params", str(10**26)], {}, "--params 1e+26: must be at most 10^12"),
        (["bench", "x.onnx", "--calls", "run,,iobinding"], {}, "--calls must be a comma-separated subset"),
        (["data"], {"MNIST_DIR": "/nonexistent"}, "MNIST_DIR names its folder, which must hold the four IDX"),
        # went on without the folder (or failed once per model)
        (["report", "--onnx-dir", "/nonexistent"], {}, "argument --onnx-dir: /nonexistent: not found"),
        (
            ["reference", "check", "--train-dir", "/nonexistent"],
            {},
            "argument --train-dir: /nonexistent: not found",
        ),
        (["calibration", "--data-dir=/nonexistent"], {}, "argument --data-dir: /nonexistent: not found"),
        (["train", "--data-dir", "/nonexistent"], {}, "argument --data-dir: /nonexistent: not found"),
    ],
)
def test_a_mistake_names_the_flag_the_user_typed_once(args, env, line, tmp_path):
    """Found by a scripted audit of every command (twenty-eighth session)."""
    (tmp_path / "x.onnx").write_bytes(b"")
    proc = run_cli("-m", "lenet_edge.cli", *args, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    (got,) = proc.stderr.strip().splitlines()
    assert line in got, got


@pytest.mark.parametrize(
    "command,name",
    [
        (["search"], "lenet_pool.fp32.onnx"),  # the export it was searching from
        (["select"], "lenet_pool.int8.s2d.ort.quantize.json"),  # a record it had read
        (["evaluate", "{m}"], "lenet_pool.fp32.export.json"),  # `variants` then refused the export
        (["size", "{m}"], "lenet_pool.int8.qdq.quantize.json"),  # size's own parameter count
        (["evaluate", "{m}"], "b/manifest.json"),  # inside an unpacked bundle
    ],
)
def test_a_json_result_never_lands_on_a_model_or_a_record(command, name, tmp_path):
    """A second audit: `--json` onto a file the command reads implicitly (from --onnx-dir, a
    record beside a model, a bundle's manifest) was written at the end, exit 0."""
    from lenet_edge.export.variants import floor_model

    m = tmp_path / "m.onnx"
    m.write_bytes(floor_model().SerializeToString())
    (tmp_path / "b" / "runtime").mkdir(parents=True)
    target = tmp_path / name
    target.write_text('{"keep": "me"}')
    args = [a.format(m=m) for a in command]
    proc = run_cli("-m", "lenet_edge.cli", *args, "--json", str(target))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    (line,) = proc.stderr.strip().splitlines()
    assert "a model or record of the pipeline" in line, line
    assert target.read_text() == '{"keep": "me"}'


def test_internal_flags_typed_by_hand_are_one_line(tmp_path):
    """A second audit: `bench --latency garbage` (--serve, --paired) was a JSONDecodeError traceback,
    `study --evaluate-job DIR` a ValueError: flags the parent process writes for its children."""
    for args, needle in (
        (["-m", "runtime.bench", "--latency", "garbage"], "--latency: an internal flag"),
        (["-m", "runtime.bench", "--serve", "[1, 2]"], "--serve: an internal flag"),
        (["-m", "runtime.bench", "--paired", '[["a", "run"]]'], "--paired: an internal flag"),
        (
            ["-m", "lenet_edge.report.study", "--evaluate-job", str(tmp_path)],
            "--evaluate-job: an internal flag",
        ),
    ):
        assert_one_line_error(run_cli(*args), needle)


@pytest.mark.parametrize("args", [["--help"], ["goals"]], ids=" ".join)
def test_a_reader_that_goes_away_is_no_traceback(args):
    """`lenet-edge goals | head -3` and `lenet-edge --help | head -1` ended in a BrokenPipeError
    traceback (exit 1) when the reader had gone before the output was written."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lenet_edge.cli", *args],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", (proc.returncode, proc.stderr[-1500:])
