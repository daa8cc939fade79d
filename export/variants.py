"""Deployable FP32 variants of an exported model, each verified against it on all test images.

Reads build/onnx/<model>.fp32.onnx (+ export record); writes
  <model>.fp32.opt.onnx     onnxslim clean-up, normalisation folded into conv1 (Pad with the
                            raw value of a normalised 0, scaled weights), redundant ReLU dropped
  <model>.fp32.opt.b1.onnx  the same with a static batch of 1 (ORT plans a fixed shape)
  floor.onnx                the cheapest graph that honours the contract (Flatten, then Slice
                            the first 10 values): the per-call floor of a runtime
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.export.onnx_export import set_metadata
from lenet_edge.runtime.cli import parser, path_arg
from lenet_edge.runtime.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, to_pixels
from lenet_edge.runtime.errors import ConversionError
from lenet_edge.runtime.files import sha256_bytes, write_bytes_atomic, write_json_atomic
from lenet_edge.runtime.mnist import load_split
from lenet_edge.runtime.numeric import exceeds, max_abs_diff
from lenet_edge.runtime.runner import OnnxRunner
from lenet_edge.workflow import add_model_flags, data_source, selected


def _consumers(graph: Any, tensor: str) -> list[Any]:
    return [n for n in graph.node if tensor in n.input]


def fold_normalisation(model: Any) -> Any:
    """Add(x, -127.5) -> Mul(1/127.5) -> Conv(pad p)  ==>  Pad(x, p, value 127.5) -> Conv'(pad 0).

    Zero padding of the normalised image equals padding the raw image with 127.5, so the fold is
    exact at the borders too: w' = w * s, b' = b + s * off * sum(w).
    """
    import onnx
    from onnx import helper
    from onnx import numpy_helper as nh

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    add, mul, conv = g.node[0], g.node[1], g.node[2]
    if (add.op_type, mul.op_type, conv.op_type) != ("Add", "Mul", "Conv") or add.input[0] != INPUT_NAME:
        raise ConversionError(
            f"unexpected graph head {[n.op_type for n in g.node[:3]]}: cannot fold normalisation"
        )
    off = float(nh.to_array(inits[add.input[1]]).reshape(-1)[0])
    scale = float(nh.to_array(inits[mul.input[1]]).reshape(-1)[0])
    w, b = nh.to_array(inits[conv.input[1]]), nh.to_array(inits[conv.input[2]])
    inits[conv.input[1]].CopyFrom(nh.from_array((w * scale).astype(np.float32), conv.input[1]))
    inits[conv.input[2]].CopyFrom(
        nh.from_array((b + scale * off * w.sum(axis=(1, 2, 3))).astype(np.float32), conv.input[2])
    )
    pads = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
    head = []
    if any(pads):
        g.initializer.extend(
            [
                nh.from_array(
                    np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), "fold_pads"
                ),
                nh.from_array(np.array(-off, np.float32), "fold_pad_value"),
            ]
        )
        head.append(
            helper.make_node(
                "Pad", [INPUT_NAME, "fold_pads", "fold_pad_value"], ["fold_padded"], mode="constant"
            )
        )
        conv.input[0] = "fold_padded"
        for a in conv.attribute:
            if a.name == "pads":
                a.ints[:] = [0, 0, 0, 0]
    else:
        conv.input[0] = INPUT_NAME
    rest = list(g.node)[2:]
    del g.node[:]
    g.node.extend(head + rest)
    return m


def normalisation_as_conv(model: Any) -> Any:
    """Add(x, -127.5) -> Mul(1/127.5)  ==>  a 1x1 Conv with w = 1/127.5, b = -127.5/127.5 (one
    filter per channel, grouped, for a multi-channel input).

    Exact, and what onnx2tf converts well: it fails on the leading scalar Add/Mul, and folding
    into conv1 (fold_normalisation) needs a 127.5 pad value that a uint8 input grid cannot hold.
    """
    import onnx
    from onnx import helper
    from onnx import numpy_helper as nh

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    add, mul = g.node[0], g.node[1]
    if (
        (add.op_type, mul.op_type) != ("Add", "Mul")
        or add.input[0] != INPUT_NAME
        or mul.input[0] != add.output[0]
    ):
        raise ConversionError(
            f"unexpected graph head {[n.op_type for n in g.node[:2]]}: cannot rewrite normalisation"
        )
    off = float(nh.to_array(inits[add.input[1]]).reshape(-1)[0])
    scale = float(nh.to_array(inits[mul.input[1]]).reshape(-1)[0])
    c = g.input[0].type.tensor_type.shape.dim[1].dim_value or 1  # one 1x1 filter per channel
    g.initializer.extend(
        [
            nh.from_array(np.full((c, 1, 1, 1), scale, np.float32), "norm_w"),
            nh.from_array(np.full(c, off * scale, np.float32), "norm_b"),
        ]
    )
    groups = {"group": c} if c > 1 else {}
    conv = helper.make_node(
        "Conv", [INPUT_NAME, "norm_w", "norm_b"], [mul.output[0]], kernel_shape=[1, 1], **groups
    )
    rest = list(g.node)[2:]
    del g.node[:]
    g.node.extend([conv, *rest])
    return m


def drop_redundant_relu(model: Any) -> Any:
    """Relu(MaxPool(Relu(x))) == MaxPool(Relu(x)): the blog's second ReLU is a no-op."""
    g = model.graph
    by_output = {o: n for n in g.node for o in n.output}
    for node in list(g.node):
        pool = by_output.get(node.input[0]) if node.op_type == "Relu" else None
        first = by_output.get(pool.input[0]) if pool is not None and pool.op_type == "MaxPool" else None
        if first is not None and first.op_type == "Relu" and node.output[0] != OUTPUT_NAME:
            for c in _consumers(g, node.output[0]):
                c.input[:] = [pool.output[0] if s == node.output[0] else s for s in c.input]
            g.node.remove(node)
    return model


def static_batch(model: Any, batch: int = 1) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in (m.graph.input[0], m.graph.output[0]):
        d = vi.type.tensor_type.shape.dim[0]
        d.ClearField("dim_param")
        d.dim_value = batch
    return m


def floor_model() -> Any:
    """pixels [N,1,28,28] -> Flatten -> first 10 values as 'scores' [N,10].

    Before the runner checked outputs, the floor was a bare Identity; an output that honours the
    contract costs one Slice of 10 floats more (Flatten is a view in onnxruntime)."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [
            helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
            helper.make_node("Slice", ["flat", "starts", "ends", "axes"], [OUTPUT_NAME]),
        ],
        "floor",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
        initializer=[
            helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor("ends", TensorProto.INT64, [1], [10]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="lenet-edge")
    m.ir_version = 8
    set_metadata(m, {"model": "floor", "precision": "fp32", "purpose": "per-call floor of a runtime"})
    return m


def make_variants(
    fp32_path: Path, out_dir: Path, data_dir: Path | None = None, atol: float = 1e-4
) -> dict[str, Any]:
    import onnx
    import onnxslim

    from lenet_edge.quantize.ort_quant import load_fp32

    _, rec = load_fp32(fp32_path)  # our export, unchanged since, honouring the contract
    name = rec["model"]
    model = onnx.load(str(fp32_path))
    opt = onnxslim.slim(drop_redundant_relu(fold_normalisation(onnxslim.slim(model))))
    for p in model.metadata_props:
        if p.key not in {q.key for q in opt.metadata_props}:
            opt.metadata_props.add(key=p.key, value=p.value)
    set_metadata(
        opt,
        {
            "variant": "opt: onnxslim, normalisation folded into conv1, redundant ReLU dropped",
            "fp32_sha256": rec["onnx_sha256"],
        },
    )
    onnx.checker.check_model(opt, full_check=True)
    test = load_split("test", data_dir)
    pixels = to_pixels(test.images)
    ref = OnnxRunner(fp32_path).predict_batched(pixels)
    got = OnnxRunner(opt.SerializeToString()).predict_batched(pixels)
    diff = max_abs_diff(got, ref)
    same = int((got.argmax(1) == ref.argmax(1)).sum())
    if exceeds(diff, atol) or same != len(ref):
        raise ConversionError(
            f"{name}: optimised graph differs from the export: max |Δ| {diff:.3g}, top-1 same {same}/{len(ref)}"
        )
    b1 = static_batch(opt, 1)
    set_metadata(b1, {"variant": "opt, static batch 1"})
    got1 = OnnxRunner(b1.SerializeToString()).predict(pixels[:1])
    if exceeds(max_abs_diff(got1, got[:1]), atol):
        raise ConversionError(f"{name}: static-batch variant differs from the dynamic one")
    out = {}
    for suffix, m in (("fp32.opt", opt), ("fp32.opt.b1", b1)):
        data = m.SerializeToString()
        path = out_dir / f"{name}.{suffix}.onnx"
        write_bytes_atomic(path, data)
        out[suffix] = {
            "file": path.name,
            "sha256": sha256_bytes(data),
            "bytes": len(data),
            "nodes": len(m.graph.node),
            "ops": [n.op_type for n in m.graph.node],
        }
    record = {
        "model": name,
        "fp32": {"file": fp32_path.name, "sha256": rec["onnx_sha256"], "nodes": len(model.graph.node)},
        "variants": out,
        "max_abs_diff_vs_fp32": diff,
        "top1_identical": same,
        "images": len(ref),
    }
    write_json_atomic(out_dir / f"{name}.fp32.variants.json", record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = parser("export.variants", __doc__)
    add_model_flags(p)
    p.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"))
    p.add_argument("--data-dir", type=path_arg, default=None)
    args = p.parse_args(argv)
    import onnx

    names = selected(args.model, args.workflow)
    for name in names:
        fp32 = args.onnx_dir / f"{name}.fp32.onnx"
        if not fp32.is_file():
            raise ConversionError(f"{fp32}: not found (run `make export`)")
        r = make_variants(fp32, args.onnx_dir, args.data_dir or data_source(name))
        v = r["variants"]["fp32.opt"]
        print(
            f"{name}: {v['file']} ({r['fp32']['nodes']} -> {v['nodes']} nodes: {' '.join(v['ops'])}), "
            f"max |Δ| vs export {r['max_abs_diff_vs_fp32']:.1e}, top-1 identical {r['top1_identical']}/{r['images']}; "
            f"+ {r['variants']['fp32.opt.b1']['file']}"
        )
    floor = floor_model()
    onnx.checker.check_model(floor, full_check=True)
    write_bytes_atomic(args.onnx_dir / "floor.onnx", floor.SerializeToString())
    print(f"{args.onnx_dir / 'floor.onnx'}: per-call floor model")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
