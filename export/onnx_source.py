"""Export for a workflow whose model is a file: an ONNX graph (source = "onnx") or a Paddle
inference model (source = "paddle-inference", converted by paddle2onnx), with the same contract
and the same checks as the export of a model trained here.

The source graph takes normalised float [N,C,H,W] and returns [N,K] logits. The export puts the
workflow's normalisation in front ((pixels - mean) / std), names the input 'pixels' and the output
'scores', makes the batch dimension 'N', checks the graph (onnx.checker, full), and proves parity
on every test image: ONNX Runtime on the exported graph fed raw pixels vs ONNX Runtime on the
source graph fed the normalised images, max |Δlogit| <= atol and identical top-1. The record has
the fields of a Paddle export record (the source file's sha256 stands where a checkpoint's does),
so every later stage reads it the same way.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.export.onnx_export import (
    ExportConfig,
    check_parity,
    export_record_path,
    is_up_to_date,
    onnx_path,
    set_metadata,
)
from lenet_edge.runtime.contract import INPUT_NAME, OUTPUT_NAME, to_pixels
from lenet_edge.runtime.errors import ConversionError
from lenet_edge.runtime.evaluate import topk_accuracy
from lenet_edge.runtime.files import (
    read_json,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from lenet_edge.runtime.mnist import load_split
from lenet_edge.workflow import Workflow, check_data_shape


def source_sha256() -> str:
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("export.onnx_source")


def params_file(model_file: Path) -> Path:
    """A Paddle inference model's weights: inference.json (or .pdmodel) -> inference.pdiparams."""
    return model_file.with_suffix(".pdiparams")


def _load_source(wf: Workflow, opset: int) -> tuple[Any, str]:
    """The source as an ONNX graph, validated against the workflow, and the sha256 of what it was
    made from: the ONNX file, or a Paddle inference model converted by paddle2onnx."""
    import onnx

    from lenet_edge.runtime.files import sha256_bytes

    src = wf.model_file
    if src is None or not src.is_file():
        raise ConversionError(f"{src}: model file not found (the workflow {wf.path.name} names it)")
    try:
        if wf.source == "paddle-inference":
            from lenet_edge.export.onnx_export import paddle_inference_to_onnx

            weights = params_file(src)
            if not weights.is_file():
                raise ConversionError(
                    f"{weights}: the inference model's weights are missing beside {src.name}"
                )
            sha = sha256_bytes(src.read_bytes() + b"\0" + weights.read_bytes())
            model = onnx.load_from_string(paddle_inference_to_onnx(src, weights, opset))
        else:
            sha = sha256_file(src)
            model = onnx.load(str(src))
        onnx.checker.check_model(model, full_check=True)
    except ConversionError:
        raise
    except Exception as e:  # onnx/paddle2onnx raise DecodeError, ValidationError, ... for a bad file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{src}: not a valid {wf.source} model ({msg[:200]})") from e
    _check_io(wf, model, src)
    return model, sha


def _check_io(wf: Workflow, model: Any, src: Path) -> None:
    import onnx

    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ConversionError(
            f"{src}: expected one input and one output, got {len(inputs)} and {len(g.output)}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if (
        inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT
        or len(dims) != 4
        or dims[1:] != list(wf.input.shape)
    ):
        raise ConversionError(
            f"{src}: input must be float [N,{','.join(map(str, wf.input.shape))}] as the workflow's [input] shape says, "
            f"got {dims}"
        )
    out = [d.dim_value if d.HasField("dim_value") else None for d in g.output[0].type.tensor_type.shape.dim]
    if len(out) != 2 or out[1] != wf.classes:
        raise ConversionError(f"{src}: output must be [N,{wf.classes}] ([data] classes), got {out}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 13 <= opset <= 21:
        raise ConversionError(f"{src}: opset {opset}; lenet-edge takes ONNX opset 13..21")


def _source_params(wf: Workflow, model: Any) -> int:
    """Parameters of the source: Paddle's own count for an inference model (paddle2onnx stores
    weights as Constant nodes), the float initializers of an ONNX file."""
    import onnx

    if wf.source == "paddle-inference":
        from lenet_edge.train.paddle_env import import_paddle

        net = import_paddle().jit.load(str(wf.model_file.with_suffix("")))
        return int(sum(np.prod(p.shape) for p in net.parameters()))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def _reference_logits(wf: Workflow, model: Any, normed: np.ndarray, batch: int) -> np.ndarray:
    """What parity is measured against: Paddle itself for a Paddle inference model (so the check
    covers paddle2onnx), ONNX Runtime on the source graph for an ONNX file."""
    if wf.source == "paddle-inference":
        from lenet_edge.train.paddle_env import import_paddle

        paddle = import_paddle()
        net = paddle.jit.load(str(wf.model_file.with_suffix("")))
        net.eval()
        outs = [net(paddle.to_tensor(normed[i : i + batch])) for i in range(0, len(normed), batch)]
        return np.concatenate([(o[0] if isinstance(o, list | tuple) else o).numpy() for o in outs])
    import onnxruntime

    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: normed[i : i + batch]})[0] for i in range(0, len(normed), batch)]
    )


def _with_pixel_input(model: Any, mean: float, std: float) -> Any:
    """The source graph behind (pixels - mean) / std, its I/O named by the contract."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name for t in g.initializer}
    src_in = next(i for i in g.input if i.name not in inits)
    old_in, old_out = src_in.name, g.output[0].name
    if INPUT_NAME in {n for node in g.node for n in (*node.input, *node.output)} - {old_in}:
        raise ConversionError(f"the source graph already uses the name {INPUT_NAME!r} inside")
    # Add(-mean) then Mul(1/std): the form the Paddle export has after clean-up, which the graph
    # passes (folding into the first conv, the TFLite 1x1 conv, the ORT uint8 input) recognise
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(-mean, np.float32), "lenet_edge.norm.offset"),
            numpy_helper.from_array(np.array(1 / std, np.float32), "lenet_edge.norm.scale"),
        ]
    )
    norm = [
        helper.make_node(
            "Add",
            [INPUT_NAME, "lenet_edge.norm.offset"],
            ["lenet_edge.norm.centred"],
            name="lenet_edge.norm.add",
        ),
        helper.make_node(
            "Mul", ["lenet_edge.norm.centred", "lenet_edge.norm.scale"], [old_in], name="lenet_edge.norm.mul"
        ),
    ]
    nodes = list(g.node)
    for node in nodes:
        for i, name in enumerate(node.output):
            if name == old_out:
                node.output[i] = OUTPUT_NAME
        for i, name in enumerate(node.input):
            if name == old_out:
                node.input[i] = OUTPUT_NAME
    del g.node[:]
    g.node.extend(norm + nodes)
    src_in.name = INPUT_NAME
    g.output[0].name = OUTPUT_NAME
    for vi in (src_in, g.output[0]):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    return m


def export_onnx_source(
    wf: Workflow,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    data: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export one ONNX-source workflow; return the export record (also written beside the file)."""
    import onnx
    import onnxruntime

    t0 = time.perf_counter()
    config = config or ExportConfig()
    model, src_sha = _load_source(wf, config.opset)
    params = _source_params(wf, model)
    if params != wf.params:
        raise ConversionError(
            f"{wf.model_file}: {params} parameters, the workflow says {wf.params} ([model] params)"
        )
    out = onnx_path(Path(out_dir), wf.name)
    normalize = [wf.input.normalize_mean, wf.input.normalize_std]
    if not force and is_up_to_date(out, src_sha, config, source_sha256(), normalize=normalize):
        print(f"{out}: up to date with {wf.model_file} (--force re-exports)")
        return read_json(export_record_path(out))
    test = load_split("test", data)
    check_data_shape(wf, test.images.shape[1:], Path(data) if data else Path("MNIST"))
    pixels = to_pixels(test.images)
    mean, std = wf.input.normalize_mean, wf.input.normalize_std
    normed = (pixels - np.float32(mean)) / np.float32(std)
    ref = _reference_logits(wf, model, normed, config.batch_size)
    exported = _with_pixel_input(model, mean, std)
    exported.doc_string = (
        f"lenet-edge {wf.name}, FP32, from {wf.model_file.name}: raw pixels in, (x-{mean:g})/{std:g} inside."
    )
    set_metadata(
        exported, {"model": wf.name, "precision": "fp32", "source": wf.source, "checkpoint_sha256": src_sha}
    )
    try:
        onnx.checker.check_model(exported, full_check=True)
    except Exception as e:
        raise ConversionError(f"{wf.name}: exported ONNX fails onnx.checker: {e}") from e
    logits, max_abs, top1_same = check_parity(exported, ref, pixels, config, f"{wf.name}: exported vs source")
    acc = topk_accuracy(logits, test.labels)
    set_metadata(exported, {"test_top1": f"{acc.top1:.4f}", "test_top2": f"{acc.top2:.4f}"})
    data_bytes = exported.SerializeToString()
    write_bytes_atomic(out, data_bytes)
    record = {
        "model": wf.name,
        "precision": "fp32",
        "source": wf.source,
        "onnx": out.name,
        "onnx_sha256": sha256_bytes(data_bytes),
        "onnx_bytes": len(data_bytes),
        "checkpoint": str(wf.model_file),
        "checkpoint_sha256": src_sha,
        "training_seed": None,
        "params": params,
        "normalize": [mean, std],
        "config": asdict(config),
        "parity": {
            "images": len(ref),
            "max_abs_logit_diff": max_abs,
            "atol": config.atol,
            "top1_identical": top1_same,
            "passed": True,
            "against": "Paddle (paddle.jit.load) on normalised images"
            if wf.source == "paddle-inference"
            else "the source ONNX graph on normalised images (ONNX Runtime)",
        },
        "test_top1": acc.top1,
        "test_top2": acc.top2,
        "source_test_top1": topk_accuracy(ref, test.labels).top1,
        "metadata_props": {p.key: p.value for p in exported.metadata_props},
        "graph_nodes": len(exported.graph.node),
        "opset": next(o.version for o in exported.opset_import if o.domain in ("", "ai.onnx")),
        "versions": {
            "python": platform.python_version(),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "data_sha256": test.sha256,
        "source_sha256": source_sha256(),
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(export_record_path(out), record)
    return record
