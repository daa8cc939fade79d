"""Each graph pass on small synthetic graphs: random weights, odd shapes, batch > 1; the rewritten
graph must compute the same function, and a graph outside a pass's preconditions must be left
untouched with the reason recorded."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.unit
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def _graph(nodes, inits, in_shape, out_shape):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[
            numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
            for k, v in inits.items()
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graphs as written
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _check(model, passes, x, expect_rewrites):
    from lenet_edge.optimize.stage import apply_passes

    new, report = apply_passes(model, passes)
    counts = {e["pass"]: e["rewrites"] for e in report}
    assert counts == expect_rewrites, report
    a, b = _run(model, x), _run(new, x)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max())), np.abs(a - b).max()
    return new, report


def _ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize(
    "cin,k,pad,hw", [(1, 5, 2, (28, 28)), (1, 3, 1, (10, 14)), (2, 5, 0, (13, 17)), (3, 3, 0, (9, 9))]
)
def test_fold_affine_into_conv(cin, k, pad, hw):
    rng = np.random.default_rng(cin * 100 + k)
    w, b = rng.normal(size=(4, cin, k, k)), rng.normal(size=4)
    from onnx import helper

    nodes = [
        helper.make_node("Add", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "s"], ["xn"]),
        helper.make_node("Conv", ["xn", "w", "b"], ["y"], kernel_shape=[k, k], pads=[pad] * 4),
    ]
    inits = {"a": np.array(-127.5), "s": np.array(1 / 127.5), "w": w, "b": b}
    oh, ow = hw[0] + 2 * pad - k + 1, hw[1] + 2 * pad - k + 1
    m = _graph(nodes, inits, [3, cin, *hw], [3, 4, oh, ow])
    x = rng.integers(0, 256, size=(3, cin, *hw)).astype(np.float32)
    new, _ = _check(m, ("fold-normalisation",), x, {"fold-normalisation": 1})
    assert _ops(new) == (["Pad", "Conv"] if pad else ["Conv"])


def test_fold_refuses_a_per_channel_affine():
    from onnx import helper

    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Add", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "s"], ["xn"]),
        helper.make_node("Conv", ["xn", "w", "b"], ["y"], kernel_shape=[3, 3]),
    ]
    inits = {
        "a": rng.normal(size=(1, 2, 1, 1)),
        "s": np.array(0.5),
        "w": rng.normal(size=(4, 2, 3, 3)),
        "b": np.zeros(4),
    }
    m = _graph(nodes, inits, [1, 2, 8, 8], [1, 4, 6, 6])
    x = rng.normal(size=(1, 2, 8, 8)).astype(np.float32)
    new, report = _check(m, ("fold-normalisation",), x, {"fold-normalisation": 0})
    assert "not scalar constants" in report[0]["not_applied"][0] and _ops(new) == _ops(m)


def _conv_relu_pool(cin, k, pad, hw, pool=(2, 2), batch=3, seed=0):
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], pads=[pad] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=list(pool), strides=list(pool)),
    ]
    inits = {"w": rng.normal(size=(6, cin, k, k)), "b": rng.normal(size=6)}
    oh, ow = (hw[0] + 2 * pad - k + 1) // pool[0], (hw[1] + 2 * pad - k + 1) // pool[1]
    m = _graph(nodes, inits, [batch, cin, *hw], [batch, 6, oh, ow])
    x = rng.integers(0, 256, size=(batch, cin, *hw)).astype(np.float32)
    return m, x


@pytest.mark.parametrize(
    "cin,k,pad,hw",
    [(1, 5, 2, (28, 28)), (1, 3, 1, (10, 6)), (2, 5, 0, (14, 18)), (1, 4, 0, (9, 11)), (1, 5, 2, (14, 30))],
)
def test_s2d_conv_pool_is_exact(cin, k, pad, hw):
    m, x = _conv_relu_pool(cin, k, pad, hw)
    new, _ = _check(m, ("s2d-conv-pool",), x, {"s2d-conv-pool": 1})
    assert "SpaceToDepth" in _ops(new)
    conv = next(n for n in new.graph.node if n.op_type == "Conv")
    w = next(i for i in new.graph.initializer if i.name == conv.input[1])
    assert list(w.dims) == [24, 4 * cin, (k + 2) // 2, (k + 2) // 2]


@pytest.mark.parametrize("cin,k,pad,hw", [(1, 5, 2, (28, 28)), (2, 5, 0, (14, 18)), (1, 4, 0, (9, 11))])
def test_s2d_conv_pool_d2s_is_exact(cin, k, pad, hw):
    """The NHWC form: phases back in place by DepthToSpace (DCR), then the original 2x2 pool."""
    m, x = _conv_relu_pool(cin, k, pad, hw, batch=2, seed=cin + k)
    new, _ = _check(m, ("s2d-conv-pool-d2s",), x, {"s2d-conv-pool-d2s": 1})
    assert [o for o in _ops(new) if o != "Pad"] == ["SpaceToDepth", "Conv", "Relu", "DepthToSpace", "MaxPool"]


def _flatten_fc(c, h, w, batch=3, bias_shape=None, seed=0, shape=(0, -1)):
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    inits = {
        "shape": np.array(shape, np.int64),
        "w": rng.normal(size=(c * h * w, 7)),
        "b": rng.normal(size=bias_shape or (7,)),
    }
    m = _graph(nodes, inits, [batch, c, h, w], [batch, 7])
    return m, rng.normal(size=(batch, c, h, w)).astype(np.float32)


@pytest.mark.parametrize("c,h,w,bias_shape", [(16, 5, 5, (7,)), (3, 2, 7, (1, 7)), (5, 1, 1, (7,))])
def test_flatten_nhwc_then_gemm_compute_the_same(c, h, w, bias_shape):
    m, x = _flatten_fc(c, h, w, bias_shape=bias_shape, seed=c)
    passes = ("flatten-nhwc", "matmul-add-to-gemm")
    new, _ = _check(m, passes, x, {"flatten-nhwc": 1, "matmul-add-to-gemm": 1})
    assert _ops(new) == ["Relu", "Transpose", "Reshape", "Gemm", "Relu"]
    gemm = next(n for n in new.graph.node if n.op_type == "Gemm")
    b = next(i for i in new.graph.initializer if i.name == gemm.input[2])
    assert list(b.dims) == [7]


def test_flatten_nhwc_and_gemm_refuse_and_leave_the_graph():
    m, x = _flatten_fc(1, 4, 6)  # one channel: the two flatten orders agree
    new, report = _check(m, ("flatten-nhwc",), x, {"flatten-nhwc": 0})
    assert "one channel" in report[0]["not_applied"][0] and _ops(new) == _ops(m)
    m, x = _flatten_fc(3, 2, 2, bias_shape=(3, 7), batch=3)  # a per-row bias is not a Gemm bias
    new, report = _check(m, ("matmul-add-to-gemm",), x, {"matmul-add-to-gemm": 0})
    assert "are not [K,M] and [M]" in report[0]["not_applied"][0] and _ops(new) == _ops(m)
    m, x = _flatten_fc(3, 2, 2, shape=(0, 3, -1))  # [N,3,4]: not a flatten into one axis
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3
    m.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 7
    m.graph.initializer[1].CopyFrom(
        __import__("onnx").numpy_helper.from_array(np.ones((4, 7), np.float32), "w")
    )
    new, report = _check(
        m, ("flatten-nhwc", "matmul-add-to-gemm"), x, {"flatten-nhwc": 0, "matmul-add-to-gemm": 0}
    )
    assert "not a flatten of C, H, W" in report[0]["not_applied"][0], report
    assert "input is not 2-D" in report[1]["not_applied"][0] and _ops(new) == _ops(m), report


@pytest.mark.parametrize(
    "kwargs,why",
    [
        ({"cin": 3, "k": 3, "pad": 1, "hw": (8, 8)}, "3 input channels"),
        ({"cin": 1, "k": 4, "pad": 1, "hw": (8, 8)}, "is not even"),
        ({"cin": 1, "k": 3, "pad": 1, "hw": (9, 9), "pool": (3, 3)}, "not a plain 2x2"),
    ],
)
def test_s2d_conv_pool_refuses_and_leaves_the_graph(kwargs, why):
    m, x = _conv_relu_pool(**kwargs)
    new, report = _check(m, ("s2d-conv-pool",), x, {"s2d-conv-pool": 0})
    assert any(why in r for r in report[0]["not_applied"]), report
    assert _ops(new) == _ops(m)


@pytest.mark.parametrize("k1,pad,k2,hw", [(5, 2, 5, (28, 28)), (3, 1, 3, (12, 10)), (5, 0, 3, (16, 20))])
def test_s2d_conv_then_stride2_conv_is_exact(k1, pad, k2, hw):
    from onnx import helper

    rng = np.random.default_rng(k1 + k2)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k1, k1], pads=[pad] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], kernel_shape=[k2, k2], strides=[2, 2]),
    ]
    inits = {
        "w": rng.normal(size=(6, 1, k1, k1)),
        "b": rng.normal(size=6),
        "w2": rng.normal(size=(5, 6, k2, k2)),
        "b2": rng.normal(size=5),
    }
    h1, w1 = hw[0] + 2 * pad - k1 + 1, hw[1] + 2 * pad - k1 + 1
    m = _graph(nodes, inits, [2, 1, *hw], [2, 5, (h1 - k2) // 2 + 1, (w1 - k2) // 2 + 1])
    x = rng.integers(0, 256, size=(2, 1, *hw)).astype(np.float32)
    new, _ = _check(m, ("s2d-conv-stride2",), x, {"s2d-conv-stride2": 1})
    assert _ops(new).count("Conv") == 2 and "SpaceToDepth" in _ops(new)


def _conv_pool_conv_pool(cin, k, pad, k2, hw, relu2=False, batch=3, seed=0, pool2=(2, 2), pad2=0):
    """Conv -> Relu -> MaxPool 2x2 -> Conv2 [-> Relu] -> MaxPool (LeNet's feature extractor)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], pads=[pad] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], kernel_shape=[k2, k2], pads=[pad2] * 4),
    ]
    last = "c2"
    if relu2:
        nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
        last = "r2"
    nodes.append(helper.make_node("MaxPool", [last], ["y"], kernel_shape=list(pool2), strides=list(pool2)))
    inits = {
        "w": rng.normal(size=(6, cin, k, k)),
        "b": rng.normal(size=6),
        "w2": rng.normal(size=(5, 6, k2, k2)),
        "b2": rng.normal(size=5),
    }
    h1, w1 = (hw[0] + 2 * pad - k + 1) // 2, (hw[1] + 2 * pad - k + 1) // 2
    h2, w2 = (h1 + 2 * pad2 - k2 + 1) // pool2[0], (w1 + 2 * pad2 - k2 + 1) // pool2[1]
    m = _graph(nodes, inits, [batch, cin, *hw], [batch, 5, h2, w2])
    x = rng.integers(0, 256, size=(batch, cin, *hw)).astype(np.float32)
    return m, x


@pytest.mark.parametrize(
    "cin,k,pad,k2,hw,relu2",
    [
        (1, 5, 2, 5, (28, 28), False),  # lenet_pool's shapes
        (1, 5, 2, 5, (28, 28), True),
        (2, 5, 0, 3, (20, 28), False),
        (1, 1, 0, 3, (8, 12), True),
        (1, 9, 4, 7, (36, 20), False),
    ],
)
def test_s2d4_conv_pool_conv_pool_is_exact(cin, k, pad, k2, hw, relu2):
    """Both pools become maxes over 4 channel groups: the first over the 16 phases of a 4x4
    space-to-depth conv (already the 2x2 space-to-depth order of the pooled map), the second over
    the 4 phases of the second conv on it."""
    name = "s2d4-conv-pool-conv-relu-pool" if relu2 else "s2d4-conv-pool-conv-pool"
    m, x = _conv_pool_conv_pool(cin, k, pad, k2, hw, relu2=relu2, seed=k + k2)
    new, _ = _check(m, (name,), x, {name: 1})
    ops = _ops(new)
    assert ops.count("SpaceToDepth") == 1 and ops.count("MaxPool") == 2 and ops.count("Conv") == 2
    init = {i.name: i for i in new.graph.initializer}
    shapes = [list(init[n.input[1]].dims) for n in new.graph.node if n.op_type == "Conv"]
    assert shapes == [
        [16 * 6, 16 * cin, (k + 6) // 4, (k + 6) // 4],
        [4 * 5, 4 * 6, (k2 + 2) // 2, (k2 + 2) // 2],
    ]
    # the other form does not match (ReLU or not between the second conv and its pool)
    other = "s2d4-conv-pool-conv-pool" if relu2 else "s2d4-conv-pool-conv-relu-pool"
    _check(m, (other,), x, {other: 0})


@pytest.mark.parametrize(
    "kwargs,why",
    [
        ({"cin": 1, "k": 3, "pad": 1, "k2": 3, "hw": (16, 16)}, "whole 4x4 / 2x2 blocks"),
        ({"cin": 1, "k": 5, "pad": 2, "k2": 4, "hw": (28, 28)}, "whole 4x4 / 2x2 blocks"),
        ({"cin": 1, "k": 5, "pad": 2, "k2": 3, "hw": (28, 28), "pad2": 1}, "strided or padded"),
        ({"cin": 3, "k": 5, "pad": 2, "k2": 5, "hw": (28, 28)}, "3 input channels"),
        ({"cin": 1, "k": 5, "pad": 2, "k2": 5, "hw": (28, 28), "pool2": (1, 2)}, "not a plain 2x2"),
    ],
)
def test_s2d4_refuses_and_leaves_the_graph(kwargs, why):
    m, x = _conv_pool_conv_pool(**kwargs)
    new, report = _check(m, ("s2d4-conv-pool-conv-pool",), x, {"s2d4-conv-pool-conv-pool": 0})
    assert any(why in r for r in report[0]["not_applied"]), report
    assert _ops(new) == _ops(m)


def test_drop_relu_after_pool():
    from onnx import helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"]),
    ]
    m = _graph(nodes, {}, [2, 3, 6, 6], [2, 3, 3, 3])
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    new, _ = _check(m, ("drop-redundant-relu",), x, {"drop-redundant-relu": 1})
    assert _ops(new) == ["Relu", "MaxPool"]


def test_unknown_pass_and_bad_variant_are_config_errors():
    from lenet_edge.optimize.stage import OptimizeConfig
    from lenet_edge.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown or no pass"):
        OptimizeConfig(variant="x", passes=("no-such-pass",))
    with pytest.raises(ConfigError, match="lower-case letters"):
        OptimizeConfig(variant="../x")
    with pytest.raises(ConfigError, match="no default passes"):
        OptimizeConfig(variant="mine")
    assert OptimizeConfig().passes[-1] == "s2d-conv-stride2"
    # a second audit: a standard variant's file rewritten by other passes (the INT8 stages read it)
    with pytest.raises(ConfigError, match="--passes with variant 's2d': that name is the standard"):
        OptimizeConfig(passes=("fold-normalisation",))
    with pytest.raises(ConfigError, match="--passes names fold-normalisation twice"):
        OptimizeConfig(variant="mine", passes=("fold-normalisation", "fold-normalisation"))
    assert OptimizeConfig(variant="fold", passes=OptimizeConfig(variant="fold").passes).variant == "fold"


@pytest.mark.parametrize(
    "cin,k,pad,stride,hw", [(1, 5, 2, 1, (28, 28)), (2, 3, 1, 2, (11, 9)), (3, 3, 0, 1, (8, 10))]
)
def test_exact_fold_pads_with_zeros_and_adds_a_bias_map(cin, k, pad, stride, hw):
    from onnx import helper

    rng = np.random.default_rng(cin * 7 + k)
    nodes = [
        helper.make_node("Add", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "s"], ["xn"]),
        helper.make_node(
            "Conv", ["xn", "w", "b"], ["y"], kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2
        ),
    ]
    inits = {
        "a": np.array(-127.5),
        "s": np.array(1 / 127.5),
        "w": rng.normal(size=(4, cin, k, k)),
        "b": rng.normal(size=4),
    }
    oh, ow = (hw[0] + 2 * pad - k) // stride + 1, (hw[1] + 2 * pad - k) // stride + 1
    m = _graph(nodes, inits, [2, cin, *hw], [2, 4, oh, ow])
    x = rng.integers(0, 256, size=(2, cin, *hw)).astype(np.float32)
    new, _ = _check(m, ("fold-normalisation-exact",), x, {"fold-normalisation-exact": 1})
    assert _ops(new) == ["Conv", "Add"]  # no Pad node: the zero padding is the conv's own


@pytest.mark.parametrize("second", ["pool", "stride2"])
def test_s2d_after_the_exact_fold_keeps_the_bias_map(second):
    from onnx import helper

    rng = np.random.default_rng(11)
    nodes = [
        helper.make_node("Add", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "s"], ["xn"]),
        helper.make_node("Conv", ["xn", "w", "b"], ["c"], kernel_shape=[5, 5], pads=[2] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
    ]
    inits = {
        "a": np.array(-127.5),
        "s": np.array(1 / 127.5),
        "w": rng.normal(size=(6, 1, 5, 5)),
        "b": rng.normal(size=6),
    }
    if second == "pool":
        nodes.append(helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]))
        out, rule = [2, 6, 14, 14], "s2d-conv-map-pool-split"
    else:
        nodes.append(helper.make_node("Conv", ["r", "w2", "b2"], ["y"], kernel_shape=[5, 5], strides=[2, 2]))
        inits.update(w2=rng.normal(size=(4, 6, 5, 5)), b2=rng.normal(size=4))
        out, rule = [2, 4, 12, 12], "s2d-conv-map-stride2"
    m = _graph(nodes, inits, [2, 1, 28, 28], out)
    x = rng.integers(0, 256, size=(2, 1, 28, 28)).astype(np.float32)
    new, _ = _check(m, ("fold-normalisation-exact", rule), x, {"fold-normalisation-exact": 1, rule: 1})
    assert "SpaceToDepth" in _ops(new) and "Add" in _ops(new)
