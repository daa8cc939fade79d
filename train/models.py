"""The two LeNet-5 variants of the blog experiment, in Paddle.

`lenet_pool` (the blog's LeNet) and `lenet_stride` (LeNet_nopool) take normalised input
[N,1,28,28] in [-1, 1] and return [N,10] logits. Layer order follows the blog exactly,
including its ReLU after the first max-pool.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lenet_edge.train.paddle_env import import_paddle
from lenet_edge.workflow import WorkflowMapping

import_paddle()  # before the first `import paddle`: its caches go under our cache root
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402


class Conv2D(nn.Conv2D):
    """nn.Conv2D whose bias add is cheaper to train: same parameters, same forward values.

    Paddle adds a conv bias by broadcasting a [1,C,1,1] tensor, and that add plus its gradient
    cost ~30 % of a LeNet training step on CPU (docs/performance.md). In training mode the
    bias is added to a [N*C, H*W] view with a [N*C, 1] tiled bias instead. Eval mode (and so
    jit.save / export) uses the stock layer, so exported graphs are plain Conv nodes.
    """

    fast_bias = True  # build_model(..., fast_bias=False) gives the stock layer (for benchmarks)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not (self.training and self.fast_bias) or self.bias is None:
            return super().forward(x)
        geometry = _fastconv_geometry(self)
        if _FASTCONV is not None and geometry is not None:
            # oneDNN's training kernels (train/fastconv.py); a data input needs no gradient
            op = _FASTCONV.fastconv_first if x.stop_gradient else _FASTCONV.fastconv
            return op(x, self.weight, self.bias, *geometry)
        y = F.conv2d(x, self.weight, None, self._stride, self._padding, self._dilation, self._groups)
        n, c, h, w = y.shape
        bias = self.bias.reshape([1, c]).tile([n, 1]).reshape([n * c, 1])
        return (y.reshape([n * c, h * w]) + bias).reshape([n, c, h, w])


_FASTCONV: Any = None  # the fastconv operators while use_fastconv() is in force


def use_fastconv(ops: Any) -> None:
    """Train Conv2D layers with the fastconv operators (train/fastconv.py); None: Paddle's kernel."""
    global _FASTCONV
    _FASTCONV = ops


@contextmanager
def fastconv_in_force(ops: Any) -> Iterator[None]:
    """use_fastconv(ops) for the block, Paddle's kernel again after it (also on an error)."""
    use_fastconv(ops)
    try:
        yield
    finally:
        use_fastconv(None)


def max_pool2d(layer: nn.Layer, x: paddle.Tensor, kernel: int, stride: int) -> paddle.Tensor:
    """F.max_pool2d(x, kernel, stride); in training with fastconv in force, its `fastpool`
    operator (Paddle's pooling arithmetic, bitwise, without its per-call cost)."""
    if layer.training and _FASTCONV is not None:
        return _FASTCONV.fastpool(x, kernel, stride)
    return F.max_pool2d(x, kernel, stride)


def _fastconv_geometry(layer: nn.Conv2D) -> tuple[int, int] | None:
    """(stride, padding) when fastconv computes this layer exactly (NCHW, one group, no
    dilation, the same integer stride and padding on both axes), else None."""
    stride, pad, dil = (
        list(v) if isinstance(v, list | tuple) else [v, v]
        for v in (layer._stride, layer._padding, layer._dilation)
    )
    if (
        layer._groups != 1
        or layer._data_format != "NCHW"
        or dil != [1, 1]
        or layer._padding_algorithm != "EXPLICIT"
    ):
        return None
    if any(not isinstance(v, int) for v in stride + pad) or len(set(stride)) != 1 or len(set(pad)) != 1:
        return None
    return stride[0], pad[0]


class LeNetPool(nn.Layer):
    """Blog 'LeNet': conv-relu-pool-relu-conv-pool, then 400-120-84-10. 61,706 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2D(1, 6, 5, padding=2)
        self.conv2 = Conv2D(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = max_pool2d(self, F.relu(self.conv1(x)), 2, 2)  # [N,6,14,14]
        x = F.relu(x)  # the blog applies ReLU again after the pool (a no-op on ReLU output)
        x = max_pool2d(self, self.conv2(x), 2, 2)  # [N,16,5,5]: no ReLU here, as in the blog
        x = paddle.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNetStride(nn.Layer):
    """Blog 'LeNet_nopool': pools replaced by stride-2 convs. 66,346 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2D(1, 6, 5, padding=2)  # [N,6,28,28]
        self.conv2 = Conv2D(6, 16, 5, stride=2)  # [N,16,12,12]
        self.conv3 = Conv2D(16, 16, 3, padding=1)  # [N,16,12,12]
        self.conv4 = Conv2D(16, 16, 3, stride=2)  # [N,16,5,5]
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = self.conv4(x)  # no ReLU before flatten, as in the blog
        x = paddle.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _model_class(wf: Any) -> type[nn.Layer]:
    module, _, cls = wf.model_class.partition(":")
    return getattr(importlib.import_module(module), cls)


# the models trained here: workflows whose source is a Paddle class
MODELS: Mapping[str, type[nn.Layer]] = WorkflowMapping(_model_class, source="paddle")
PARAM_COUNTS: Mapping[str, int] = WorkflowMapping(lambda wf: wf.params)


def build_model(name: str, fast_bias: bool = True) -> nn.Layer:
    from lenet_edge.runtime.errors import ConfigError

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    model = MODELS[name]()
    for layer in model.sublayers():
        if isinstance(layer, Conv2D):
            layer.fast_bias = fast_bias
    return model


def count_params(model: nn.Layer) -> int:
    return int(sum(p.size for p in model.parameters()))
