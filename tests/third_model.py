"""A third model, made by the tests and never committed: a small depthwise-separable CNN on
3x32x32 input with random weights, as an ONNX file, with a synthetic data set and its own
workflow file. It proves lenet-edge serves a model its code does not know.

The data set is labelled by the FP32 model itself (random weights have no other ground truth), so
top-1 measures agreement with the FP32 reference; images are kept only where the FP32 top-1 logit
leads the runner-up by a margin, so the INT8 checks test the toolchain, not near-ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "dwsep_cifar"
SHAPE = (3, 32, 32)
CLASSES = 10
MEAN, STD = 127.5, 64.0
# Images are kept where the FP32 top-1 logit leads by at least this many logit SDs: INT8 noise on
# this random net is ~0.14 SD on average, so near-ties would flip (measured agreement 84 % with no
# margin, 99.7 % at 0.5, 100 % at 1.0 on 3,000 images).
MARGIN = 1.0


def make_onnx(path: Path, seed: int = 0) -> Path:
    """Conv 3->8 s2, then two depthwise(3x3)+pointwise blocks (8->16, 16->32, the second s2),
    global average pool, FC 32->10. He-initialised random weights; input normalised float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, group: int, name: str) -> str:
        fan_in = cin // group * k * k
        w = rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // group, k, k)).astype(np.float32)
        b = rng.normal(0, 0.05, cout).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [f"{name}.y"],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=group,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
        return f"{name}.r"

    h = conv("x", 3, 8, 3, 2, 1, "stem")
    h = conv(h, 8, 8, 3, 1, 8, "dw1")
    h = conv(h, 8, 16, 1, 1, 1, "pw1")
    h = conv(h, 16, 16, 3, 2, 16, "dw2")
    h = conv(h, 16, 32, 1, 1, 1, "pw2")
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = rng.normal(0, np.sqrt(1 / 32), (CLASSES, 32)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "fc.w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.b"),
    ]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lenet-edge tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    # Random weights favour one class for every input; standardise each class's logit over random
    # images (scale the FC row, shift its bias) so the classes share the inputs between them.
    z = _logits(path, _images(np.random.default_rng(seed + 100), 2000))
    mu, sd = z.mean(0), z.std(0) + 1e-6
    fc_w, fc_b = (next(t for t in model.graph.initializer if t.name == n) for n in ("fc.w", "fc.b"))
    fc_w.CopyFrom(numpy_helper.from_array((w / sd[:, None]).astype(np.float32), "fc.w"))
    fc_b.CopyFrom(numpy_helper.from_array((-mu / sd).astype(np.float32), "fc.b"))
    onnx.save(model, path)
    return path


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth random colour images: 8x8 blocks of random colour, upsampled, plus noise; uint8 NCHW."""
    coarse = rng.integers(0, 256, size=(n, 3, 8, 8)).astype(np.float32)
    img = coarse.repeat(4, axis=2).repeat(4, axis=3)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _logits(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = (images.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return sess.run(None, {"x": x})[0]


def make_dataset(path: Path, onnx_path: Path, n_train: int = 1000, n_test: int = 500, seed: int = 1) -> Path:
    """Smooth random colour images (blurred noise, 0..255 uint8, NCHW), labelled by the FP32
    model, kept where its margin is clear and every class stays represented."""
    rng = np.random.default_rng(seed)
    want = n_train + n_test
    kept_x, kept_y = [], []
    while sum(len(y) for y in kept_y) < want:
        img = _images(rng, 4000)
        logits = _logits(onnx_path, img)
        top2 = np.sort(logits, axis=1)[:, -2:]
        keep = (top2[:, 1] - top2[:, 0]) > MARGIN * logits.std()
        kept_x.append(img[keep])
        kept_y.append(logits.argmax(1)[keep])
    x, y = np.concatenate(kept_x)[:want], np.concatenate(kept_y)[:want].astype(np.uint8)
    np.savez_compressed(
        path,
        train_images=x[:n_train],
        train_labels=y[:n_train],
        test_images=x[n_train:],
        test_labels=y[n_train:],
    )
    return path


# What both test workflows share: the input contract and the .npz data set beside the file.
INPUT_AND_DATA = """\
[input]
shape = [3, 32, 32]
layout = "NCHW"
dtype = "uint8"
pixel_range = [0, 255]
normalize = {{ mean = {mean}, std = {std} }}

[data]
format = "npz"
path = "data.npz"
classes = {classes}
"""

WORKFLOW = """\
# A model lenet-edge's code does not know: made by tests/third_model.py, never committed.
[model]
name = "{name}"
label = "depthwise-separable CNN (random weights)"
source = "onnx"
file = "{name}.onnx"
params = {params}

{input_and_data}calibration_size = 500                         # a seeded sample of the 1,000 training images
calibration_seed = 7

[quantize]
recipe = {{}}

[tolerances]
int8_size_ratio_max = {{ value = 1.0, why = "{params} parameters: the INT8 graph's fixed parts (QDQ nodes, scales, names) outweigh its weights; INT8 must still not be larger than FP32" }}
int8_dynamic_size_ratio_max = {{ value = 1.05, why = "dynamic-range TFLite keeps tensors under 1,024 elements in float, and every tensor of this net is: the file stays FP32-sized" }}
"""


def make_workflow(folder: Path, seed: int = 0) -> Path:
    """The ONNX model, its data set and its workflow file, all in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = make_onnx(folder / f"{NAME}.onnx", seed)
    make_dataset(folder / "data.npz", onnx_path)
    import onnx

    params = sum(int(np.prod(t.dims)) for t in onnx.load(onnx_path).graph.initializer)
    wf = folder / f"{NAME}.toml"
    data_part = INPUT_AND_DATA.format(mean=MEAN, std=STD, classes=CLASSES)
    wf.write_text(WORKFLOW.format(name=NAME, params=params, input_and_data=data_part))
    return wf


PADDLE_NAME = "pdinf_net"
PADDLE_WORKFLOW = """\
# A Paddle inference model lenet-edge did not train: made by tests/third_model.py, never committed.
[model]
name = "{name}"
label = "small Paddle CNN (inference model, random weights)"
source = "paddle-inference"
file = "net.json"
params = {params}

{input_and_data}"""


def make_paddle_inference(folder: Path, data: Path, seed: int = 0) -> Path:
    """A small Paddle CNN (conv 3->8 stride 2, ReLU, global average pool, FC 8->10) with random
    weights, saved by paddle.jit.save as an inference model (net.json + net.pdiparams) beside a
    copy of `data`, and its workflow file."""
    import shutil

    from lenet_edge.train.paddle_env import import_paddle

    paddle = import_paddle()
    folder.mkdir(parents=True, exist_ok=True)
    paddle.seed(seed)
    net = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 8, 3, stride=2, padding=1),
        paddle.nn.ReLU(),
        paddle.nn.AdaptiveAvgPool2D(1),
        paddle.nn.Flatten(),
        paddle.nn.Linear(8, CLASSES),
    )
    net.eval()
    spec = paddle.static.InputSpec([None, *SHAPE], "float32", "x")
    paddle.jit.save(net, str(folder / "net"), input_spec=[spec])
    shutil.copyfile(data, folder / "data.npz")
    params = sum(int(np.prod(p.shape)) for p in net.parameters())
    wf = folder / f"{PADDLE_NAME}.toml"
    data_part = INPUT_AND_DATA.format(mean=MEAN, std=STD, classes=CLASSES)
    wf.write_text(PADDLE_WORKFLOW.format(name=PADDLE_NAME, params=params, input_and_data=data_part))
    return wf
