"""The ONNX Runtime target passes (optimize.ort_int8) on small synthetic INT8 graphs: random weights,
odd shapes, batch > 1. Each rewrite is exact in integers, so the rewritten graph must give the same
logits as the QDQ model it came from; a graph outside a pass's preconditions is left as it was."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.unit
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _fp32_model(h, w, k, pad, cin=1, norm=True, seed=0, pool=True):
    """[normalise] -> Conv(pad) -> Relu -> MaxPool 2x2 -> Conv 3x3 -> Relu -> Flatten -> MatMul -> Add."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h1, w1 = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    if pool:
        h1, w1 = h1 // 2, w1 // 2
    h2, w2 = h1 - 2, w1 - 2
    inits = {
        "a": np.array(-127.5, np.float32),
        "s": np.array(1 / 127.5, np.float32),
        "w1": rng.normal(size=(6, cin, k, k)).astype(np.float32) * 0.3,
        "b1": rng.normal(size=6).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(5, 6, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.normal(size=5).astype(np.float32) * 0.1,
        "fw": rng.normal(size=(5 * h2 * w2, 7)).astype(np.float32) * 0.1,
        "fb": rng.normal(size=7).astype(np.float32) * 0.1,
    }
    x = "x"
    nodes = []
    if norm:
        nodes += [helper.make_node("Add", ["x", "a"], ["xa"]), helper.make_node("Mul", ["xa", "s"], ["xn"])]
        x = "xn"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["c1"], kernel_shape=[k, k], pads=[pad] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
    ]
    last = "r1"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
        last = "p1"
    nodes += [
        helper.make_node("Conv", [last, "w2", "b2"], ["c2"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("MatMul", ["f", "fw"], ["m"]),
        helper.make_node("Add", ["m", "fb"], ["y"]),
    ]
    used = {i for n in nodes for i in n.input}
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])],
        initializer=[numpy_helper.from_array(v, n) for n, v in inits.items() if n in used],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    x = rng.integers(0, 256, size=(64, cin, h, w)).astype(np.float32)
    return m, x


def _qdq(model, x, tmp_path, passes, per_channel=True):
    """FP32 lenet-edge passes, then ORT static QDQ quantization (u8 activations, s8 weights)."""
    from lenet_edge.optimize.stage import apply_passes
    from tests.conftest import ort_static_qdq

    if passes:
        model, _ = apply_passes(model, passes)
    return ort_static_qdq(model, x, tmp_path, per_channel)


def _run(model_or_path, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    s = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    feed = np.rint(x).astype(np.uint8) if inp.type == "tensor(uint8)" else x
    return s.run(None, {inp.name: feed})[0]


def _rewrite(qdq_path, x, tmp_path):
    from lenet_edge.optimize.ort_int8 import DEFAULT_PASSES, apply_ort_passes, ort_level3

    level3 = ort_level3(qdq_path, tmp_path / "level3.onnx")
    new, log = apply_ort_passes(level3, DEFAULT_PASSES, x[:2])
    ref, got = _run(str(qdq_path), x), _run(new, x)
    assert ref.shape == got.shape and np.array_equal(ref, got), np.abs(ref - got).max()
    return new, {e["pass"]: e for e in log}


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _per_call_ops(model):
    from lenet_edge.optimize.ort_int8 import per_call_ops

    return per_call_ops(model)


def _const(model, name):
    """An initializer, or what the constant nodes of initializers that pack-padding and
    narrow-constants store (Pad, Tile, Slice, Cast …) compute, evaluated by onnx's reference."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    init = {t.name for t in model.graph.initializer}
    needed, todo, nodes = set(), [name], []
    while todo:  # the nodes `name` depends on, back to the initializers
        t = todo.pop()
        if t in init or t in needed:
            continue
        needed.add(t)
        node = next(n for n in model.graph.node if t in n.output)
        nodes.append(node)
        todo += [i for i in node.input if i]
    order = [n for n in model.graph.node if any(n is m for m in nodes)]  # graph order is topological
    graph = helper.make_graph(
        order, "const", [], [helper.make_value_info(name, helper.TypeProto())], list(model.graph.initializer)
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    return ReferenceEvaluator(sub).run(None, {})[0]


def _weight(model, node):
    return _const(model, node.input[3])


def _loaded_ops(model, tmp_path):
    """The ops onnxruntime keeps once it has loaded `model` (constant nodes of initializers folded)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(str(tmp_path / "loaded.onnx")))


def _qconv(inputs, output, **attrs):
    """An NHWC com.microsoft QLinearConv node."""
    from onnx import helper

    return helper.make_node("QLinearConv", inputs, [output], domain="com.microsoft", channels_last=1, **attrs)


def _nhwc_model(nodes, inits, in_hwc, out_hwc):
    """A uint8 NHWC graph x -> ... -> y with com.microsoft ops, from nodes and named arrays."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", *in_hwc])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", *out_hwc])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    m.ir_version = 8
    return m


@pytest.mark.parametrize("per_channel", [True, False])
def test_pad_channels_without_pool_and_per_tensor_weights(per_channel, tmp_path):
    """Conv(6 channels) -> Conv: the first conv gains two output channels that add nothing, the
    second conv two input channels of weight zero point; same logits, per-tensor or per-channel."""
    m, x = _fp32_model(11, 9, 3, 1, seed=7, pool=False)
    new, log = _rewrite(_qdq(m, x, tmp_path, ("fold-normalisation",), per_channel), x, tmp_path)
    assert log["nhwc-pad-channels"]["applied"], log
    w1, w2 = (_weight(new, n) for n in new.graph.node if n.op_type == "QLinearConv")
    assert w1.shape[0] == 8 and w2.shape[1] == 8
    assert not w1[6:].any() and not w2[:, 6:].any()  # symmetric int8 weights: zero point 0


def test_pad_channels_refuses_a_multiple_of_eight(tmp_path):
    """Channels already a multiple of 8: nothing to pad, the pass says so and the graph is kept."""
    from onnx import numpy_helper

    m, x = _fp32_model(10, 10, 3, 1, seed=2, pool=False)
    rng = np.random.default_rng(1)
    inits = {t.name: t for t in m.graph.initializer}
    for name, shape in (("w1", (8, 1, 3, 3)), ("b1", (8,)), ("w2", (5, 8, 3, 3))):
        inits[name].CopyFrom(numpy_helper.from_array((rng.normal(size=shape) * 0.3).astype(np.float32), name))
    new, log = _rewrite(_qdq(m, x, tmp_path, ("fold-normalisation",)), x, tmp_path)
    assert not log["nhwc-pad-channels"]["applied"]
    assert "multiple of 8" in log["nhwc-pad-channels"]["not_applied"]
    assert [_weight(new, n).shape[:2] for n in new.graph.node if n.op_type == "QLinearConv"] == [
        (8, 1),
        (5, 8),
    ]


@pytest.mark.parametrize(
    "h,w,k,pad,cin",
    [(28, 28, 5, 2, 1), (12, 16, 3, 1, 1), (14, 10, 5, 2, 1), (9, 11, 4, 0, 1), (12, 10, 5, 2, 2)],
)
def test_s2d_pool_graph_becomes_integer_nhwc_with_identical_logits(h, w, k, pad, cin, tmp_path):
    m, x = _fp32_model(h, w, k, pad, cin=cin, seed=h + k)
    new, log = _rewrite(_qdq(m, x, tmp_path, ("fold-normalisation", "s2d-conv-pool")), x, tmp_path)
    assert all(e["applied"] for k, e in log.items() if k not in ("fold-weight-dq", "pack-padding")), log
    assert new.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    ops = _per_call_ops(new)
    assert "Transpose" in ops and ops.count("Transpose") == 1  # only the space-to-depth reorder is left
    # ... and it runs in float between two exact Casts (ORT's uint8 Transpose is slow on 2+ threads)
    at = ops.index("Transpose")
    assert ops[at - 1] == "Cast" and ops[at + 1] == "Cast", ops
    assert not {"QuantizeLinear", "SpaceToDepth", "MaxPool"} & set(ops), ops
    # whole 2x2-block pads fold into the conv (zero point + bias); others stay one uint8 Pad
    assert ("Pad" in ops) == bool(pad % 2 or h % 2 or w % 2)
    assert ops.count("NhwcMaxPool") == 1
    # the 6 channels of each pool group (and of the second conv's input) padded to 8
    assert log["nhwc-pad-channels"]["applied"]
    assert [_weight(new, n).shape[:2] for n in new.graph.node if n.op_type == "QLinearConv"] == [
        (4 * 8, 4 * cin),
        (5, 8),
    ]


def _lenet_features_fp32(h, w, k, pad, k2, seed=0):
    """normalise -> Conv(pad) -> Relu -> MaxPool 2x2 -> Conv2 -> MaxPool 2x2 -> Flatten -> MatMul -> Add."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h2, w2 = ((h + 2 * pad - k + 1) // 2 - k2 + 1) // 2, ((w + 2 * pad - k + 1) // 2 - k2 + 1) // 2
    inits = {
        "a": np.array(-127.5, np.float32),
        "s": np.array(1 / 127.5, np.float32),
        "w1": rng.normal(size=(6, 1, k, k)).astype(np.float32) * 0.3,
        "b1": rng.normal(size=6).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(5, 6, k2, k2)).astype(np.float32) * 0.3,
        "b2": rng.normal(size=5).astype(np.float32) * 0.1,
        "fw": rng.normal(size=(5 * h2 * w2, 7)).astype(np.float32) * 0.1,
        "fb": rng.normal(size=7).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Add", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "s"], ["xn"]),
        helper.make_node("Conv", ["xn", "w1", "b1"], ["c1"], kernel_shape=[k, k], pads=[pad] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[k2, k2]),
        helper.make_node("MaxPool", ["c2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("MatMul", ["f", "fw"], ["m"]),
        helper.make_node("Add", ["m", "fb"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])],
        initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m, rng.integers(0, 256, size=(64, 1, h, w)).astype(np.float32)


@pytest.mark.parametrize("h,w,k,pad,k2", [(28, 28, 5, 2, 5), (20, 28, 9, 4, 3)])
def test_s2d4_graph_becomes_integer_nhwc_with_identical_logits(h, w, k, pad, k2, tmp_path):
    """The 4x4 form (optimize s2d4): both phase maxes become NhwcMaxPool over channel groups (the
    second one, with a flatten after it, through a Transpose to NCHW that nhwc-flatten-gemm folds
    into the weights); the input reorder is the only Transpose left, and a pad that is not whole
    4x4 blocks stays one uint8 Pad, which uint8-transpose reads through."""
    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    m, x = _lenet_features_fp32(h, w, k, pad, k2, seed=h + k2)
    passes = ("fold-normalisation", "s2d4-conv-pool-conv-pool")
    new, log = _rewrite(_qdq(m, x, tmp_path, passes), x, tmp_path)
    assert log["nhwc-group-max"]["applied"] and log["nhwc-flatten-gemm"]["applied"], log
    ops = _per_call_ops(new)
    assert ops.count("NhwcMaxPool") == 2 and ops.count("QLinearConv") == 2, ops
    assert ops.count("Transpose") == 1 and not {"QuantizeLinear", "SpaceToDepth", "MaxPool"} & set(ops), ops
    assert ("Pad" in ops) == bool(pad % 4)
    # both convs' weights are phases of one kernel: stored as that kernel (the FP32 model's own
    # shape), rebuilt by constant nodes onnxruntime folds at load (identical logits, above)
    assert log["pack-padding"]["applied"], log
    stored = {tuple(t.dims) for t in new.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert {(6, 1, k, k), (5, 6, k2, k2)} <= stored, stored
    assert not {"Tile", "Gather", "Slice"} & set(_loaded_ops(new, tmp_path))
    one, log1 = apply_ort_passes(new, ("uint8-transpose",), x[:2])
    assert log1[0]["applied"] and "Cast" not in _per_call_ops(one)
    assert np.array_equal(_run(new, x), _run(one, x))


def test_uint8_transpose_drops_the_cast_pair_and_refuses_a_float_transpose(tmp_path):
    """The one-thread pass: the input reorder's Cast(float) -> Transpose -> Cast(uint8) becomes one
    uint8 Transpose, identical logits; a graph without that chain (run twice) is left as it was."""
    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    m, x = _fp32_model(12, 10, 5, 2, cin=2, seed=4)
    new, _ = _rewrite(_qdq(m, x, tmp_path, ("fold-normalisation", "s2d-conv-pool")), x, tmp_path)
    one, log = apply_ort_passes(new, ("uint8-transpose",), x[:2])
    assert log[0]["applied"], log
    ops = _per_call_ops(one)
    assert ops.count("Transpose") == 1 and "Cast" not in ops, ops
    assert np.array_equal(_run(new, x), _run(one, x))
    same, log = apply_ort_passes(one, ("uint8-transpose",), x[:2])
    assert not log[0]["applied"] and "Cast(uint8)" in log[0]["not_applied"] and same == one


def test_graph_without_s2d_or_pool_keeps_what_does_not_match(tmp_path):
    """Plain conv (no space-to-depth, no pool): the input and flatten passes apply, the group max
    has nothing to match and says so; logits stay identical."""
    m, x = _fp32_model(10, 12, 3, 1, seed=3, pool=False)
    new, log = _rewrite(_qdq(m, x, tmp_path, ("fold-normalisation",)), x, tmp_path)
    assert log["uint8-input"]["applied"] and log["nhwc-flatten-gemm"]["applied"]
    assert not log["nhwc-group-max"]["applied"] and "no NHWC" in log["nhwc-group-max"]["not_applied"]
    assert "Pad" not in _ops(new)  # the constant pad folded into the conv's zero point and bias


def test_input_with_a_scale_is_refused_and_left_float(tmp_path):
    """Normalisation not folded: the input is quantized for an Add, not for an NHWC conv, so
    uint8-input must refuse with its reason and the graph keep its float input."""
    m, x = _fp32_model(12, 12, 3, 1, seed=5)
    new, log = _rewrite(_qdq(m, x, tmp_path, ()), x, tmp_path)
    assert not log["uint8-input"]["applied"] and "NHWC" in log["uint8-input"]["not_applied"]
    assert new.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_pad_fold_is_exact_at_the_border():
    """The pad-to-zero-point fold alone: padding with v == zero point v plus (v - zp) * sum(w) bias."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wq = rng.integers(-60, 60, size=(3, 2, 3, 3)).astype(np.int8)
    bias = rng.integers(-500, 500, size=3).astype(np.int32)
    x = rng.integers(0, 256, size=(2, 5, 7, 2)).astype(np.uint8)  # NHWC

    def conv(x_in, zp, b, pads):
        inits = {
            "xs": np.array(1.0, np.float32),
            "xz": np.array(zp, np.uint8),
            "w": wq,
            "ws": np.full(3, 0.01, np.float32),
            "wz": np.zeros(3, np.int8),
            "ys": np.array(2.0, np.float32),
            "yz": np.array(7, np.uint8),
            "b": b,
        }
        node = _qconv(
            ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], "y", pads=pads, kernel_shape=[3, 3]
        )
        g = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x_in.shape))],
            [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
            [numpy_helper.from_array(v, k) for k, v in inits.items()],
        )
        m = helper.make_model(
            g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
        )
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"x": x_in})[0]

    v = 128
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=v)
    ref = conv(padded, 0, bias, [0, 0, 0, 0])
    folded = conv(x, v, (bias + v * wq.astype(np.int64).reshape(3, -1).sum(1)).astype(np.int32), [1, 1, 1, 1])
    assert np.array_equal(ref, folded)


def test_pad_channels_through_two_reshapes_and_a_pool_keeps_outputs():
    """Hand-built NHWC integer graph: conv (2 groups x 6 channels, per-channel weights) -> Reshape ->
    Reshape (groups into W) -> NhwcMaxPool over the groups -> conv. Every Reshape's last axis is
    rescaled (12 -> 16, 6 -> 8) and the outputs stay identical, batch 3."""
    from onnx import helper, numpy_helper

    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    rng = np.random.default_rng(4)
    n, h, w, cin = 3, 5, 4, 3
    inits = {
        "xs": np.array(0.5, np.float32),
        "xz": np.array(3, np.uint8),
        "w1": rng.integers(-50, 50, size=(12, cin, 3, 3)).astype(np.int8),
        "ws1": rng.uniform(0.005, 0.02, size=12).astype(np.float32),
        "wz1": np.zeros(12, np.int8),
        "ys1": np.array(0.7, np.float32),
        "yz1": np.array(5, np.uint8),
        "b1": rng.integers(-300, 300, size=12).astype(np.int32),
        "s1": np.array([-1, h * w, 12], np.int64),
        "s2": np.array([-1, h, w * 2, 6], np.int64),
        "w2": rng.integers(-50, 50, size=(5, 6, 3, 3)).astype(np.int8),
        "ws2": np.array(0.01, np.float32),
        "wz2": np.array(0, np.int8),
        "ys2": np.array(0.9, np.float32),
        "yz2": np.array(9, np.uint8),
    }
    ms = "com.microsoft"
    nodes = [
        _qconv(["x", "xs", "xz", "w1", "ws1", "wz1", "ys1", "yz1", "b1"], "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c1", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["r2"]),
        helper.make_node("NhwcMaxPool", ["r2"], ["p"], domain=ms, kernel_shape=[1, 2], strides=[1, 2]),
        _qconv(["p", "ys1", "yz1", "w2", "ws2", "wz2", "ys2", "yz2"], "y"),
    ]
    m = _nhwc_model(nodes, inits, (h, w, cin), (h - 2, w - 2, 5))
    x = rng.integers(0, 256, size=(n, h, w, cin)).astype(np.uint8)
    new, log = apply_ort_passes(m, ("nhwc-pad-channels",), x[:1].astype(np.float32))
    assert log[0]["applied"], log
    ref, got = _run(m, x), _run(new, x)
    assert ref.shape == (n, h - 2, w - 2, 5) and np.array_equal(ref, got)
    shapes = [
        numpy_helper.to_array(t).tolist()
        for t in new.graph.initializer
        if t.name in {nd.input[1] for nd in new.graph.node if nd.op_type == "Reshape"}
    ]
    assert sorted(shapes) == sorted([[-1, h * w, 16], [-1, h, w * 2, 8]])
    assert _weight(new, new.graph.node[0]).shape[0] == 16 and _weight(new, new.graph.node[-1]).shape[1] == 8


def test_two_channel_input_without_space_to_depth_reorders_in_float(tmp_path):
    """A 2-channel uint8 input going straight to an NHWC conv (no space-to-depth): the NCHW -> NHWC
    Transpose runs in float between two exact Casts, logits identical (batch 64)."""
    m, x = _fp32_model(10, 12, 3, 1, cin=2, seed=9, pool=False)
    new, log = _rewrite(_qdq(m, x, tmp_path, ("fold-normalisation",)), x, tmp_path)
    assert log["uint8-input"]["applied"], log
    ops = _ops(new)
    at = ops.index("Transpose")
    assert ops[at - 1 : at + 2] == ["Cast", "Transpose", "Cast"] and ops.count("Transpose") == 1, ops


def _weight_only_graph(zero_point=0):
    """uint8 NHWC [N,2,3,4] -> Transpose to NCHW -> flatten -> DequantizeLinear (per-tensor) ->
    Gemm whose weights are DequantizeLinear(int8, per output column) -> Relu -> Gemm(transB=1,
    weights per row) -> y: the weight-only FC layers of a `weight_only` recipe."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    inits = {
        "shape": np.array([-1, 24], np.int64),
        "xs": np.array(0.1, np.float32),
        "xz": np.array(3, np.uint8),
        "w1q": rng.integers(-127, 128, size=(24, 5)).astype(np.int8),
        "w1s": rng.uniform(0.001, 0.01, size=5).astype(np.float32),
        "w1z": np.full(5, zero_point, np.int8),
        "b1": rng.normal(size=5).astype(np.float32),
        "w2q": rng.integers(-127, 128, size=(3, 5)).astype(np.int8),
        "w2s": rng.uniform(0.001, 0.01, size=3).astype(np.float32),
        "w2z": np.zeros(3, np.int8),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("DequantizeLinear", ["f", "xs", "xz"], ["fd"]),
        helper.make_node("DequantizeLinear", ["w1q", "w1s", "w1z"], ["w1"], axis=1),
        helper.make_node("Gemm", ["fd", "w1", "b1"], ["g1"]),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("DequantizeLinear", ["w2q", "w2s", "w2z"], ["w2"], axis=0),
        helper.make_node("Gemm", ["r1", "w2"], ["y"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m, rng.integers(0, 256, size=(5, 2, 3, 4)).astype(np.uint8)


def test_weight_only_layers_lose_the_transpose_and_their_per_call_dequantize():
    """Weight-only FCs: the flatten goes NHWC through the per-tensor activation DequantizeLinear
    (weight rows permuted in int8), and each weight DequantizeLinear becomes Cast * scale, which
    onnxruntime folds at load; the file keeps int8 weights, outputs equal up to float rounding."""
    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    m, x = _weight_only_graph()
    new, log = apply_ort_passes(m, ("nhwc-flatten-gemm", "fold-weight-dq"), x[:2])
    assert all(e["applied"] for e in log), log
    ops = _ops(new)
    assert "Transpose" not in ops and ops.count("Cast") == 2 and ops.count("Mul") == 2
    assert ops.count("DequantizeLinear") == 1  # the activation's only
    kinds = {t.data_type for t in new.graph.initializer if len(t.dims) == 2 and min(t.dims) > 1}
    assert kinds == {onnx.TensorProto.INT8}  # no float weight matrix in the file
    ref, got = _run(m, x), _run(new, x)
    assert ref.shape == got.shape == (5, 3) and np.allclose(ref, got, rtol=1e-5, atol=1e-5)


def test_fold_weight_dq_refuses_a_weight_with_a_zero_point():
    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    m, x = _weight_only_graph(zero_point=2)
    new, log = apply_ort_passes(m, ("fold-weight-dq",), x[:2])
    # the first weight has zero point 2 and stays; the second (zero point 0) folds
    assert log[0]["applied"] and _ops(new).count("DequantizeLinear") == 2
    assert np.allclose(_run(m, x), _run(new, x), rtol=1e-5, atol=1e-5)
    m2, _ = _weight_only_graph(zero_point=2)
    del m2.graph.node[6:]  # only the zero-point weight left
    m2.graph.output[0].name = "r1"
    m2.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    _, log2 = apply_ort_passes(m2, ("fold-weight-dq",), x[:2])
    assert not log2[0]["applied"] and "zero point 0" in log2[0]["not_applied"]


def test_trailing_slab_finds_padding_per_group():
    from lenet_edge.optimize.ort_int8 import _trailing_slab

    a = np.arange(1, 1 + 4 * 8 * 3).reshape(4, 8, 3).astype(np.int8)
    a[:, 6:] = 0  # 4 groups of 8 channels, the last 2 of each zero
    assert _trailing_slab(a.reshape(32, 3)) == ((4, 8, 3), 1, 2)
    assert _trailing_slab(np.ones((3, 5), np.int32)) == ((3, 5), 1, 4)  # keeps one entry per row
    assert _trailing_slab(np.arange(12, dtype=np.int8).reshape(3, 4)) is None


def test_pack_padding_stores_padded_weights_compactly_and_onnxruntime_folds_it(tmp_path):
    """An NHWC QLinearConv whose weights and bias are padded per group of 8 output channels (what
    nhwc-pad-channels leaves): the file stores them without the padding behind a constant Pad and
    Reshape, is smaller, gives identical outputs (batch 3), and onnxruntime's load-time graph has
    no Pad or Reshape left (folded, so no per-call cost)."""
    from onnx import numpy_helper

    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    rng = np.random.default_rng(5)
    n, h, w, cin = 3, 5, 4, 8
    wt = rng.integers(-60, 60, size=(4, 8, cin, 3, 3)).astype(np.int8)
    wt[:, 6:] = 0
    bias = rng.integers(-300, 300, size=(4, 8)).astype(np.int32)
    bias[:, 6:] = 0
    inits = {
        "xs": np.array(0.5, np.float32),
        "xz": np.array(3, np.uint8),
        "w": wt.reshape(32, cin, 3, 3),
        "ws": np.array(0.01, np.float32),
        "wz": np.array(0, np.int8),
        "ys": np.array(0.7, np.float32),
        "yz": np.array(5, np.uint8),
        "b": bias.reshape(32),
    }
    conv = _qconv(["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], "y")
    m = _nhwc_model([conv], inits, (h, w, cin), (h - 2, w - 2, 32))
    x = rng.integers(0, 256, size=(n, h, w, cin)).astype(np.uint8)
    new, log = apply_ort_passes(m, ("pack-padding",), x[:1].astype(np.float32))
    assert log[0]["applied"], log
    assert new.ByteSize() < m.ByteSize()
    assert np.array_equal(_run(m, x), _run(new, x))
    stored = {t.name: numpy_helper.to_array(t).shape for t in new.graph.initializer}
    assert (4, 6, cin, 3, 3) in stored.values() and "w" not in stored
    assert np.array_equal(
        _weight(new, next(n for n in new.graph.node if n.op_type == "QLinearConv")), inits["w"]
    )
    assert _loaded_ops(new, tmp_path) == ["QLinearConv"]
    # nothing padded (or too little to pay for a Pad node): left as it was, saying why
    m.graph.initializer[2].CopyFrom(
        numpy_helper.from_array(rng.integers(1, 9, (32, cin, 3, 3)).astype(np.int8), "w")
    )
    m.graph.initializer[7].CopyFrom(numpy_helper.from_array(np.ones(32, np.int32), "b"))
    same, log = apply_ort_passes(m, ("pack-padding",), x[:1].astype(np.float32))
    assert not log[0]["applied"] and "equal values" in log[0]["not_applied"] and same == m


def test_pack_padding_crops_the_zero_border_of_a_space_to_depth_kernel(tmp_path):
    """A 5x5 stride-2 conv folded onto a 2x2 space-to-depth input is a 3x3 conv over 4x6 channels
    whose unfolded 6x6 kernel has a zero last row and column: stored as the 5x5 kernel behind Pad ->
    Reshape -> Transpose -> Reshape (folded at load), identical outputs (batch 2)."""
    from onnx import numpy_helper

    from lenet_edge.optimize.ort_int8 import _s2d_unfold, apply_ort_passes

    rng = np.random.default_rng(3)
    k5 = rng.integers(-60, 60, size=(16, 6, 5, 5)).astype(np.int8)
    u = np.zeros((16, 6, 6, 6), np.int8)
    u[:, :, :5, :5] = k5
    w = u.reshape(16, 6, 3, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4).reshape(16, 24, 3, 3)
    assert np.array_equal(_s2d_unfold(w, 2), u)
    inits = {
        "xs": np.array(0.5, np.float32),
        "xz": np.array(3, np.uint8),
        "w": w,
        "ws": rng.uniform(0.005, 0.02, 16).astype(np.float32),
        "wz": np.array(0, np.int8),
        "ys": np.array(0.7, np.float32),
        "yz": np.array(5, np.uint8),
    }
    conv = _qconv(["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], "y")
    m = _nhwc_model([conv], inits, (7, 6, 24), (5, 4, 16))
    x = rng.integers(0, 256, size=(2, 7, 6, 24)).astype(np.uint8)
    new, log = apply_ort_passes(m, ("pack-padding",), x[:1].astype(np.float32))
    assert log[0]["applied"], log
    assert new.ByteSize() < m.ByteSize() - 500  # 1,056 zeros gone for ~500 B of nodes (long names here)
    stored = [numpy_helper.to_array(t) for t in new.graph.initializer]
    assert any(a.shape == (16, 6, 5, 5) and np.array_equal(a, k5) for a in stored)
    assert np.array_equal(_run(m, x), _run(new, x))
    assert _loaded_ops(new, tmp_path) == ["QLinearConv"]


def _conv_gemm_model(rng, bias_hi, zp_cols):
    """uint8 NHWC x -> QLinearConv (per-channel weights, zero point per channel) -> flatten ->
    QGemm (per-column weights): int32 biases drawn below `bias_hi`, weight zero points `zp_cols`."""
    from onnx import helper

    n_out, cols = 16, 64
    inits = {
        "xs": np.array(0.5, np.float32),
        "xz": np.array(3, np.uint8),
        "w": rng.integers(-60, 60, size=(n_out, 2, 3, 3)).astype(np.int8),
        "ws": rng.uniform(0.005, 0.02, n_out).astype(np.float32),
        "wz": np.zeros(n_out, np.int8),
        "ys": np.array(0.7, np.float32),
        "yz": np.array(5, np.uint8),
        "b": rng.integers(-bias_hi, bias_hi, n_out).astype(np.int32),
        "shape": np.array([-1, 2 * 2 * n_out], np.int64),
        "g": rng.integers(-60, 60, size=(2 * 2 * n_out, cols)).astype(np.int8),
        "gs": rng.uniform(0.005, 0.02, cols).astype(np.float32),
        "gz": np.asarray(zp_cols, np.int8),
        "gb": rng.integers(-bias_hi, bias_hi, cols).astype(np.int32),
        "zs": np.array(0.9, np.float32),
        "zz": np.array(7, np.uint8),
    }
    ms = "com.microsoft"
    nodes = [
        _qconv(["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], "c"),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("QGemm", ["f", "ys", "yz", "g", "gs", "gz", "gb", "zs", "zz"], ["y"], domain=ms),
    ]
    m = _nhwc_model(nodes, inits, (4, 4, 2), (cols,))
    m.graph.output[0].type.tensor_type.shape.ClearField("dim")
    return m, inits


def test_narrow_constants_stores_biases_and_zero_points_smaller_and_onnxruntime_folds_them(tmp_path):
    """int32 biases that fit int16 go behind a Cast where that saves bytes, a per-channel zero point of equal values becomes
    a scalar (QLinearConv) or an Expand of one (QGemm, which wants one per column), copies merge:
    smaller, identical outputs (batch 3), and onnxruntime's load-time graph is the bare kernels."""
    from onnx import numpy_helper

    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    rng = np.random.default_rng(9)
    m, inits = _conv_gemm_model(rng, 3000, np.zeros(64))
    x = rng.integers(0, 256, size=(3, 4, 4, 2)).astype(np.uint8)
    new, log = apply_ort_passes(m, ("narrow-constants",), x[:1].astype(np.float32))
    assert log[0]["applied"], log
    assert new.ByteSize() < m.ByteSize()
    assert np.array_equal(_run(m, x), _run(new, x))
    stored = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    made_by = {o: n for n in new.graph.node for o in n.output}
    conv, gemm = (n for n in new.graph.node if n.op_type in ("QLinearConv", "QGemm"))
    bias = gemm.input[6]
    assert made_by[bias].op_type == "Cast" and stored[made_by[bias].input[0]].dtype == np.int16
    # 16 values: int16 saves 32 B, less than a Cast node costs; each change is kept only if it pays
    assert stored[conv.input[8]].dtype == np.int32
    assert made_by[gemm.input[5]].op_type == "Expand"
    assert stored[conv.input[5]].shape == ()  # one zero point for every channel
    for node, k, name in ((conv, 8, "b"), (gemm, 6, "gb"), (gemm, 5, "gz")):
        assert (
            np.array_equal(_const(new, node.input[k]), inits[name])
            and _const(new, node.input[k]).dtype == inits[name].dtype
        )
    assert _loaded_ops(new, tmp_path) == ["QLinearConv", "Reshape", "QGemm"]


def test_narrow_constants_refuses_wide_biases_and_unequal_zero_points():
    """Biases that need 32 bits and zero points that differ per column: nothing to narrow, the pass
    says so and the graph is left as it was."""
    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    rng = np.random.default_rng(4)
    m, _ = _conv_gemm_model(rng, 2**20, np.arange(64) % 3)
    m.graph.initializer[4].CopyFrom(onnx.numpy_helper.from_array(np.array(0, np.int8), "wz"))
    x = rng.integers(0, 256, size=(1, 4, 4, 2)).astype(np.float32)
    same, log = apply_ort_passes(m, ("narrow-constants",), x)
    assert not log[0]["applied"] and "narrower type" in log[0]["not_applied"] and same == m


def test_logit_limit_exact_for_integer_graphs_wider_only_where_float_is_requantized():
    from onnx import helper

    from lenet_edge.optimize.ort_int8 import logit_limit

    def graph(*ops):
        return helper.make_model(
            helper.make_graph([helper.make_node(o, ["a"], ["b"]) for o in ops], "g", [], [])
        )

    integer = {"recipe": {"weight_only": False}}
    float_layers = {"recipe": {"weight_only": True, "fp32_layers": ["Gemm:1"]}}
    assert logit_limit(integer, graph("QuantizeLinear", "QLinearConv")) == 1e-5
    assert logit_limit(float_layers, graph("QGemm", "DequantizeLinear", "Gemm")) == 0.05
    assert logit_limit(float_layers, graph("Conv", "QuantizeLinear", "QLinearConv")) == 0.5


def test_size_profile_names_each_tensor_by_the_slot_it_reaches(tmp_path):
    """Every initializer gets the role of the input it reaches through the constant nodes that
    rebuild it (a Cast bias, an Expand zero point); the rows add up to the file size; a file that
    is not ONNX is one clear error."""
    from lenet_edge.optimize.ort_int8 import apply_ort_passes
    from lenet_edge.optimize.size import size_profile

    rng = np.random.default_rng(2)
    m, inits = _conv_gemm_model(rng, 3000, np.zeros(64))
    x = rng.integers(0, 256, size=(1, 4, 4, 2)).astype(np.float32)
    new, _ = apply_ort_passes(m, ("narrow-constants",), x)
    for model, name in ((m, "plain.onnx"), (new, "narrow.onnx")):
        path = tmp_path / name
        path.write_bytes(model.SerializeToString())
        p = size_profile(path, params=1000)
        assert sum(r["bytes"] for r in p["rows"].values()) == p["bytes"] == path.stat().st_size
        assert p["weight_entries"] == inits["w"].size + inits["g"].size
        assert p["bias_entries"] == inits["b"].size + inits["gb"].size
        assert p["rows"]["weights"]["tensor_bytes"] == p["weight_entries"]  # int8
        assert p["bytes_per_param"] == round(p["bytes"] / 1000, 4)
    # the QGemm's 64 as int16, the QLinearConv's 16 as int32 (a Cast would cost more than it saves)
    assert p["rows"]["biases"]["tensor_bytes"] == 2 * inits["gb"].size + 4 * inits["b"].size
    assert p["rows"]["zero points"]["tensor_bytes"] < 64
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    from lenet_edge.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="bad.onnx: not a readable ONNX model"):
        size_profile(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")  # protobuf parses it as an empty ModelProto
    with pytest.raises(ConfigError, match="empty.onnx: not an ONNX model"):
        size_profile(empty)


def test_size_cli_names_a_malformed_graph_and_a_bad_param_count(tmp_path):
    """Graphs the checker would refuse (tensor data shorter than its dims, a node without outputs,
    a 3,000-node layout chain) and a parameter count below 1: one error line each, naming the file."""
    from onnx import TensorProto, helper

    from lenet_edge.optimize.size import main
    from lenet_edge.runtime.errors import ConfigError

    def save(name, nodes, inits):
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=inits,
        )  # fmt: skip
        path = tmp_path / name
        path.write_bytes(helper.make_model(g).SerializeToString())
        return path

    short = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[784, 10], raw_data=b"\0" * 4)
    chain = [
        helper.make_node("Reshape", ["w" if i == 0 else f"r{i}", "s"], [f"r{i + 1}"]) for i in range(3000)
    ]
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    cases = {
        save(
            "short.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [short]
        ): "short.onnx: not an ONNX graph",
        save(
            "no_out.onnx", [helper.make_node("Conv", ["x", "w"], [])], [w]
        ): "no_out.onnx: not an ONNX graph",
        save("deep.onnx", chain, [w]): "deep.onnx: not an ONNX graph",
    }
    for path, why in cases.items():
        with pytest.raises(ConfigError, match=why):
            main([str(path)])
    with pytest.raises(ConfigError, match="--params -5: must be >= 1"):
        main([str(path), "--params", "-5"])


def test_narrow_constants_stores_float16_exact_scales_in_half_the_bytes(tmp_path):
    """A per-column scale whose every value float16 holds exactly (what quantize.scales makes) is
    stored as float16 behind a Cast to float: smaller, identical outputs, folded at load. A scale
    that float16 does not hold exactly, or holds only as NaN/inf, stays float32."""
    from onnx import numpy_helper

    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    rng = np.random.default_rng(5)
    m, inits = _conv_gemm_model(rng, 2**20, np.arange(64) % 3)  # nothing else to narrow
    exact = inits["gs"].astype(np.float16).astype(np.float32)
    for t in m.graph.initializer:
        if t.name == "gs":
            t.CopyFrom(numpy_helper.from_array(exact, "gs"))
    x = rng.integers(0, 256, size=(3, 4, 4, 2)).astype(np.uint8)
    new, log = apply_ort_passes(m, ("narrow-constants",), x[:1].astype(np.float32))
    assert log[0]["applied"], log
    assert new.ByteSize() < m.ByteSize()
    assert np.array_equal(_run(m, x), _run(new, x))
    stored = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    made_by = {o: n for n in new.graph.node for o in n.output}
    conv, gemm = (n for n in new.graph.node if n.op_type in ("QLinearConv", "QGemm"))
    cast = made_by[gemm.input[4]]
    assert cast.op_type == "Cast" and stored[cast.input[0]].dtype == np.float16
    assert (
        np.array_equal(_const(new, gemm.input[4]), exact) and _const(new, gemm.input[4]).dtype == np.float32
    )
    assert stored[conv.input[4]].dtype == np.float32  # random float32 scales: not exact in float16
    assert _loaded_ops(new, tmp_path) == ["QLinearConv", "Reshape", "QGemm"]
    for bad in (np.inf, np.nan):
        worse = exact.copy()
        worse[0] = bad
        for t in m.graph.initializer:
            if t.name == "gs":
                t.CopyFrom(numpy_helper.from_array(worse, "gs"))
        other, _ = apply_ort_passes(m, ("narrow-constants",), x[:1].astype(np.float32))
        gemm = next(n for n in other.graph.node if n.op_type == "QGemm")
        assert gemm.input[4] == "gs" and not any(n.op_type == "Cast" for n in other.graph.node)


def test_strip_defaults_drops_default_attributes_and_unused_opset_imports():
    """Attributes spelled out at their default (schema defaults, the documented all-ones strides and
    dilations, all-zero pads, a kernel_shape equal to W's) and opset imports no node uses go; what
    differs from the default stays; onnxruntime gives identical outputs (batch 3). A graph with
    nothing to strip is refused and left as it was."""
    from onnx import helper

    from lenet_edge.optimize.ort_int8 import apply_ort_passes

    rng = np.random.default_rng(6)
    m, _ = _conv_gemm_model(rng, 3000, np.zeros(64))
    conv, gemm = (n for n in m.graph.node if n.op_type in ("QLinearConv", "QGemm"))
    conv.attribute.extend(
        [
            helper.make_attribute("strides", [1, 1]),
            helper.make_attribute("dilations", [1, 1]),
            helper.make_attribute("pads", [0, 0, 0, 0]),
            helper.make_attribute("group", 1),
            helper.make_attribute("auto_pad", "NOTSET"),
            helper.make_attribute("kernel_shape", [3, 3]),
        ]
    )
    gemm.attribute.extend(
        [
            helper.make_attribute("alpha", 1.0),
            helper.make_attribute("transA", 0),
            helper.make_attribute("transB", 0),
        ]
    )
    m.opset_import.extend(
        [helper.make_opsetid("ai.onnx.ml", 3), helper.make_opsetid("com.microsoft.nchwc", 1)]
    )
    x = rng.integers(0, 256, size=(3, 4, 4, 2)).astype(np.uint8)
    new, log = apply_ort_passes(m, ("strip-defaults",), x[:1].astype(np.float32))
    assert log[0]["applied"], log
    conv, gemm = (n for n in new.graph.node if n.op_type in ("QLinearConv", "QGemm"))
    assert [a.name for a in conv.attribute] == ["channels_last"] and not gemm.attribute
    assert sorted(o.domain for o in new.opset_import) == ["", "com.microsoft"]
    assert np.array_equal(_run(m, x), _run(new, x))
    assert new.ByteSize() < m.ByteSize()
    # not defaults: stride 2 and padding 1 (a 4x4 input still gives 2x2 outputs) stay
    conv.attribute.extend(
        [helper.make_attribute("strides", [2, 2]), helper.make_attribute("pads", [1, 1, 1, 1])]
    )
    kept, log = apply_ort_passes(new, ("strip-defaults",), x[:1].astype(np.float32))
    assert not log[0]["applied"] and "no attribute at its default" in log[0]["not_applied"] and kept == new


@pytest.mark.parametrize("block,p", [(1, 2), (2, 2), (4, 4)])
def test_phase_kernel_finds_shifted_copies_in_any_order_and_refuses_others(block, p):
    """pack-padding's phase form: the weight of a conv whose output channels are P x P shifted
    copies of one kernel (over a space-to-depth input of any block) rebuilds exactly from that
    kernel and the phase order; a weight that is not (one entry changed) is not taken for one."""
    from lenet_edge.optimize.ort_int8 import _phase_kernel, _rebuild_phases, _s2d_unfold

    rng = np.random.default_rng(block * 10 + p)
    k = rng.integers(-127, 128, size=(3, 2, 5, 5)).astype(np.int8)
    kk = (5 + p - 1 + block - 1) // block  # blocked kernel covering every shift
    order = rng.permutation(p * p)
    w = _rebuild_phases(k, p, block, order, (0, 0), (p * p * 3, 2 * block * block, kk, kk))
    u = _s2d_unfold(w, block) if block > 1 else w
    assert np.count_nonzero(u) == p * p * np.count_nonzero(k)  # each phase is k, nothing else
    found = _phase_kernel(w)
    assert found is not None
    k2, p2, b2, order2, at = found
    assert np.array_equal(_rebuild_phases(k2, p2, b2, order2, at, w.shape), w) and k2.size == k.size
    bad = w.copy()
    bad[0, 0, 0, 0] ^= 1  # a bit of the first phase only
    assert _phase_kernel(bad) is None
