import json
from pathlib import Path

import numpy as np
import pytest

from lenet_edge.quantize.checks import int8_failures, load_tolerances
from lenet_edge.quantize.recipe import DEFAULT_RECIPES, QuantRecipe
from lenet_edge.quantize.stats import binom_tail_ge, mcnemar_exact
from lenet_edge.runtime.errors import ConfigError
from tests.conftest import assert_one_line_error, bench_row, ort_static_qdq, run_cli

pytestmark = pytest.mark.unit


def test_recipe_validates_and_round_trips():
    r = QuantRecipe(per_channel=False, calibration="entropy", calibration_bins=512)
    assert QuantRecipe.from_dict(r.to_dict()) == r
    assert r.name == "static-qdq-u8s8-pt-rr-entropy512"
    with pytest.raises(ConfigError, match="activation_type must be one of"):
        QuantRecipe(activation_type="int8")
    with pytest.raises(ConfigError, match="dynamic mode implies"):
        QuantRecipe(mode="dynamic", quant_format="qdq")
    with pytest.raises(ConfigError, match="unknown recipe fields"):
        QuantRecipe.from_dict({"bits": 4})
    # from TOML or JSON: each field of its type, numbers finite ("yes" was taken as true, "x" bins
    # and 5 as a layer list were tracebacks)
    for bad, why in (
        ({"per_channel": "yes"}, "per_channel must be true or false"),
        ({"calibration_bins": "x"}, "calibration_bins must be an integer"),
        ({"calibration_bins": True}, "calibration_bins must be an integer"),
        ({"percentile": float("nan")}, "percentile must be a finite number"),
        ({"fp32_layers": 5}, "fp32_layers must be a list"),
        ({"mode": 1}, "mode must be a string"),
    ):
        with pytest.raises(ConfigError, match=why):
            QuantRecipe.from_dict(bad)
    assert set(DEFAULT_RECIPES) == {"lenet_pool", "lenet_stride"}


def test_recipe_names_layers_kept_in_fp32_by_type_and_order():
    r = QuantRecipe(fp32_layers=["Conv:1", "Gemm:0"])  # a list, as JSON gives it
    assert r.fp32_layers == ("Conv:1", "Gemm:0") and r.name.endswith("-fp32_Conv1+Gemm0")
    assert QuantRecipe.from_dict(r.to_dict()) == r and r.to_dict()["fp32_layers"] == ["Conv:1", "Gemm:0"]
    for bad in ("conv1", "Conv:x", "node_Conv_5", "Conv:0:1"):
        with pytest.raises(ConfigError, match="fp32_layers"):
            QuantRecipe(fp32_layers=(bad,))


def test_weight_only_recipe_names_itself_and_needs_layers():
    r = QuantRecipe(fp32_layers=("Gemm:1", "Gemm:2"), weight_only=True)
    assert r.name.endswith("-fp32_Gemm1+Gemm2-w8") and QuantRecipe.from_dict(r.to_dict()) == r
    assert "weight_only" not in QuantRecipe(fp32_layers=("Gemm:1",)).to_dict()  # old records unchanged
    with pytest.raises(ConfigError, match="weight_only applies to fp32_layers"):
        QuantRecipe(weight_only=True)


def test_weight_only_int8_stores_each_output_channel_in_int8_and_skips_shared_weights():
    """Conv (axis 0), Gemm (axis 1; transB=1: axis 0), MatMul (last axis): int8 weights, zero point
    0, one scale per output channel, within half a step of the float weights; a weight two nodes
    share is left float."""
    from onnx import helper, numpy_helper

    from lenet_edge.quantize.ort_quant import weight_only_int8

    rng = np.random.default_rng(5)
    w = {
        "cw": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "gw": rng.normal(size=(6, 5)).astype(np.float32),
        "tw": rng.normal(size=(3, 5)).astype(np.float32),
        "mw": rng.normal(size=(5, 2)).astype(np.float32),
    }
    w["gw"][:, 2] = 0.0  # an all-zero channel keeps scale 1
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], name="conv"),
        helper.make_node("Gemm", ["a", "gw"], ["g"], name="gemm"),
        helper.make_node("Gemm", ["g", "tw"], ["t"], name="gemm_t", transB=1),
        helper.make_node("MatMul", ["g", "mw"], ["m"], name="matmul"),
        helper.make_node("MatMul", ["t", "mw"], ["m2"], name="shared"),
    ]
    g = helper.make_graph(
        nodes, "g", [], [], initializer=[numpy_helper.from_array(v, k) for k, v in w.items()]
    )
    m = helper.make_model(g)
    done = weight_only_int8(m, ["conv", "gemm", "gemm_t", "matmul"])
    assert done == ["conv", "gemm", "gemm_t"]  # mw is used twice: left float
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dqs = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    w["gw"] = w["gw"].T  # a Gemm's weights are stored [N, K], transB=1
    gemm = next(n for n in m.graph.node if n.name == "gemm")
    assert [(a.name, a.i) for a in gemm.attribute] == [("transB", 1)]
    for name in ("cw", "gw", "tw"):
        n = dqs[name]
        q, s, z = (inits[i] for i in n.input)
        assert q.dtype == np.int8 and not z.any() and s.shape == (w[name].shape[0],)
        assert helper.get_attribute_value(n.attribute[0]) == 0  # the output-channel axis
        shape = [-1] + [1] * (q.ndim - 1)
        back = q.astype(np.float32) * s.reshape(shape)
        assert np.all(np.abs(back - w[name]) <= s.reshape(shape) / 2 + 1e-7)
    assert inits["gw_scale"][2] == 1.0 and "mw" in inits


def test_float_regions_keep_only_what_sits_between_float_layers_unquantized():
    """Pad -> Conv0 -> Relu -> Pool -> Conv1 -> Flatten -> Gemm0 -> Relu -> Gemm1: the unweighted
    nodes between layers all kept FP32 stay float (no Quantize/Dequantize pair per call); those
    next to an INT8 layer stay quantizable; nothing kept FP32, nothing extra."""
    from onnx import helper

    from lenet_edge.quantize.ort_quant import float_regions

    chain = [("Pad", "pad"), ("Conv", "c0"), ("Relu", "r0"), ("MaxPool", "p0"), ("Conv", "c1")]
    chain += [("Flatten", "f"), ("Gemm", "g0"), ("Relu", "r1"), ("Gemm", "g1")]
    nodes, x = [], "x"
    for op, name in chain:
        nodes.append(helper.make_node(op, [x], [name + "_out"], name=name))
        x = name + "_out"
    m = helper.make_model(helper.make_graph(nodes, "g", [], []))
    assert float_regions(m, []) == []
    assert float_regions(m, ["c0", "c1", "g0", "g1"]) == ["pad", "p0", "r0", "f", "r1"]
    assert float_regions(m, ["c0"]) == ["pad"]  # r0/p0 feed the INT8 c1
    assert float_regions(m, ["g0", "g1"]) == ["r1"]


def test_resolve_layers_maps_type_and_order_to_nodes_and_refuses_what_is_not_there():
    from onnx import helper

    from lenet_edge.quantize.ort_quant import QuantizeError, resolve_layers

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="first_conv"),
        helper.make_node("MatMul", ["c", "m"], ["mm"], name="mm0"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="bias0"),
    ]
    g = helper.make_graph(nodes, "g", [], [])
    assert resolve_layers(helper.make_model(g), ("Conv:0", "MatMul:0"), "m") == ["first_conv", "mm0", "bias0"]
    with pytest.raises(QuantizeError, match="has 1 Conv node"):
        resolve_layers(helper.make_model(g), ("Conv:1",), "m")


def test_sweep_recipes_have_unique_names():
    from lenet_edge.quantize.sweep import all_recipes

    names = [r.name for r in all_recipes()]
    assert len(names) == len(set(names)) > 100


def test_binomial_tail_exact():
    assert binom_tail_ge(0, 5) == 1.0 and binom_tail_ge(6, 5) == 0.0
    assert binom_tail_ge(5, 5) == 1 / 32 and binom_tail_ge(4, 5) == 6 / 32


@pytest.mark.parametrize("b,c", [(0, 0), (3, 2), (10, 3), (1, 9), (25, 5), (0, 12)])
def test_mcnemar_matches_scipy(b, c):
    scipy_stats = pytest.importorskip("scipy.stats")
    ref = np.array([True] * b + [False] * c + [True] * 50 + [False] * 7)
    new = np.array([False] * b + [True] * c + [True] * 50 + [False] * 7)
    out = mcnemar_exact(ref, new)
    assert (out["ref_only_correct"], out["new_only_correct"]) == (b, c)
    if b + c:
        want = scipy_stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert out["p_new_worse"] == pytest.approx(want, rel=1e-12)
        assert out["p_two_sided"] == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    else:
        assert out["p_new_worse"] == 1.0


def _record(**kw):
    rec = {
        "model": "m",
        "accuracy_drop_pp": 0.02,
        "agreement_with_fp32": 0.9993,
        "mcnemar": {"p_new_worse": 0.4},
        "size_ratio_vs_fp32": 0.27,
    }
    rec.update(kw)
    return rec


def test_tolerance_checks_catch_each_violation():
    tol = load_tolerances()
    assert int8_failures(_record(), tol) == []
    assert "drop 0.50 pp" in int8_failures(_record(accuracy_drop_pp=0.5), tol)[0]
    assert "agreement 99.00 %" in int8_failures(_record(agreement_with_fp32=0.99), tol)[0]
    assert "significantly worse" in int8_failures(_record(mcnemar={"p_new_worse": 0.001}), tol)[0]
    assert "0.350 x FP32" in int8_failures(_record(size_ratio_vs_fp32=0.35), tol)[0]


def test_tolerances_file_explains_every_value():
    from lenet_edge.quantize.checks import TOLERANCES

    for key, entry in json.loads(TOLERANCES.read_text()).items():
        if key != "about":
            assert set(entry) == {"value", "why"} and len(entry["why"]) > 40, key


def test_committed_calibration_subset(mnist_dir):
    from lenet_edge.quantize.calibration import load_calibration, make_indices
    from lenet_edge.runtime.mnist import load_split

    cal = load_calibration()
    labels = load_split("train", mnist_dir).labels
    assert cal.indices.size == 1000
    assert np.bincount(labels[cal.indices], minlength=10).tolist() == [100] * 10
    assert np.array_equal(make_indices(labels), cal.indices)  # reproducible from its seed


def test_calibration_file_problems(tmp_path):
    from lenet_edge.quantize.calibration import PixelReader, indices_sha256, load_calibration

    p = tmp_path / "cal.json"
    p.write_text(json.dumps({"indices": [], "sha256": ""}))
    with pytest.raises(ConfigError, match="cal.json: the calibration set is empty"):
        load_calibration(p)
    p.write_text(json.dumps({"indices": [1, 2, 3], "sha256": indices_sha256(np.array([1, 2, 4]))}))
    with pytest.raises(ConfigError, match="do not match their recorded sha256"):
        load_calibration(p)
    p.write_text(json.dumps({"indices": [1, 1], "sha256": indices_sha256(np.array([1, 1]))}))
    with pytest.raises(ConfigError, match="unique"):
        load_calibration(p)
    with pytest.raises(ConfigError, match="empty"):
        PixelReader(np.zeros((0, 1, 28, 28), np.float32))
    reader = PixelReader(np.zeros((250, 1, 28, 28), np.float32), batch_size=100)
    assert [len(b["pixels"]) for b in reader] == [100, 100, 50]

    from lenet_edge.quantize.calibration import make_indices

    labels = np.repeat(np.arange(10), 7)  # 7 images of each digit
    assert make_indices(labels, 70).size == 70
    with pytest.raises(ConfigError, match="calibration size 80: at most 70"):  # was numpy's ValueError
        make_indices(labels, 80)
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):  # was numpy's ValueError
        make_indices(labels, 10, seed=-1)


def test_compact_names_keeps_contract_names():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from lenet_edge.quantize.cleanup import compact_names

    g = helper.make_graph(
        [
            helper.make_node("Relu", ["pixels"], ["a_very_long_intermediate_name"], name="relu_node"),
            helper.make_node("Identity", ["a_very_long_intermediate_name"], ["scores"], name="id_node"),
        ],
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])],
    )
    m = compact_names(helper.make_model(g))
    onnx.checker.check_model(m)
    assert [list(n.input) + list(n.output) for n in m.graph.node] == [["pixels", "0"], ["0", "scores"]]


def _tiny_model(path, input_name="pixels", shape=(None, 1, 28, 28)):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["scores"])],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(shape))],
    )
    onnx.save(helper.make_model(g), str(path))


@pytest.mark.parametrize(
    "case", ["garbage", "contract-name", "contract-shape", "no-record", "empty-calibration"]
)
def test_quantize_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    d = tmp_path / "onnx"
    d.mkdir()
    f = d / "lenet_pool.fp32.onnx"
    args = ["-m", "lenet_edge.quantize", "--model", "lenet_pool", "--onnx-dir", str(d)]
    if case == "garbage":
        f.write_bytes(b"\x08\x07garbage" * 10)
        needles = [str(f), "not a readable ONNX model"]
    elif case == "contract-name":
        _tiny_model(f, input_name="x")
        needles = [str(f), "do not match the contract"]
    elif case == "contract-shape":
        _tiny_model(f, shape=(None, 3, 32, 32))
        needles = [str(f), "do not match the contract", "32"]
    elif case == "no-record":
        from lenet_edge.export.variants import floor_model

        f.write_bytes(floor_model().SerializeToString())  # honours the contract; no record beside it
        needles = [str(f), "no export record"]
    else:
        _tiny_model(f)
        cal = tmp_path / "cal.json"
        cal.write_text(json.dumps({"indices": [], "sha256": ""}))
        args += ["--calibration-file", str(cal)]
        needles = [str(cal), "empty"]
    before = sorted(p.name for p in d.iterdir())
    assert_one_line_error(run_cli(*args), *needles)
    assert sorted(p.name for p in d.iterdir()) == before


def test_select_picks_the_fastest_checked_lenet_edge_artifact(tmp_path):
    """Stock rows are never chosen, an INT8 model whose record breaks the tolerances is no
    candidate, and --no-timing records the documented default (round-robin only: no pairs)."""
    import hashlib

    from lenet_edge.quantize.select import select

    d = tmp_path / "onnx"
    d.mkdir()

    def row(file, fmt, rt, us, stock=False, call="run"):
        (d / file).write_bytes(b"x")
        return bench_row(file, fmt, us, rt, stock, call)

    good = {
        "model": "m",
        "accuracy_drop_pp": 0.0,
        "agreement_with_fp32": 0.999,
        "mcnemar": {"p_new_worse": 0.5},
        "size_ratio_vs_fp32": 0.28,
    }
    bad = {**good, "accuracy_drop_pp": 2.0}
    (d / "m.int8.s2d.ort.quantize.json").write_text(json.dumps(good))
    (d / "m.int8.qdq.quantize.json").write_text(json.dumps(bad))
    rows = [
        row("m.fp32.onnx", "fp32", "onnxruntime", 5, stock=True),
        row("m.fp32.opt.onnx", "fp32.opt", "onnxruntime", 30),
        row("m.int8.qdq.onnx", "int8.qdq", "onnxruntime", 10),  # fastest, but breaks the tolerances
        row("m.int8.s2d.ort.onnx", "int8.s2d.ort", "onnxruntime", 25, call="iobinding"),
        row("m.int8.s2d.ort.onnx", "int8.s2d.ort", "onnxruntime", 27),
    ]
    bench = {"results": rows, "environment": {"cpu": {"model": "X", "isa_flags": ["avx2"]}}}
    (c,) = select(bench, d, pair_rounds=0)["choices"]
    assert c["choice"]["file"] == "m.int8.s2d.ort.onnx" and c["choice"]["call"] == "iobinding"
    assert {x["file"] for x in c["candidates"]} == {"m.fp32.opt.onnx", "m.int8.s2d.ort.onnx"}
    rows[3]["latency_ms_p50"] = rows[4]["latency_ms_p50"] = 0.040  # now slower than FP32
    (c,) = select(bench, d, pair_rounds=0)["choices"]
    assert c["choice"]["file"] == "m.fp32.opt.onnx" and c["fastest_int8"]["file"] == "m.int8.s2d.ort.onnx"
    res = select(bench, d, timing=False)
    assert (
        res["method"] == "documented default" and res["choices"][0]["choice"]["file"] == "m.int8.s2d.ort.onnx"
    )
    with pytest.raises(ConfigError, match="nothing to select"):  # the wrong folder: no targets written
        select(bench, tmp_path / "elsewhere", timing=False)
    # two threads: the round-robin's fastest there, beside what the one-thread choice takes there
    rows += [
        row("m.fp32.opt.onnx", "fp32.opt", "onnxruntime", 31) | {"threads": 2},
        row("m.int8.s2d.ort.onnx", "int8.s2d.ort", "onnxruntime", 90, call="iobinding") | {"threads": 2},
        row("m.int8.qdq.onnx", "int8.qdq", "onnxruntime", 5) | {"threads": 2},  # still outside the tolerances
    ]
    res = select(bench, d, pair_rounds=0)
    assert res["choices"][0]["choice"]["file"] == "m.fp32.opt.onnx"  # one thread: as before
    rows[3]["latency_ms_p50"] = rows[4]["latency_ms_p50"] = 0.025
    res = select(bench, d, pair_rounds=0)
    (c,) = res["choices"]
    (c2,) = res["choices_other_settings"]["batch 1, 2 threads"]
    assert c["choice"]["file"] == "m.int8.s2d.ort.onnx" and c2["choice"]["file"] == "m.fp32.opt.onnx"
    assert (
        c2["fastest_int8"]["file"] == "m.int8.s2d.ort.onnx"
        and c2["one_thread_choice_here"]["latency_ms_p50"] == 0.09
    )
    assert (
        c2["choice"]["file_sha256"] == hashlib.sha256(b"x").hexdigest()
    )  # the bytes chosen, as for one thread
    assert (
        select(bench, d, timing=False)["choices_other_settings"] == {}
    )  # the documented default has no timing


def test_select_checks_the_round_robin_choice_by_pairs(tmp_path, monkeypatch):
    """With timing, the candidates within 1.15x of the round-robin's fastest are paired with it and
    one clearly faster replaces it (choice and fastest INT8 alike); a bench from another CPU is
    refused in one line rather than paired here."""
    from lenet_edge.quantize.select import select
    from lenet_edge.runtime import bench as rb
    from lenet_edge.runtime.env import cpu_info

    d = tmp_path / "onnx"
    d.mkdir()

    def row(file, fmt, us):
        (d / file).write_bytes(b"x")
        return bench_row(file, fmt, us, "ai-edge-litert")

    rows = [
        row("m.fp32.opt.tflite", "fp32.opt.tflite", 20),  # the round-robin's fastest
        row("m.int8.dynamic.tflite", "int8.dynamic.tflite", 21),  # paired: 0.9 of it, replaces it
        row("m.int8.full.tflite", "int8.full.tflite", 22),  # paired with the INT8 side: not faster
        row("m.fp32.tflite", "fp32.tflite", 40),  # not close: never paired
    ]
    ratio = {
        ("m.int8.dynamic.tflite", "m.fp32.opt.tflite"): (0.90, [0.88, 0.92]),
        ("m.int8.full.tflite", "m.fp32.opt.tflite"): (0.97, [0.95, 1.01]),
        ("m.int8.full.tflite", "m.int8.dynamic.tflite"): (1.05, [1.02, 1.08]),
    }
    asked = []

    def fake_pairs(pairs, by_name, b, t, rounds, warmup):
        asked.extend(pairs)
        assert all(by_name[f].parent == d for pair in pairs for f, _ in pair) and (b, t, rounds) == (1, 1, 50)
        return {
            p: {"ratio": ratio[(p[0][0], p[1][0])][0], "ci95": ratio[(p[0][0], p[1][0])][1], "rounds": 50}
            for p in pairs
        }

    monkeypatch.setattr(rb, "_run_pairs", fake_pairs)
    bench = {"results": rows, "environment": {"cpu": cpu_info()}}
    res = select(bench, d, pair_rounds=50)
    (c,) = res["choices"]
    assert c["choice"]["file"] == "m.int8.dynamic.tflite"
    assert c["choice"]["round_robin_best"]["file"] == "m.fp32.opt.tflite"
    assert c["choice"]["round_robin_best"]["vs_chosen"]["ratio"] == 0.90
    assert (
        c["fastest_int8"]["file"] == "m.int8.dynamic.tflite" and "round_robin_best" not in c["fastest_int8"]
    )
    assert "m.fp32.tflite" not in {f for pair in asked for f, _ in pair}
    assert "paired" in res["method"]
    # another CPU's benchmark: refused before anything is timed, one line naming the mismatch
    asked.clear()
    bench["environment"]["cpu"] = {"model": "Some Other CPU", "isa_flags": ["avx2"]}
    with pytest.raises(ConfigError, match="model 'Some Other CPU'"):
        select(bench, d, pair_rounds=50)
    assert not asked
    (tmp_path / "b.json").write_text(json.dumps(bench))
    proc = run_cli(
        "-m", "lenet_edge.quantize.select", "--bench", str(tmp_path / "b.json"), "--onnx-dir", str(d),
        "--json", str(tmp_path / "t.json"),
    )  # fmt: skip
    assert_one_line_error(proc, "Some Other CPU", "--pair-rounds 0")
    assert not (tmp_path / "t.json").exists()


def test_published_search_choice_is_used_only_while_its_fp32_source_is_unchanged(tmp_path, capsys):
    """<model>.int8.search.onnx counts (bench list, select) only while it matches its record and the
    FP32 file it was quantized from; a stale or corrupt one is named and left out, never a crash."""
    import hashlib

    from lenet_edge.quantize.published import main, stale_reason
    from lenet_edge.quantize.select import _passes

    d = tmp_path / "onnx"
    d.mkdir()
    src, out = d / "m.fp32.s2d.onnx", d / "m.int8.search.onnx"
    src.write_bytes(b"fp32")
    out.write_bytes(b"int8")
    rec = {
        "model": "m",
        "onnx": out.name,
        "onnx_sha256": hashlib.sha256(b"int8").hexdigest(),
        "accuracy_drop_pp": 0.0,
        "agreement_with_fp32": 0.999,
        "mcnemar": {"p_new_worse": 0.5},
        "size_ratio_vs_fp32": 0.28,
        "search": {"fp32_source": src.name, "fp32_source_sha256": hashlib.sha256(b"fp32").hexdigest()},
    }
    rp = d / "m.int8.search.quantize.json"
    rp.write_text(json.dumps(rec))
    tol = load_tolerances()
    row = {"file": out.name, "format": "int8.search"}
    assert stale_reason(out) == "" and _passes(d, row, tol)
    assert main(["--onnx-dir", str(d)]) == 0 and capsys.readouterr().out.split() == [str(out)]
    src.write_bytes(b"retrained")
    assert "changed since the search" in stale_reason(out) and not _passes(d, row, tol)
    assert main(["--onnx-dir", str(d)]) == 0
    o = capsys.readouterr()
    assert o.out == "" and "left out" in o.err and out.name in o.err
    src.write_bytes(b"fp32")
    out.write_bytes(b"other")
    assert "does not match its record" in stale_reason(out)
    rp.write_text("{not json")
    assert "unreadable" in stale_reason(out)
    out.write_bytes(b"int8")
    rec["search"]["fp32_source"] = "../outside.onnx"
    rp.write_text(json.dumps(rec))
    assert "missing" in stale_reason(out)  # a path from the record never leaves the folder
    # --target: a record without one is the host's; an Arm core's choice is left out of the host's list
    rec["search"]["fp32_source"] = src.name
    rp.write_text(json.dumps(rec))
    arm = d / "m.int8.search.cortex-a72.onnx"
    arm.write_bytes(b"int8")
    (d / "m.int8.search.cortex-a72.quantize.json").write_text(
        json.dumps(rec | {"search": rec["search"] | {"target": "cortex-a72"}})
    )
    capsys.readouterr()
    assert main(["--onnx-dir", str(d)]) == 0 and capsys.readouterr().out.split() == [str(arm), str(out)]
    assert main(["--onnx-dir", str(d), "--target", "host"]) == 0 and capsys.readouterr().out.split() == [
        str(out)
    ]
    assert main(["--onnx-dir", str(d), "--target", "cortex-a72"]) == 0
    assert capsys.readouterr().out.split() == [str(arm)]


def test_published_litert_choice_is_listed_by_suffix_and_goes_stale_with_its_source(tmp_path, capsys):
    """<model>.int8.search.tflite counts only while it matches its record (sha256) and the
    dynamic-range file it was edited from; --suffix .onnx (the bundle's list) leaves it out."""
    import hashlib

    from lenet_edge.quantize.published import main, stale_reason
    from lenet_edge.quantize.select import _passes

    d = tmp_path / "onnx"
    d.mkdir()
    src, out = d / "m.int8.dynamic.tflite", d / "m.int8.search.tflite"
    src.write_bytes(b"dyn")
    out.write_bytes(b"choice")
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    rec = {
        "model": "m",
        "sha256": sha(b"choice"),
        "search": {"source": src.name, "source_sha256": sha(b"dyn")},
    }
    (d / "m.int8.search.tflite.quantize.json").write_text(json.dumps(rec))
    row = {"file": out.name, "format": "int8.search.tflite"}
    assert stale_reason(out) == "" and _passes(d, row, load_tolerances())
    assert main(["--onnx-dir", str(d)]) == 0 and capsys.readouterr().out.split() == [str(out)]
    assert main(["--onnx-dir", str(d), "--suffix", ".onnx"]) == 0 and capsys.readouterr().out == ""
    src.write_bytes(b"re-converted")
    assert "changed since the search" in stale_reason(out) and not _passes(d, row, load_tolerances())
    src.write_bytes(b"dyn")
    out.write_bytes(b"edited by hand")
    assert "does not match its record" in stale_reason(out)


def _fake_record(recipe):
    return {
        "model": "lenet_pool",
        "recipe": recipe.to_dict(),
        "onnx_bytes": 70_000,
        "bytes_per_param": 1.13,
        "size_ratio_vs_fp32": 0.28,
        "test_top1": 0.987,
        "accuracy_drop_pp": 0.01,
        "agreement_with_fp32": 0.999,
        "mcnemar": {"ref_only_correct": 2, "new_only_correct": 1, "p_new_worse": 0.5},
        "nodes": {"exported_total": 61, "clean_total": 17, "int8_total": 44},
        "nodes_excluded": [],
    }


@pytest.mark.parametrize("flags,expect", [([], "fell back"), (["--per-channel"], "fails")])
def test_a_default_recipe_that_fails_its_checks_falls_back_to_per_tensor(monkeypatch, capsys, flags, expect):
    """Without recipe flags the quantize CLI tries per-tensor weights when the default (per-channel)
    fails its checks, and says so; with a recipe given by flags it never substitutes another."""
    import lenet_edge.quantize.ort_quant as oq
    from lenet_edge.quantize.__main__ import main
    from lenet_edge.quantize.ort_quant import QuantizeError

    tried = []

    def fake_quantize(fp32, out, recipe, *a, **k):
        tried.append(recipe.per_channel)
        if recipe.per_channel:
            raise QuantizeError("lenet_pool: INT8 top-1 drop 0.12 pp > 0.1 pp (nothing written)")
        return _fake_record(recipe)

    monkeypatch.setattr(oq, "quantize_model", fake_quantize)
    monkeypatch.setattr(oq, "is_up_to_date", lambda *a: False)
    argv = ["--model", "lenet_pool", "--variant", "s2d", "--no-progress", *flags]
    if expect == "fails":
        with pytest.raises(QuantizeError, match="drop 0.12 pp"):
            main(argv)
        assert tried == [True]
    else:
        assert main(argv) == 0
        assert tried == [True, False]
        out = capsys.readouterr().out
        assert (
            "default recipe failed its checks" in out and "fell back to static-qdq-u8s8-pt-rr-minmax" in out
        )


def test_search_confirms_the_fastest_candidate_by_pairs(tmp_path):
    """The round-robin's fastest is paired with every passing candidate within 15 % of it; one whose
    interval lies wholly below 0.995 replaces it (the lowest ratio wins); counts need no pairs."""
    from lenet_edge.quantize import search as s

    def row(label, p50, passed=True):
        return {"label": label, "file": f"{label}.onnx", "passed": passed, "p50_us": p50 if passed else None}

    class Paired(s.Measure):
        def versus(self, files, ref, measured):
            self.asked = (sorted(f.name for f in files), ref.name)
            table = {"b.onnx": (0.97, 0.99), "c.onnx": (0.96, 1.01), "d.onnx": (0.95, 0.96)}
            return {f.name: {"ratio": table[f.name][0], "ci95": [0.9, table[f.name][1]]} for f in files}

    rows = [
        row("a", 20.0),
        row("b", 21.0),
        row("c", 22.5),
        row("d", 22.9),
        row("e", 23.5),
        row("f", 0, False),
    ]
    m = Paired()
    best = s._confirm_fastest(rows, tmp_path, m)
    assert m.asked == (["b.onnx", "c.onnx", "d.onnx"], "a.onnx")  # e is too slow, f failed its checks
    assert best["label"] == "d" and rows[2]["vs_fastest_first_run"]["ci95"][1] == 1.01  # c: not clearly
    assert s._confirm_fastest(rows[:1], tmp_path, Paired())["label"] == "a"  # nothing close: no pairs
    arm = [dict(r, instructions=r["p50_us"]) for r in rows if r["passed"]]
    assert s._confirm_fastest(arm, tmp_path, Paired("cortex-a76"))["label"] == "a"


def test_a_trial_is_timed_in_the_form_the_trials_start_from_or_its_plain_ort_target():
    """Mixed-precision trials are timed in the form of the candidate they start from; where the
    one-thread form does not apply (conv1 in FP32: no uint8 input), the plain ORT target stands in
    (found on cortex-a72: lenet_stride lost its conv1-FP32 trial); failed rows stay in the record."""
    from lenet_edge.quantize import search as s

    def rows(one_thread_applies, ort_passes=True):
        base = "s2d.static-qdq-u8s8-pt-rr-minmax-fp32_Conv1-w8"
        qdq = {"label": base, "passed": True}
        ort = {"label": base + ".ort", "passed": ort_passes}
        one = {"label": base + ".ort+uint8-transpose", "passed": one_thread_applies}
        if not one_thread_applies:
            one["not_applicable"] = True
        return [qdq, ort, one]

    def timed(trial):
        return [r["label"].removeprefix("s2d.static-qdq-u8s8-pt-rr-minmax-fp32_Conv1-w8") for r in trial]

    assert timed(s._trial_rows(rows(True), ".ort+uint8-transpose")) == [".ort+uint8-transpose"]
    assert timed(s._trial_rows(rows(False), ".ort+uint8-transpose")) == [".ort", ".ort+uint8-transpose"]
    assert timed(s._trial_rows(rows(False, ort_passes=False), ".ort+uint8-transpose")) == [
        ".ort",
        ".ort+uint8-transpose",
    ]  # both failed: in the record, nothing to time
    assert timed(s._trial_rows(rows(True), ".ort")) == [".ort"]
    assert timed(s._trial_rows(rows(False), ".ort")) == [".ort", ".ort+uint8-transpose"]  # record only
    assert timed(s._trial_rows(rows(True), "")) == [""]


def test_search_layer_sets_and_what_it_minimises(monkeypatch):
    """Mixed precision tries every tail of the weighted layers (shortest first), then each layer,
    then hands each kept layer back to INT8 (found on cortex-a72: all float but one);
    an Arm target minimises counted instructions (any 0.5 % less counts), the host p50 (a paired
    interval below 0.995); a failed count is one clear error, and the Markdown names the measure."""
    import subprocess

    from lenet_edge.quantize import search as s
    from lenet_edge.runtime.errors import LenetEdgeError

    layers = ["Conv:0", "Conv:1", "Gemm:0"]
    assert s._layer_sets(layers) == [
        ("add", ("Conv:1", "Gemm:0")),
        ("add", ("Conv:0", "Conv:1", "Gemm:0")),
        ("add", ("Conv:0",)),
        ("add", ("Conv:1",)),
        ("add", ("Gemm:0",)),
        ("drop", ("Conv:0",)),
        ("drop", ("Conv:1",)),
        ("drop", ("Gemm:0",)),
    ]
    assert s._apply(layers, ("Gemm:0",), ("add", ("Conv:0",))) == ("Conv:0", "Gemm:0")
    assert s._apply(layers, ("Conv:0", "Gemm:0"), ("drop", ("Conv:0",))) == ("Gemm:0",)

    def greedy_with(cost):  # cost of a layer set; a trial wins if 0.5 % below the current best
        best = [cost(())]
        seen = []

        def trial(layer_set):
            seen.append(layer_set)
            if cost(layer_set) < 0.995 * best[0]:
                best[0] = cost(layer_set)
                return True
            return False

        return s._greedy(layers, trial), seen

    # an a72-like core: every layer is cheaper in float except Conv:1, which pays in INT8; the
    # forward steps keep everything in float, the drop step hands Conv:1 back to INT8
    def a72(layer_set):
        return sum({"Conv:0": -3, "Conv:1": +2, "Gemm:0": -1}[x] for x in layer_set) + 100

    kept, seen = greedy_with(a72)
    assert kept == ("Conv:0", "Gemm:0")
    assert len(seen) == len(set(seen)) and () not in seen  # each set once, never the start again
    # where INT8 is best everywhere nothing is kept and nothing dropped
    assert greedy_with(lambda ls: 100 + len(ls))[0] == ()
    host, arm = s.Measure(), s.Measure("cortex-a76")
    assert (host.key, host.keep_below) == ("p50_us", 0.995) and (arm.key, arm.keep_below) == (
        "instructions",
        0.995,
    )
    # counts compare exactly; a change is kept only if clearly better (timing: the whole interval)
    vs = arm.versus([Path("b.onnx")], Path("a.onnx"), {"a.onnx": 200.0, "b.onnx": 198.0})["b.onnx"]
    assert vs == {"ratio": 0.99, "ci95": [0.99, 0.99]} and arm.clearly_better(vs)
    assert not arm.clearly_better({"ratio": 0.996, "ci95": [0.996, 0.996]})
    assert not host.clearly_better({"ratio": 0.95, "ci95": [0.90, 0.996]}) and not host.clearly_better(None)
    assert host.clearly_better({"ratio": 0.95, "ci95": [0.90, 0.985]})

    class Failed:
        returncode, stdout, stderr = 1, "", "qemu-aarch64: not found\n"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(LenetEdgeError, match="cortex-a76: counting instructions under qemu failed"):
        arm([])
    row = {"label": "x.ort", "passed": True, "test_top1": 0.987, "instructions": 349448.0}
    res = {
        "target": "cortex-a76",
        "cpu": {},
        "onnxruntime": "1.32.0",
        "command": "lenet-edge search --target cortex-a76",
        "models": [
            {
                "model": "m",
                "candidates": [row],
                "mixed_precision": {"kept_fp32": ["Gemm:1"], "trials": []},
                "fp32_instructions": {"m.fp32.s2d.onnx": 439064.0},
                "choice": {"label": "x.ort", "instructions": 349448.0},
                "method": "fewest",
            }
        ],
    }
    md = s.to_markdown(res)
    assert "| instructions |" in md and "349,448" in md and "439,064 instructions" in md


def test_select_refuses_a_bench_row_naming_a_file_outside_the_onnx_folder(tmp_path):
    """A file name from the bench JSON that resolves outside --onnx-dir is refused in one line,
    even when the file exists there, and no targets.json is written."""
    d = tmp_path / "onnx"
    d.mkdir()
    (tmp_path / "evil.onnx").write_bytes(b"x")
    bench = {"results": [bench_row("../evil.onnx", "fp32", 5, "onnxruntime")], "environment": {}}
    (tmp_path / "b.json").write_text(json.dumps(bench))
    proc = run_cli(
        "-m", "lenet_edge.quantize.select", "--bench", str(tmp_path / "b.json"), "--onnx-dir", str(d),
        "--json", str(tmp_path / "t.json"), "--pair-rounds", "0",
    )  # fmt: skip
    assert_one_line_error(proc, "evil.onnx", "resolves outside")
    assert not (tmp_path / "t.json").exists()


def test_select_skips_a_row_whose_file_was_republished_since_the_bench(tmp_path):
    """A row names the bytes it timed (file_sha256): once the file under that name has other bytes
    it is no candidate (said, and recorded); the choice carries the chosen file's sha256."""
    from lenet_edge.quantize.select import select
    from lenet_edge.runtime.files import sha256_file

    d = tmp_path / "onnx"
    d.mkdir()
    rows = []
    for name, us in (("m.fp32.opt.onnx", 30), ("m.fp32.b1.onnx", 20)):
        (d / name).write_bytes(name.encode())
        rows.append(
            bench_row(name, "fp32." + name.split(".")[2], us, "onnxruntime")
            | {"file_sha256": sha256_file(d / name)}
        )
    bench = {"results": rows, "environment": {}}
    (c,) = select(bench, d, pair_rounds=0)["choices"]
    assert c["choice"]["file"] == "m.fp32.b1.onnx"
    assert c["choice"]["file_sha256"] == rows[1]["file_sha256"]
    (d / "m.fp32.b1.onnx").write_bytes(b"re-published")  # same name, other bytes
    said = []
    res = select(bench, d, pair_rounds=0, say=said.append)
    (c,) = res["choices"]
    assert c["choice"]["file"] == "m.fp32.opt.onnx"
    assert [x["file"] for x in c["candidates"]] == ["m.fp32.opt.onnx"]
    assert list(res["changed_since_bench"]) == ["m.fp32.b1.onnx"] and "m.fp32.b1.onnx" in said[0]


def _qdq_conv_gemm(tmp_path, seed=0, per_channel=True):
    """A float Conv(bias) -> Relu -> Flatten -> Gemm(bias) quantized by onnxruntime (static QDQ,
    u8 activations, s8 weights, reduce-range), batch 16 calibration; returns the file."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = {
        "w": rng.normal(size=(12, 3, 3, 3)).astype(np.float32) * 0.3,
        "b": rng.normal(size=12).astype(np.float32) * 0.2,
        "fw": rng.normal(size=(12 * 5 * 4, 9)).astype(np.float32) * 0.1,
        "fb": rng.normal(size=9).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 7, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 9])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return ort_static_qdq(m, rng.normal(size=(64, 3, 7, 6)).astype(np.float32), tmp_path, per_channel)


def _ort_run(model, x, fused=True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not fused:  # the QDQ graph as written: float math on dequantized tensors
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


def test_half_weight_scales_are_float16_exact_and_keep_the_int32_bias_consistent(tmp_path):
    """Per-channel weight scales move to the nearest float16 value (<= 2^-11 of themselves), the int8
    weights stay bit for bit, each int32 bias gets scale x_scale * new w_scale: the fused integer
    kernels and the QDQ graph as written still agree, and the outputs barely move."""
    import onnx
    from onnx import numpy_helper

    from lenet_edge.quantize.scales import half_weight_scales

    path = _qdq_conv_gemm(tmp_path)
    x = np.random.default_rng(1).normal(size=(32, 3, 7, 6)).astype(np.float32)
    before = onnx.load(str(path))
    after = onnx.load(str(path))
    rec = half_weight_scales(after)
    assert rec["tensors"] == 2 and rec["biases_requantized"] == 2 and rec["channels"] == 12 + 9
    assert 0 < rec["max_relative_change"] <= 2.0**-11
    a = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    dq = {n.output[0]: n for n in after.graph.node if n.op_type == "DequantizeLinear"}
    for node in (n for n in after.graph.node if n.op_type in ("Conv", "Gemm")):
        xs = b[dq[node.input[0]].input[1]]
        wq, ws = (b[i] for i in dq[node.input[1]].input[:2])
        bq, bs = (b[i] for i in dq[node.input[2]].input[:2])
        assert ws.size > 1 and np.array_equal(ws.astype(np.float16).astype(np.float32), ws)
        assert np.array_equal(wq, a[dq[node.input[1]].input[0]])  # the int8 weights: untouched
        assert bq.dtype == np.int32 and np.array_equal(bs, (xs * ws).astype(np.float32))
        old_bias = a[dq[node.input[2]].input[0]] * a[dq[node.input[2]].input[1]].astype(np.float64)
        assert np.abs(bq * bs.astype(np.float64) - old_bias).max() <= bs.max()  # one step at most
    y0, y1 = _ort_run(before, x), _ort_run(after, x)
    assert np.isfinite(y1).all() and np.abs(y1 - y0).max() <= 1e-2 * np.abs(y0).max()
    fused, written = _ort_run(after, x), _ort_run(after, x, fused=False)
    assert np.abs(fused - written).max() <= 0.5 * np.abs(fused - y0).max() + 0.05


def test_half_weight_scales_leave_per_tensor_and_unrepresentable_scales_alone(tmp_path):
    """One scale per tensor gains nothing from float16 storage: untouched. A per-channel scale
    float16 cannot hold (above 65504) keeps every scale of its tensor and its bias as they were."""
    import onnx
    from onnx import numpy_helper

    from lenet_edge.quantize.scales import half_weight_scales

    path = _qdq_conv_gemm(tmp_path, per_channel=False)
    m = onnx.load(str(path))
    copy = m.SerializeToString()
    assert half_weight_scales(m)["tensors"] == 0 and m.SerializeToString() == copy
    path = _qdq_conv_gemm(tmp_path, seed=1)
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    conv_w = next(
        n
        for n in m.graph.node
        if n.op_type == "DequantizeLinear" and len(inits.get(n.input[0], onnx.TensorProto()).dims) == 4
    )
    big = inits[conv_w.input[1]]  # the conv's 12 weight scales
    v = numpy_helper.to_array(big).copy()
    v[0] = 1e6
    big.CopyFrom(numpy_helper.from_array(v, big.name))
    rec = half_weight_scales(m)
    assert rec["tensors"] == 1 and np.array_equal(
        numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == big.name)), v
    )


def test_a_search_record_says_amx_was_chosen_only_where_a_model_chose_it():
    from lenet_edge.quantize.search import amx_header

    chose = {"amx": "auto", "models": [{"model": "a"}, {"model": "b", "amx_choice": {"on": {}}}]}
    hidden = {"amx": "auto", "models": [{"model": "a"}, {"model": "b"}]}  # no AMX, or --isa hid it
    assert amx_header(chose) == "; with AMX and without, chosen per model"
    assert amx_header(hidden) == "; no AMX to decide on"
    assert amx_header({"amx": "off", "models": []}) == "; AMX refused"
    assert amx_header({"amx": "on", "models": []}) == amx_header({}) == ""


def test_device_evaluation_takes_a_model_path_that_begins_with_a_dash(tmp_path, monkeypatch, mnist_dir):
    # the TFLite check evaluates in the device environment's own process, paths as the user gave
    # them: a file named "-m.onnx" is a model, not an option of that process
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lenet_edge.quantize.tflite import _evaluate_in_device_env

    w = np.random.default_rng(0).standard_normal((784, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["scores"]),
        ],
        "linear",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "-m.onnx")
    monkeypatch.chdir(tmp_path)
    res = _evaluate_in_device_env(
        [Path("-m.onnx")], Path("-m.onnx"), "ai-edge-litert", Path(sys.prefix), mnist_dir
    )
    assert (
        set(res) == {"-m.onnx"} and res["-m.onnx"]["agreement"] == 1.0 and res["-m.onnx"]["max_abs_diff"] == 0
    )
    assert 0.0 < res["-m.onnx"]["top1"] < 1.0 and len(res["-m.onnx"]["correct"]) == 10000


@pytest.mark.parametrize(
    "folded, conv, expect",
    [
        (0.9995, 0.9992, "int8.full"),  # the fold passes every check: it is published
        (0.9987, 0.9992, "int8.full.conv"),  # within tolerances, under the rewrite's 99.9 % bar
        (0.9970, 0.9992, "int8.full.conv"),  # outside tolerances
        (0.9987, 0.9970, "int8.full"),  # under the bar, but the other form fails: the fold, and why
        (0.9970, 0.9970, None),  # both fail: nothing is published
    ],
)
def test_full_int8_is_the_folded_file_unless_only_the_1x1_conv_form_passes(
    tmp_path, monkeypatch, folded, conv, expect
):
    from lenet_edge.quantize import tflite

    staged = tmp_path / "stage"
    staged.mkdir()
    # each form's float-front twins agree as their form does
    agreement = {"int8.full": folded, "int8.full.conv": conv}
    agreement |= {t: folded for t in tflite.TWINS["int8.full"]} | {
        t: conv for t in tflite.TWINS[tflite.FALLBACK]
    }
    twins = (*tflite.TWINS["int8.full"], *tflite.TWINS[tflite.FALLBACK])
    for tag in (*tflite.OUTPUTS, *tflite.STOCK_OUTPUTS, tflite.FALLBACK, *twins):
        (staged / f"m.{tag}.tflite").write_bytes(bytes(300 if tag.endswith("fp32") else 70))
    right = [True] * 9900 + [False] * 100

    def evaluate(files, against, interp, venv, data):
        out = {}
        for f in files:
            tag = Path(f).name[2:-7]
            a = agreement.get(tag, 1.0)
            wrong = round((1 - a) * 10000)
            out[str(f)] = {
                "top1": 0.99 - wrong / 10000 / 2,
                "top2": 0.999,
                "agreement": a,
                "max_abs_diff": 1e-5,
                "correct": right[: 9900 - wrong // 2] + [False] * (100 + wrong // 2) if wrong else right,
            }
        return out

    monkeypatch.setattr(tflite, "_evaluate_in_device_env", evaluate)
    res = tflite.check_tflite("m", tmp_path, load_tolerances(), tflite_dir=staged)
    if expect is None:
        assert any("int8.full" in f for f in res["failures"])
        return
    assert res["failures"] == [] and res["int8_full_form"]["file"] == expect
    assert ("why" in res["int8_full_form"]) == (folded < 0.999)
    for c in res["checks"].values():
        assert c["int8_full"]["agreement_with_fp32"] == agreement[expect]
        for t in tflite.FRONTS:
            assert c[t.replace(".", "_")]["agreement_with_fp32"] == agreement[tflite.twin(expect, t)]
    tags = ("int8.full", tflite.FALLBACK, *twins)
    rec = {"outputs": {t: {"file": f"m.{t}.tflite", "source": t} for t in tags}, **res}
    (staged / "m.int8.full.conv.tflite").write_bytes(b"conv form")
    for t in tflite.FRONTS:
        (staged / f"m.{t}.conv.tflite").write_bytes(f"conv form, {t}".encode())
    tflite._settle_int8_full(staged, "m", rec)
    assert set(rec["outputs"]) == {"int8.full", *tflite.FRONTS} == {"int8.full", "int8.mixed", "int8.fc"}
    for t in ("int8.full", *tflite.FRONTS):
        assert rec["outputs"][t]["file"] == f"m.{t}.tflite"
    assert rec["outputs"]["int8.full"]["source"] == expect
    for t in tflite.FRONTS:
        assert rec["outputs"][t]["source"] == tflite.twin(expect, t)
        if expect == tflite.FALLBACK:
            assert (staged / f"m.{t}.tflite").read_bytes() == f"conv form, {t}".encode()
    if expect == tflite.FALLBACK:
        assert (staged / "m.int8.full.tflite").read_bytes() == b"conv form"


def test_the_folded_forms_twin_is_not_published_beside_the_1x1_conv_form(tmp_path):
    # the pass matched the folded form only: the conv form is published, with no twin
    from lenet_edge.quantize import tflite

    tags = ("int8.full", tflite.FALLBACK, "int8.mixed", "int8.fc")
    for tag in tags:
        (tmp_path / f"m.{tag}.tflite").write_bytes(tag.encode())
    rec = {
        "outputs": {t: {"file": f"m.{t}.tflite"} for t in tags},
        "int8_full_form": {"file": tflite.FALLBACK},
    }
    tflite._settle_int8_full(tmp_path, "m", rec)
    assert set(rec["outputs"]) == {"int8.full"}
    assert (tmp_path / "m.int8.full.tflite").read_bytes() == tflite.FALLBACK.encode()


@pytest.mark.parametrize("bad", ["int8.mixed", "int8.fc"])
def test_a_float_front_twin_that_fails_its_checks_fails_the_stage(tmp_path, monkeypatch, bad):
    from lenet_edge.quantize import tflite

    staged = tmp_path / "stage"
    staged.mkdir()
    for tag in (*tflite.OUTPUTS, *tflite.STOCK_OUTPUTS, "int8.mixed", "int8.fc"):
        (staged / f"m.{tag}.tflite").write_bytes(bytes(300 if tag.endswith("fp32") else 70))

    def evaluate(files, against, interp, venv, data):
        a = {str(f): 0.9985 if f.name == f"m.{bad}.tflite" else 1.0 for f in files}  # under the rewrite's bar
        right = [True] * 9900 + [False] * 100
        return {
            f: {"top1": 0.99, "top2": 0.999, "agreement": v, "max_abs_diff": 1e-5, "correct": right}
            for f, v in a.items()
        }

    monkeypatch.setattr(tflite, "_evaluate_in_device_env", evaluate)
    res = tflite.check_tflite("m", tmp_path, load_tolerances(), tflite_dir=staged)
    assert res["int8_full_form"]["file"] == "int8.full"
    assert res["failures"] and all(f"{bad})" in f and "99.85 %" in f for f in res["failures"])


def test_publish_removes_a_stale_float_front_twin_the_new_record_has_none_for(tmp_path):
    from lenet_edge.quantize import tflite

    staged, out = tmp_path / "stage", tmp_path / "onnx"
    staged.mkdir()
    out.mkdir()
    for tag in ("int8.mixed", "int8.fc"):  # an earlier run's twins
        (out / f"m.{tag}.tflite").write_bytes(b"old twin")
    for tag in ("fp32", "int8.full", "int8.mixed"):  # this run: no int8.fc (the pass refused)
        (staged / f"m.{tag}.tflite").write_bytes(tag.encode())
    rec = {"outputs": {t: {"file": f"m.{t}.tflite"} for t in ("fp32", "int8.full", "int8.mixed")}}
    tflite.publish(staged, out, "m", rec)
    assert (out / "m.int8.mixed.tflite").read_bytes() == b"int8.mixed"
    assert not (out / "m.int8.fc.tflite").exists()
    assert (out / "m.tflite.json").is_file() and (out / "m.int8.full.tflite").read_bytes() == b"int8.full"


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda b: b["results"].__setitem__(0, "row"), r"results\[0\]: not an object"),
        (lambda b: b["results"][0].pop("file"), r"results\[0\]: 'file' must be a non-empty string"),
        (lambda b: b["results"][0].update(file="a\0b.onnx"), "'file' must be a non-empty string"),
        (lambda b: b["results"][0].update(model=["m"]), "'model' must be a non-empty string"),
        (lambda b: b["results"][0].update(format=8), "'format' must be a non-empty string"),
        (lambda b: b["results"][0].pop("call"), "'call' must be a non-empty string"),
        (lambda b: b["results"][0].update(batch="1"), "'batch' must be an integer"),
        (
            lambda b: b["results"][1].update(latency_ms_p50=float("nan")),
            r"results\[1\] \(m.fp32.b1.onnx\): latency_ms_p50",
        ),
        (lambda b: b["results"][1].update(latency_ms_p50=-1.0), "must be a positive finite number, got -1.0"),
        (lambda b: b["results"][1].update(latency_ms_p50=0), "must be a positive finite number, got 0"),
        (lambda b: b["results"][1].update(latency_ms_p50="0.001"), "must be a positive finite number"),
        (lambda b: b["results"][1].update(file_sha256=5), "file_sha256 must be a string"),
        (lambda b: b.update(environment=[]), "'environment' must be an object"),
        (lambda b: b.update(settings=[1]), "'settings' must be an object"),
    ],
)
def test_select_refuses_a_bench_result_of_another_shape_and_never_chooses_a_nan(tmp_path, edit, why):
    """A hand-edited or truncated bench result is one error naming the row, before anything is
    chosen: a NaN, infinite, zero or negative p50 was chosen as the fastest (min() over NaN)."""
    from lenet_edge.quantize.select import select
    from lenet_edge.runtime.errors import ConfigError

    d = tmp_path / "onnx"
    d.mkdir()
    rows = []
    for name, us in (("m.fp32.opt.onnx", 30), ("m.fp32.b1.onnx", 20)):
        (d / name).write_bytes(b"x")
        rows.append(bench_row(name, "fp32." + name.split(".")[2], us, "onnxruntime"))
    bench = {"results": rows, "environment": {}}
    assert select(json.loads(json.dumps(bench)), d, pair_rounds=0)["choices"]
    edit(bench)
    with pytest.raises(ConfigError, match=why):
        select(bench, d, pair_rounds=0, source="b.json")


def test_select_names_a_quantize_record_it_cannot_read(tmp_path):
    from lenet_edge.quantize.select import select
    from lenet_edge.runtime.errors import ConfigError

    d = tmp_path / "onnx"
    d.mkdir()
    (d / "m.int8.qdq.onnx").write_bytes(b"x")
    rec = {"model": "m", "accuracy_drop_pp": "x", "agreement_with_fp32": 0.999}
    (d / "m.int8.qdq.quantize.json").write_text(json.dumps(rec))
    bench = {"results": [bench_row("m.int8.qdq.onnx", "int8.qdq", 10, "onnxruntime")], "environment": {}}
    with pytest.raises(ConfigError, match="m.int8.qdq.quantize.json: not a quantize record select can read"):
        select(bench, d, pair_rounds=0)


def test_search_counts_a_source_graph_once(tmp_path):
    """`make optimize` writes s2d4 for every model; where its 4x4 pass does not match (lenet_stride)
    the graph is s2d's, metadata aside: the search leaves it out and says which it equals; a
    missing source is one error naming the file."""
    import onnx
    from onnx import TensorProto, helper

    from lenet_edge.quantize.search import _distinct_sources
    from lenet_edge.runtime.errors import LenetEdgeError

    def model(op, variant):
        g = helper.make_graph(
            [helper.make_node(op, ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        )
        m = helper.make_model(g)
        helper.set_model_props(m, {"variant": variant})
        return m

    for variant, op in ((None, "Relu"), ("s2d", "Sigmoid"), ("s2d4", "Sigmoid")):
        onnx.save(model(op, variant or "export"), tmp_path / f"m.fp32.{variant + '.' if variant else ''}onnx")
    assert _distinct_sources(tmp_path, "m") == (["export", "s2d"], {"s2d4": "s2d"})
    onnx.save(model("Tanh", "s2d4"), tmp_path / "m.fp32.s2d4.onnx")
    assert _distinct_sources(tmp_path, "m") == (["export", "s2d", "s2d4"], {})
    (tmp_path / "m.fp32.s2d4.onnx").unlink()
    with pytest.raises(LenetEdgeError, match=r"m\.fp32\.s2d4\.onnx: missing; run `make optimize`"):
        _distinct_sources(tmp_path, "m")
