import numpy as np
import pytest

pytestmark = pytest.mark.unit

paddle = pytest.importorskip("paddle")

from lenet_edge.train.models import PARAM_COUNTS, build_model, count_params  # noqa: E402


@pytest.mark.parametrize("name,count", [("lenet_pool", 61_706), ("lenet_stride", 66_346)])
def test_param_counts(name, count):
    assert PARAM_COUNTS[name] == count
    assert count_params(build_model(name)) == count


def test_every_workflow_builds_its_model_with_the_stated_parameter_count():
    from lenet_edge.workflow import workflows

    for name, wf in workflows().items():
        net = build_model(name)
        assert count_params(net) == wf.params, name
        c, h, w = wf.input.shape
        out = net(paddle.zeros([2, c, h, w]))
        assert tuple(out.shape) == (2, wf.classes), name


def _trace_shapes(model, x):
    shapes = []
    hooks = [
        layer.register_forward_post_hook(lambda layer, inp, out: shapes.append(tuple(out.shape)))
        for _, layer in model.named_sublayers()
    ]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


def test_lenet_pool_layer_shapes():
    m = build_model("lenet_pool")
    m.eval()
    shapes = _trace_shapes(m, paddle.zeros([2, 1, 28, 28]))
    # conv1, conv2 (after pool 14x14 -> 10x10), fc1, fc2, fc3
    assert shapes == [(2, 6, 28, 28), (2, 16, 10, 10), (2, 120), (2, 84), (2, 10)]
    params = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert params["conv1.weight"] == (6, 1, 5, 5) and params["conv2.weight"] == (16, 6, 5, 5)
    assert params["fc1.weight"] == (400, 120)  # Paddle Linear stores [in, out]


def test_lenet_stride_layer_shapes():
    m = build_model("lenet_stride")
    m.eval()
    shapes = _trace_shapes(m, paddle.zeros([3, 1, 28, 28]))
    assert shapes == [
        (3, 6, 28, 28),
        (3, 16, 12, 12),
        (3, 16, 12, 12),
        (3, 16, 5, 5),
        (3, 120),
        (3, 84),
        (3, 10),
    ]


def test_unknown_model():
    from lenet_edge.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'lenet'"):
        build_model("lenet")


@pytest.mark.parametrize("name", ["lenet_pool", "lenet_stride"])
def test_fast_bias_forward_is_bitwise_stock(name):
    # The training-time bias add must compute exactly what the stock layer (and export) does.
    x = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (4, 1, 28, 28)).astype("float32"))
    paddle.seed(1)
    fast = build_model(name)
    stock = build_model(name, fast_bias=False)
    stock.set_state_dict(fast.state_dict())
    fast.train()
    stock.train()
    assert np.array_equal(fast(x).numpy(), stock(x).numpy())
