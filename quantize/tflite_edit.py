"""Per-tensor FULLY_CONNECTED weights in a full-int8 .tflite, for tflite-runtime's XNNPACK.

tflite-runtime 2.14's XNNPACK delegate takes no FULLY_CONNECTED whose int8 weights are quantized
per output channel, which is what the converter writes: those layers then run on its built-in
kernels, 7x slower with AVX2 kernels (lenet_pool full-int8 251 against 36 us, docs/tflite.md).
Each such layer gets one weight scale, its largest channel's (so no channel's range is cut), every
weight re-rounded to that grid (at most half a step of it), and its int32 bias re-expressed at
the matching scale (input scale x weight scale). The file is checked afterwards like any INT8 file
(results/tolerances.json, both interpreters). Runs in the device environment (LiteRT's
flatbuffer tools): `python -m lenet_edge.quantize.tflite_edit FILE` rewrites FILE (atomically) and
prints what it changed as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.quantize.flatbuffer import (
    buffer_uses,
    constant_array,
    litert_schema,
    op_kind,
    per_channel_symmetric,
    read_tflite,
    set_constant,
)
from lenet_edge.runtime.cli import parser, path_arg, run
from lenet_edge.runtime.errors import ConversionError
from lenet_edge.runtime.files import write_bytes_atomic


def _empty(model: Any, t: Any) -> bool:
    data = model.buffers[t.buffer].data
    return data is None or len(data) == 0


def _why_not(model: Any, op: Any, buffer_uses: dict[int, int]) -> str:
    """'' if this FULLY_CONNECTED can take per-tensor weights here, else why not."""
    schema, _ = litert_schema()
    g = model.subgraphs[0]
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return "no bias"
    x, w, b = (g.tensors[i] for i in op.inputs[:3])
    if w.type != schema.TensorType.INT8 or b.type != schema.TensorType.INT32:
        return "not int8 weights with an int32 bias"
    if not per_channel_symmetric(w, "FULLY_CONNECTED") or len(w.quantization.scale) < 2:
        return "weights not symmetric per output channel"
    if x.quantization is None or x.quantization.scale is None or len(x.quantization.scale) != 1:
        return "input not quantized per tensor"
    if any(buffer_uses.get(t.buffer, 0) != 1 or _empty(model, t) for t in (w, b)):
        return "weights or bias shared or not constant"
    return ""


def fc_weights_per_tensor(model: Any) -> list[dict[str, Any]]:
    """Rewrite each eligible FULLY_CONNECTED of subgraph 0 in place; one entry per such layer."""
    g = model.subgraphs[0]
    uses = buffer_uses(g)
    done = []
    k = 0
    for op in g.operators:
        if op_kind(model, op) != "FULLY_CONNECTED":
            continue
        label = f"FULLY_CONNECTED:{k}"
        k += 1
        why = _why_not(model, op, uses)
        if why:
            done.append({"layer": label, "changed": False, "why": why})
            continue
        x, w, b = (g.tensors[i] for i in op.inputs[:3])
        scales = np.asarray(w.quantization.scale, np.float64)
        scale = float(scales.max())
        real = constant_array(model, w, np.int8).astype(np.float64) * scales[:, None]
        q = np.clip(np.rint(real / scale), -127, 127).astype(np.int8)
        x_scale = float(x.quantization.scale[0])
        bias = np.rint(constant_array(model, b, np.int32) * (scales / scale)).astype(np.int32)
        set_constant(model, w, q)
        set_constant(model, b, bias)
        w.quantization.scale, w.quantization.zeroPoint = [scale], [0]
        b.quantization.scale, b.quantization.zeroPoint = [x_scale * scale], [0]
        w.quantization.quantizedDimension = b.quantization.quantizedDimension = 0
        step = float(np.abs(q * scale - real).max() / scale)
        done.append({"layer": label, "changed": True, "scale": scale, "max_rounding_steps": round(step, 4)})
    return done


def rewrite(path: Path) -> list[dict[str, Any]]:
    """Per-tensor FC weights in the .tflite at `path`, written back atomically."""
    _, fbu = litert_schema()
    model = read_tflite(path)
    done = fc_weights_per_tensor(model)
    if any(d["changed"] for d in done):
        write_bytes_atomic(path, bytes(fbu.convert_object_to_bytearray(model)))
    return done


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.tflite_edit", __doc__)
    p.add_argument("tflite", type=path_arg, help="a full-int8 .tflite file, rewritten in place")
    args = p.parse_args(argv)
    if not args.tflite.is_file():
        raise ConversionError(f"{args.tflite}: file not found")
    print(json.dumps(rewrite(args.tflite)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
