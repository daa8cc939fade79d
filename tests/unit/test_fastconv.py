"""fastconv: oneDNN's training convolution as a Paddle custom operator (train/fastconv.py).

On Linux x86_64 the operator must build (a silent fallback would hide a slower training and other
weights); elsewhere these tests skip."""

import os
import platform

import numpy as np
import pytest

pytestmark = [pytest.mark.unit, pytest.mark.xdist_group("fastconv")]

paddle = pytest.importorskip("paddle")
import paddle.nn.functional as F  # noqa: E402

from lenet_edge.runtime.errors import ConfigError  # noqa: E402
from lenet_edge.train import fastconv  # noqa: E402
from lenet_edge.train.models import _fastconv_geometry, build_model, use_fastconv  # noqa: E402

if platform.system() != "Linux" or platform.machine() != "x86_64":
    pytest.skip("fastconv is built for Linux x86_64 only", allow_module_level=True)


@pytest.fixture(scope="module")
def ops():
    return fastconv.load()


# (batch, in ch, out ch, kernel, stride, pad, height, width): the two models' layers, then odd ones
SHAPES = [
    (64, 1, 6, 5, 1, 2, 28, 28),
    (64, 6, 16, 5, 1, 0, 14, 14),
    (64, 6, 16, 5, 2, 0, 28, 28),
    (64, 16, 16, 3, 1, 1, 12, 12),
    (64, 16, 16, 3, 2, 0, 12, 12),
    (3, 5, 7, 3, 2, 1, 9, 11),
    (1, 2, 3, 1, 1, 0, 4, 4),
    (2, 3, 4, 4, 3, 2, 10, 7),
]


@pytest.mark.parametrize("n,ci,co,k,s,p,h,w", SHAPES)
def test_forward_and_gradients_match_paddles_conv(ops, n, ci, co, k, s, p, h, w):
    rng = np.random.default_rng(n * 100 + ci * 10 + k)
    x = paddle.to_tensor(rng.uniform(-1, 1, (n, ci, h, w)).astype("float32"), stop_gradient=False)
    wt = paddle.to_tensor(rng.normal(0, 0.3, (co, ci, k, k)).astype("float32"), stop_gradient=False)
    b = paddle.to_tensor(rng.normal(0, 0.3, (co,)).astype("float32"), stop_gradient=False)
    ref = F.conv2d(x, wt, b, stride=s, padding=p)
    got = ops.fastconv(x, wt, b, s, p)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    g = paddle.to_tensor(rng.normal(0, 1, ref.shape).astype("float32"))
    want = paddle.grad([ref], [x, wt, b], [g])
    have = paddle.grad([got], [x, wt, b], [g])
    for a, c in zip(want, have, strict=True):
        scale = float(np.abs(a.numpy()).max()) or 1.0
        assert np.isfinite(c.numpy()).all()
        np.testing.assert_allclose(c.numpy() / scale, a.numpy() / scale, atol=1e-5)


def test_first_layer_operator_computes_no_input_gradient(ops):
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.uniform(-1, 1, (8, 1, 28, 28)).astype("float32"))  # data: no gradient
    wt = paddle.to_tensor(rng.normal(0, 0.3, (6, 1, 5, 5)).astype("float32"), stop_gradient=False)
    b = paddle.to_tensor(rng.normal(0, 0.3, (6,)).astype("float32"), stop_gradient=False)
    ref = F.conv2d(x, wt, b, padding=2).sum()
    got = ops.fastconv_first(x, wt, b, 1, 2).sum()
    want, have = paddle.grad([ref], [wt, b]), paddle.grad([got], [wt, b])
    for a, c in zip(want, have, strict=True):
        np.testing.assert_allclose(c.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_input_raises_instead_of_aborting(ops):
    x = paddle.zeros([2, 3, 8, 8])
    with pytest.raises(Exception, match="input channels"):
        ops.fastconv(x, paddle.zeros([4, 2, 3, 3]), paddle.zeros([4]), 1, 0)
    with pytest.raises(Exception, match="bias"):
        ops.fastconv(x, paddle.zeros([4, 3, 3, 3]), paddle.zeros([5]), 1, 0)
    with pytest.raises(Exception, match="larger than"):
        ops.fastconv(x, paddle.zeros([4, 3, 9, 9]), paddle.zeros([4]), 1, 0)


def test_only_layers_it_computes_exactly_take_the_operator():
    import paddle.nn as nn

    assert _fastconv_geometry(nn.Conv2D(1, 6, 5, padding=2)) == (1, 2)
    assert _fastconv_geometry(nn.Conv2D(6, 16, 3, stride=2)) == (2, 0)
    for layer in (
        nn.Conv2D(4, 4, 3, groups=2),
        nn.Conv2D(4, 4, 3, dilation=2),
        nn.Conv2D(4, 4, 3, stride=(1, 2)),
        nn.Conv2D(4, 4, 3, padding=(0, 1)),
        nn.Conv2D(4, 4, 3, padding="SAME"),
        nn.Conv2D(4, 4, 3, data_format="NHWC"),
    ):
        assert _fastconv_geometry(layer) is None, layer


@pytest.mark.parametrize("name", ["lenet_pool", "lenet_stride"])
def test_a_training_step_with_fastconv_matches_paddles_kernel(ops, name):
    """Same loss and gradients (to float rounding) as the stock layers; eval mode (export) unchanged."""
    x = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (16, 1, 28, 28)).astype("float32"))
    y = paddle.to_tensor(np.arange(16) % 10)
    paddle.seed(3)
    net = build_model(name)
    grads = {}
    for kernel in (None, ops):
        use_fastconv(kernel)
        try:
            net.train()
            net.clear_gradients()
            F.cross_entropy(net(x), y).backward()
            grads[kernel is None] = {n: p.grad.numpy().copy() for n, p in net.named_parameters()}
            net.eval()
            assert np.array_equal(net(x).numpy(), net(x).numpy())
        finally:
            use_fastconv(None)
    for n, g in grads[True].items():
        scale = float(np.abs(g).max()) or 1.0
        np.testing.assert_allclose(grads[False][n] / scale, g / scale, atol=1e-5, err_msg=n)


def test_choose_names_the_kernel_and_refuses_unknown_ones(monkeypatch):
    assert fastconv.choose("paddle") == (None, "paddle")
    ops, name = fastconv.choose("onednn")
    assert ops is not None and name.startswith("oneDNN 3.6.") and "fastconv" in name
    monkeypatch.setenv(fastconv.ENV, "paddle")
    assert fastconv.choose() == (None, "paddle")
    with pytest.raises(ConfigError, match="expected one of"):
        fastconv.choose("cudnn")


def test_auto_falls_back_to_paddles_kernel_and_says_why(monkeypatch, capsys):
    def unavailable():
        raise fastconv.Unavailable("no C++ compiler (apt install g++)")

    monkeypatch.setattr(fastconv, "load", unavailable)
    assert fastconv.choose("auto") == (None, "paddle")
    assert "no C++ compiler" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no C\\+\\+ compiler"):
        fastconv.choose("onednn")


@pytest.mark.parametrize("shape,k,s", [((64, 6, 28, 28), 2, 2), ((3, 2, 7, 9), 3, 2), ((2, 1, 5, 5), 2, 1)])
def test_fastpool_is_bitwise_paddles_max_pool_with_ties(ops, shape, k, s):
    """Values and gradients bitwise Paddle's, also where a window holds its maximum twice (ReLU
    zeros; the gradient goes to the first such element, as in Paddle's kernel)."""
    rng = np.random.default_rng(7)
    a = np.maximum(rng.normal(0, 1, shape), 0).astype("float32")  # many all-zero windows
    a.reshape(-1)[::5] = 0.5  # and repeated positive values
    x = paddle.to_tensor(a, stop_gradient=False)
    ref, got = F.max_pool2d(x, k, s), ops.fastpool(x, k, s)
    assert np.array_equal(ref.numpy(), got.numpy())
    g = paddle.to_tensor(rng.normal(0, 1, ref.shape).astype("float32"))
    (want,), (have,) = paddle.grad([ref], [x], [g]), paddle.grad([got], [x], [g])
    assert np.array_equal(want.numpy(), have.numpy())
    with pytest.raises(Exception, match="window larger"):
        ops.fastpool(paddle.zeros([1, 1, 2, 2]), 3, 1)


def test_below_avx512_a_one_channel_weight_gradient_is_a_forward_convolution(tmp_path):
    """With oneDNN held to AVX2 kernels the first layer's weight gradient runs as a forward
    convolution of the batch (ONEDNN_VERBOSE shows it) and still equals Paddle's."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, paddle, paddle.nn.functional as F\n"
        "from lenet_edge.train import fastconv\n"
        "ops = fastconv.load()\n"
        "r = np.random.default_rng(0)\n"
        "x = paddle.to_tensor(r.uniform(-1, 1, (8, 1, 12, 12)).astype('float32'))\n"
        "w = paddle.to_tensor(r.normal(0, .3, (6, 1, 5, 5)).astype('float32'), stop_gradient=False)\n"
        "b = paddle.to_tensor(r.normal(0, .3, (6,)).astype('float32'), stop_gradient=False)\n"
        "g = paddle.to_tensor(r.normal(0, 1, (8, 6, 12, 12)).astype('float32'))\n"
        "want = paddle.grad([F.conv2d(x, w, b, padding=2)], [w, b], [g])\n"
        "have = paddle.grad([ops.fastconv_first(x, w, b, 1, 2)], [w, b], [g])\n"
        "print('ERR', max(float((a - c).abs().max() / a.abs().max()) for a, c in zip(want, have)))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = float(next(line for line in proc.stdout.splitlines() if line.startswith("ERR")).split()[1])
    assert err < 1e-5
    assert "forward_inference,src:" in proc.stdout and "mb1_ic8oc6_ih12oh5kh12" in proc.stdout


def test_a_build_stopped_mid_link_is_built_again_not_fallen_back_from(ops, tmp_path):
    """Ctrl-C while the first `make` linked fastconv left a truncated library newer than its
    source: Paddle's builder kept it, the build step died of a bus error and every later training
    fell back to Paddle's kernel ("fastconv unavailable"). Now the build starts over once."""
    import shutil
    import subprocess
    import sys

    from lenet_edge.train.paddle_env import cache_root

    cache = tmp_path / "lenet-edge"
    for part in ("fastconv", "onednn-headers"):  # the headers: no download; the build: redone here
        shutil.copytree(cache_root() / part, cache / part, symlinks=True)

    def kernel() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lenet_edge.train.fastconv"],
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=600,
        )

    first = kernel()  # this cache's own build (the include path differs from the real cache's)
    assert "training convolutions: oneDNN" in first.stdout, first.stderr[-2000:]
    (lib,) = (p for p in cache.joinpath("fastconv").rglob("lenet_edge_fastconv.so") if "build" not in p.parts)
    lib.write_bytes(lib.read_bytes()[:50_000])  # what a killed linker leaves
    again = kernel()
    assert "training convolutions: oneDNN" in again.stdout, again.stderr[-2000:]
    assert "building it again" in again.stderr and "unavailable" not in again.stderr
    assert lib.stat().st_size > 50_000
