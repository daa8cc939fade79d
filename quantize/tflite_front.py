"""Pattern passes over a .tflite file: the first conv's pad moved into the conv, a float front for a
full-int8 file, and a 1 x 1 affine conv folded into the next conv. They edit the flatbuffer with
LiteRT's own tools (device environment).

pad-into-conv (FP32 and dynamic-range files, and the float front below): a float PAD / PADV2 of constant c, padding
  only height and width, p on every side, feeding a SPACE_TO_DEPTH of block b (or the conv itself,
  b = 1), feeding a CONV_2D with VALID padding, stride 1, no dilation and a k x k kernel, k odd and
  p = b (k - 1) / 2, every tensor between them read by that one op  ->  ADD(-c) (nothing when
  c = 0) -> SPACE_TO_DEPTH -> CONV_2D with SAME padding, its bias + c * sum(weights). Exact: SAME
  pads (k - 1) / 2 cells of b x b pixels, which is p pixels, with 0, which is c before the shift.
  Why: tflite-runtime 2.14's XNNPACK takes no PADV2, so the pad ran on the built-in kernels between
  two delegate partitions (lenet_stride FP32 on the Xeon: 26.1 -> 22.6 us without it, docs/tflite.md).
float-front (full-int8 files whose input is QUANTIZEd): the ops from the input to the first CONV_2D
  with a kernel larger than 1 x 1 (pads, SPACE_TO_DEPTH, the 1 x 1 normalisation conv; nothing
  else) compute in float on float input pixels, each weight dequantized from the file's own int8
  ((q - zero point) x scale, so the front computes what the int8 file's front computes, without its
  roundings), and one QUANTIZE to that conv's int8 output follows; the rest stays int8. Then
  pad-into-conv and fold-affine-1x1. Why: that conv, after space-to-depth, has 4 input channels,
  and XNNPACK's int8 kernels took 6.7 us for it against 3.4 us in float (Xeon, tflite-runtime
  2.14); the uint8 input QUANTIZE also ran outside XNNPACK, a float -> int8 QUANTIZE runs inside.
  With --reach convs the front goes on through the last spatial conv of the chain of convs, pads,
  space/depth reorders and max pools that starts at the input (each conv's weights dequantized the
  same way; a max pool and a reorder are exact in float), so only the layers after it (the fully
  connected ones, in LeNet) run int8. Why: XNNPACK 2.14's AVX-512 float convs beat its int8 ones at
  these shapes, its int8 FULLY_CONNECTED beats float (lenet_stride on the Xeon, probe: 21.3 us with
  the first conv in float, 19.3 us with every conv, FP32 21.6); with AVX2 kernels the first-conv
  front wins (25.7 against 36.3 us). Which one a target runs is `select`'s measurement.
  In either reach each front conv keeps the file's int8 weights behind a DEQUANTIZE op (the
  interpreter dequantizes a constant once, at load, and XNNPACK takes the result as static
  weights: the same speed as float weights, probe), so a float front costs no file size.
fold-affine-1x1 (in the float front): a float 1 x 1 CONV_2D with one input and one output channel
  and no activation (y = a x + c, the normalisation kept as a conv) read only by [SPACE_TO_DEPTH
  ->] CONV_2D -> ADD(c / a), and that conv's weights x a. Exact; one op fewer (lenet_pool's
  float-front file 15.7 -> 14.9 us in tflite-runtime on the Xeon, probe).
A graph that does not match is left as it is, and the result says why. The files are checked
afterwards like any other (quantize.tflite: FP32 against ONNX, INT8 against tolerances).

`python -m lenet_edge.quantize.tflite_front pad-into-conv FILE` rewrites FILE (pad-into-conv only);
`... float-front SRC DEST [--reach first|convs]` writes DEST; each prints what it did as JSON.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.quantize.flatbuffer import (
    behind_dequantize,
    buffer_uses,
    constant_array,
    constant_values,
    litert_schema,
    op_kind,
    opcode,
    read_tflite,
    set_constant,
    tensor_readers,
)
from lenet_edge.runtime.cli import parser, path_arg, run
from lenet_edge.runtime.errors import ConversionError
from lenet_edge.runtime.files import write_bytes_atomic

LAYOUT = ("PAD", "PADV2", "SPACE_TO_DEPTH")  # ops a float front may hold besides its convs
POOLS = ("MAX_POOL_2D", "DEPTH_TO_SPACE")  # and, reaching past the first conv, these (exact in float)
REACH = ("first", "convs")


def _data(model: Any, t: Any) -> bytes | None:
    d = model.buffers[t.buffer].data
    return None if d is None or len(d) == 0 else bytes(d)


def _const(model: Any, g: Any, a: np.ndarray, name: str) -> int:
    """A new float32 constant tensor holding `a`; its index."""
    schema, _ = litert_schema()
    buf = schema.BufferT()
    buf.data = np.frombuffer(a.astype(np.float32).tobytes(), np.uint8)
    model.buffers.append(buf)
    t = schema.TensorT()
    t.shape, t.type, t.buffer, t.name = (
        np.array(a.shape, np.int32),
        schema.TensorType.FLOAT32,
        len(model.buffers) - 1,
        name.encode(),
    )
    g.tensors.append(t)
    return len(g.tensors) - 1


def _paddings(model: Any, t: Any) -> np.ndarray | None:
    schema, _ = litert_schema()
    raw = _data(model, t)
    dtype = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}.get(t.type)
    if raw is None or dtype is None:
        return None
    return constant_values(model, t, dtype).reshape(-1, 2)


def _why_not_pad(model: Any, g: Any, j: int, readers: dict[int, int]) -> tuple[str, dict[str, Any]]:
    """'' and the match if operator j starts PAD -> [SPACE_TO_DEPTH] -> CONV_2D as the docstring says."""
    schema, _ = litert_schema()
    T = schema.TensorType
    ops = g.operators
    pad = ops[j]
    x = g.tensors[pad.inputs[0]]
    if x.type != T.FLOAT32 or len(x.shape) != 4:
        return "input not a float 4-D tensor", {}
    pads = _paddings(model, g.tensors[pad.inputs[1]])
    if pads is None or pads.shape != (4, 2):
        return "paddings not a constant 4 x 2", {}
    p = int(pads[1, 0])
    if pads[0].any() or pads[3].any() or not (pads[1:3] == p).all() or p < 1:
        return f"not the same pad on every side of height and width ({pads.tolist()})", {}
    c = 0.0
    if op_kind(model, pad) == "PADV2":
        raw = _data(model, g.tensors[pad.inputs[2]])
        if raw is None or g.tensors[pad.inputs[2]].type != T.FLOAT32 or len(raw) != 4:
            return "pad value not one float constant", {}
        c = float(constant_values(model, g.tensors[pad.inputs[2]], np.float32)[0])
    chain, k = [pad], j + 1
    while k < len(ops) and op_kind(model, ops[k]) == "SPACE_TO_DEPTH" and len(chain) == 1:
        chain.append(ops[k])
        k += 1
    if k >= len(ops) or op_kind(model, ops[k]) != "CONV_2D":
        return "no CONV_2D after the pad", {}
    conv = ops[k]
    chain.append(conv)
    for a, b in zip(chain, chain[1:], strict=False):
        if b.inputs[0] != a.outputs[0] or readers.get(a.outputs[0], 0) != 1:
            return "the pad's output is read by more than the next op", {}
    block = chain[1].builtinOptions.blockSize if len(chain) == 3 else 1
    o = conv.builtinOptions
    if len(conv.inputs) < 3 or conv.inputs[2] < 0:
        return "conv without a bias", {}
    w, bias = g.tensors[conv.inputs[1]], g.tensors[conv.inputs[2]]
    if w.type != T.FLOAT32 or bias.type != T.FLOAT32 or _data(model, w) is None or _data(model, bias) is None:
        return "conv weights or bias not float constants", {}
    if buffer_uses(g).get(bias.buffer, 0) != 1:
        return "conv bias shared", {}
    kh, kw = int(w.shape[1]), int(w.shape[2])
    if o.padding != schema.Padding.VALID or (o.strideH, o.strideW) != (1, 1):
        return "conv not VALID with stride 1", {}
    if (o.dilationHFactor, o.dilationWFactor) not in ((1, 1), (0, 0)) or kh != kw or kh % 2 == 0:
        return "conv kernel not square and odd, or dilated", {}
    if p != block * (kh - 1) // 2 or block * (kh - 1) % 2:
        return f"pad {p} is not block {block} x (kernel {kh} - 1) / 2", {}
    if any(s % block for s in x.shape[1:3]):
        return "height or width not a multiple of the block", {}
    return "", {"c": c, "pad": p, "block": block, "kernel": kh, "conv": conv, "chain": chain}


def pad_into_conv(model: Any) -> dict[str, Any]:
    """The first match in subgraph 0, rewritten in place; what was done (or why not)."""
    g = model.subgraphs[0]
    readers = tensor_readers(g)
    whys = []
    for j, op in enumerate(g.operators):
        if op_kind(model, op) not in ("PAD", "PADV2"):
            continue
        why, m = _why_not_pad(model, g, j, readers)
        if why:
            whys.append(f"op {j}: {why}")
            continue
        schema, _ = litert_schema()
        conv, chain, c = m["conv"], m["chain"], m["c"]
        x_index = op.inputs[0]
        x = g.tensors[x_index]
        w, bias = g.tensors[conv.inputs[1]], g.tensors[conv.inputs[2]]
        weights = constant_array(model, w, np.float32).astype(np.float64)
        b = constant_values(model, bias, np.float32).astype(np.float64)
        set_constant(model, bias, (b + c * weights.sum(axis=(1, 2, 3))).astype(np.float32))
        conv.builtinOptions.padding = schema.Padding.SAME
        if c != 0.0:  # ADD(-c) writes the pad's output tensor, now of the input's shape
            add = schema.OperatorT()
            add.opcodeIndex = opcode(model, "ADD")
            add.inputs = [x_index, _const(model, g, np.array([-c], np.float32), "pad_value_shift")]
            add.outputs = list(op.outputs)
            add.builtinOptionsType, add.builtinOptions = (
                schema.BuiltinOptions.AddOptions,
                schema.AddOptionsT(),
            )
            g.tensors[op.outputs[0]].shape = np.array(x.shape, np.int32)
            g.tensors[op.outputs[0]].shapeSignature = None
            g.operators[j] = add
        else:  # nothing to shift: the next op reads the input itself
            chain[1].inputs = [x_index, *list(chain[1].inputs)[1:]]
            del g.operators[j]
        if m["block"] > 1:
            s2d_out = g.tensors[chain[1].outputs[0]]
            n, h, wd, ch = (int(v) for v in x.shape)
            bl = m["block"]
            s2d_out.shape, s2d_out.shapeSignature = (
                np.array([n, h // bl, wd // bl, ch * bl * bl], np.int32),
                None,
            )
        return {
            "pass": "pad-into-conv",
            "changed": True,
            "pad": m["pad"],
            "pad_value": c,
            "block": m["block"],
            "kernel": m["kernel"],
            "op": "ADD" if c != 0.0 else "none",
        }
    return {"pass": "pad-into-conv", "changed": False, "why": "; ".join(whys) or "no PAD or PADV2"}


def _dequantized(model: Any, t: Any) -> np.ndarray:
    """(q - zero point) x scale of an int8/int32 constant, per its quantized dimension."""
    schema, _ = litert_schema()
    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}[t.type]
    q = constant_values(model, t, dtype).astype(np.float64).reshape([int(s) for s in t.shape] or [1])
    scale = np.asarray(t.quantization.scale, np.float64)
    zero = np.asarray(t.quantization.zeroPoint if t.quantization.zeroPoint is not None else [0], np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[t.quantization.quantizedDimension] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
    return ((q - zero) * scale).astype(np.float32)


def _as_float(t: Any) -> None:
    schema, _ = litert_schema()
    t.type, t.quantization = schema.TensorType.FLOAT32, None


def _why_not_conv(model: Any, g: Any, k: int) -> str:
    """'' if CONV_2D k has int8 weights and an int32 bias of its own (a float front can take it)."""
    schema, _ = litert_schema()
    T = schema.TensorType
    op = g.operators[k]
    w = g.tensors[op.inputs[1]]
    b = g.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    if (
        w.type != T.INT8
        or b is None
        or b.type != T.INT32
        or _data(model, w) is None
        or _data(model, b) is None
    ):
        return f"op {k} (CONV_2D) has no int8 weights with an int32 bias"
    uses = buffer_uses(g)
    if uses.get(w.buffer, 0) != 1 or uses.get(b.buffer, 0) != 1:
        return f"op {k} (CONV_2D) shares its weights or bias"
    return ""


def _spatial(g: Any, op: Any) -> bool:
    w = g.tensors[op.inputs[1]]
    return int(w.shape[1]) * int(w.shape[2]) > 1


def _why_not_front(model: Any, g: Any, reach: str = "first") -> tuple[str, int]:
    """'' and the index of the last front op (a spatial conv), or why the file has no such float front.
    reach "first": through the first conv with a kernel > 1 x 1 (layout ops and 1 x 1 convs before
    it); "convs": through the last spatial conv of the chain of convs, layout ops and max pools that
    starts at the input (refused when that is the first one: the same front as "first")."""
    schema, _ = litert_schema()
    ops = g.operators
    if (
        len(g.inputs) != 1
        or not ops
        or op_kind(model, ops[0]) != "QUANTIZE"
        or ops[0].inputs[0] != g.inputs[0]
    ):
        return "the input is not QUANTIZEd by the first op", -1
    if g.tensors[ops[0].outputs[0]].type != schema.TensorType.INT8:
        return "the input QUANTIZE does not write int8", -1
    readers = tensor_readers(g)
    allowed = (*LAYOUT, "CONV_2D") + (POOLS if reach == "convs" else ())
    prev, spatial, end = ops[0].outputs[0], [], ""
    for k in range(1, len(ops)):
        op, kind = ops[k], op_kind(model, ops[k])
        if op.inputs[0] != prev or readers.get(prev, 0) != 1:
            end = f"op {k} ({kind}) is not the next link of one chain from the input"
            break
        if kind not in allowed:
            end = f"op {k} ({kind}) comes before any spatial conv" if not spatial else f"op {k} ({kind})"
            break
        if kind == "CONV_2D":
            why = _why_not_conv(model, g, k)
            if why:
                end = why
                break
            if _spatial(g, op):
                spatial.append(k)
                if reach == "first":
                    return "", k
        if kind == "PADV2":
            cv, out = g.tensors[op.inputs[2]], g.tensors[op.outputs[0]]
            if cv.type != schema.TensorType.INT8 or _data(model, cv) is None or out.quantization is None:
                end = f"op {k} (PADV2) has no int8 constant pad value"
                break
        prev = op.outputs[0]
    if not spatial:
        return end or "no spatial CONV_2D", -1
    if len(spatial) == 1:  # reach "convs" with one spatial conv in the chain
        return f"one spatial conv before {end or 'the end'}: the same front as the first conv's", -1
    return "", spatial[-1]


def float_front(model: Any, reach: str = "first") -> dict[str, Any]:
    """The float front of a full-int8 model, in place, through the first spatial conv or (reach
    "convs") the last of the leading chain; what was done (or why not)."""
    g = model.subgraphs[0]
    why, last = _why_not_front(model, g, reach)
    if why:
        return {"pass": "float-front", "reach": reach, "changed": False, "why": why}
    quantize, front = g.operators[0], g.operators[1 : last + 1]
    x = g.inputs[0]
    front[0].inputs = [x, *list(front[0].inputs)[1:]]
    _as_float(g.tensors[x])
    kinds: list[str] = []
    kept: dict[int, tuple[np.ndarray, Any]] = {}  # each front conv's int8 weights, as the file had them
    for op in front:
        kind = op_kind(model, op)
        kinds.append(kind)
        if kind == "PADV2":  # int8 PADV2 writes its constant's raw value on its output's grid
            out, cv = g.tensors[op.outputs[0]], g.tensors[op.inputs[2]]
            raw = float(constant_values(model, cv, np.int8)[0])
            real = (raw - float(out.quantization.zeroPoint[0])) * float(out.quantization.scale[0])
            set_constant(model, cv, np.array([real], np.float32).reshape([int(s) for s in cv.shape] or [1]))
            _as_float(cv)
        if kind == "CONV_2D":
            w = g.tensors[op.inputs[1]]
            kept[id(op)] = (constant_values(model, w, np.int8).copy(), copy.deepcopy(w.quantization))
            for i in op.inputs[1:3]:
                t = g.tensors[i]
                real = _dequantized(model, t)
                set_constant(model, t, real)
                _as_float(t)
        if op is not front[-1]:
            _as_float(g.tensors[op.outputs[0]])
    conv = front[-1]
    int8_out = conv.outputs[0]
    f = copy.deepcopy(g.tensors[int8_out])
    f.name = (f.name or b"") + b"_float"
    f.buffer = 0
    _as_float(f)
    g.tensors.append(f)
    conv.outputs = [len(g.tensors) - 1]
    quantize.inputs, quantize.outputs = [len(g.tensors) - 1], [int8_out]
    g.operators = [*front, quantize, *g.operators[last + 1 :]]
    then = [pad_into_conv(model), fold_affine_1x1(model)]
    weights = _weights_behind_dequantize(model, g, kept)
    return {
        "pass": "float-front",
        "reach": reach,
        "changed": True,
        "front": kinds,
        "then": then,
        "weights": weights,
    }


def _weights_behind_dequantize(model: Any, g: Any, kept: dict[int, tuple[np.ndarray, Any]]) -> dict[str, Any]:
    """Each front conv's float weights stored as the file's own int8 again, behind a DEQUANTIZE
    (run once, at load: the interpreter's kernel dequantizes a constant input in Prepare, and
    XNNPACK takes the result as static weights), so the float front costs no file size. The scale
    per output channel is re-derived from the float weights (the 1 x 1 fold multiplied them by a)
    and used only if q x scale gives them back to float32 rounding; otherwise they stay float."""
    schema, _ = litert_schema()
    done, kept_float = 0, []
    for op in [op for op in g.operators if id(op) in kept]:
        q, quant = kept[id(op)]
        w = g.tensors[op.inputs[1]]
        real = constant_values(model, w, np.float32).astype(np.float64).reshape(-1)
        axis = int(quant.quantizedDimension or 0) if len(quant.scale) > 1 else 0
        shape = [int(v) for v in w.shape]
        qq = np.moveaxis(q.astype(np.float64).reshape(shape), axis, 0).reshape(
            shape[axis] if len(quant.scale) > 1 else 1, -1
        )
        rr = np.moveaxis(real.reshape(shape), axis, 0).reshape(qq.shape)
        norm = (qq * qq).sum(axis=1)
        scale = np.where(
            norm > 0, (qq * rr).sum(axis=1) / np.where(norm > 0, norm, 1), np.asarray(quant.scale, np.float64)
        )
        scale32 = scale.astype(np.float32)
        back = qq * scale32.astype(np.float64)[:, None]
        tol = 1e-6 * max(float(np.abs(rr).max()), np.finfo(np.float32).tiny)
        if not (
            np.all(np.isfinite(scale32)) and np.all(scale32 > 0) and float(np.abs(back - rr).max()) <= tol
        ):
            kept_float.append(op_kind(model, op))
            continue
        w.type, w.quantization = schema.TensorType.INT8, copy.deepcopy(quant)
        w.quantization.scale = [float(v) for v in scale32]
        w.quantization.zeroPoint = [0] * len(w.quantization.scale)
        set_constant(model, w, q)
        g.operators.insert(0, behind_dequantize(model, op))
        done += 1
    return {"int8_behind_dequantize": done, "kept_float": kept_float}


def _why_not_affine(model: Any, g: Any, j: int, readers: dict[int, int]) -> tuple[str, Any]:
    """'' and the conv to scale if operator j is a foldable 1 x 1 affine conv (see fold_affine_1x1)."""
    schema, _ = litert_schema()
    T = schema.TensorType
    ops, op = g.operators, g.operators[j]
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return "no bias", None
    x, w, b = (g.tensors[i] for i in op.inputs[:3])
    if any(t.type != T.FLOAT32 for t in (x, w, b)) or [int(v) for v in w.shape] != [1, 1, 1, 1]:
        return "not a float 1 x 1 conv with one input and one output channel", None
    o = op.builtinOptions
    if o.fusedActivationFunction != schema.ActivationFunctionType.NONE or (o.strideH, o.strideW) != (1, 1):
        return "an activation or a stride", None
    if _data(model, w) is None or _data(model, b) is None:
        return "weights or bias not constant", None
    a = float(constant_values(model, w, np.float32)[0])
    if not np.isfinite(a) or a == 0.0:
        return "its weight is 0 or not finite", None
    k, prev = j + 1, op.outputs[0]
    if k < len(ops) and op_kind(model, ops[k]) == "SPACE_TO_DEPTH" and ops[k].inputs[0] == prev:
        if readers.get(prev, 0) != 1:
            return "its output has other readers", None
        prev, k = ops[k].outputs[0], k + 1
    if (
        k >= len(ops)
        or op_kind(model, ops[k]) != "CONV_2D"
        or ops[k].inputs[0] != prev
        or readers.get(prev, 0) != 1
    ):
        return "not read by one CONV_2D (through at most a SPACE_TO_DEPTH)", None
    cw = g.tensors[ops[k].inputs[1]]
    if cw.type != T.FLOAT32 or _data(model, cw) is None or buffer_uses(g).get(cw.buffer, 0) != 1:
        return "the next conv's weights are not float constants of its own", None
    return "", ops[k]


def fold_affine_1x1(model: Any) -> dict[str, Any]:
    """A float 1 x 1 CONV_2D with one input and one output channel and no activation (y = a x + c:
    the normalisation as a conv) read only by [SPACE_TO_DEPTH ->] CONV_2D becomes ADD(c / a), and
    that conv's weights are multiplied by a: conv(a (x + c / a)) = conv(a x + c), its padding
    included (0 after the ADD is y = 0). One op fewer; the first in subgraph 0, in place."""
    schema, _ = litert_schema()
    g = model.subgraphs[0]
    readers = tensor_readers(g)
    why = "no 1 x 1 CONV_2D"
    for j, op in enumerate(g.operators):
        if op_kind(model, op) != "CONV_2D":
            continue
        why, conv = _why_not_affine(model, g, j, readers)
        if why:
            continue
        w, b = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]]
        a = float(constant_values(model, w, np.float32)[0])
        c = float(constant_values(model, b, np.float32)[0])
        cw = g.tensors[conv.inputs[1]]
        scaled = constant_values(model, cw, np.float32).astype(np.float64) * a
        set_constant(model, cw, scaled.astype(np.float32))
        add = schema.OperatorT()
        add.opcodeIndex = opcode(model, "ADD")
        add.inputs = [op.inputs[0], _const(model, g, np.array([c / a], np.float32), "affine_shift")]
        add.outputs = list(op.outputs)
        add.builtinOptionsType, add.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
        g.operators[j] = add
        return {"pass": "fold-affine-1x1", "changed": True, "scale": a, "shift": c}
    return {"pass": "fold-affine-1x1", "changed": False, "why": why}


def rewrite(src: Path, dest: Path, which: str, reach: str = "first") -> dict[str, Any]:
    """Pass `which` on `src`, written to `dest` atomically when it changed something."""
    _, fbu = litert_schema()
    model = read_tflite(src)
    done = pad_into_conv(model) if which == "pad-into-conv" else float_front(model, reach)
    if done["changed"]:
        write_bytes_atomic(dest, bytes(fbu.convert_object_to_bytearray(model)))
    return done


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.tflite_front", __doc__)
    sub = p.add_subparsers(dest="which", required=True)
    a = sub.add_parser("pad-into-conv", help="move the first conv's pad into the conv (FILE rewritten)")
    a.add_argument("tflite", type=path_arg)
    b = sub.add_parser("float-front", help="full-int8 SRC -> DEST with its front in float")
    b.add_argument("tflite", type=path_arg)
    b.add_argument("dest", type=path_arg)
    b.add_argument(
        "--reach",
        choices=REACH,
        default="first",
        help="first: through the first spatial conv (default); convs: through the last conv of the "
        "chain of convs, pads, space/depth reorders and max pools from the input (int8 from there)",
    )
    args = p.parse_args(argv)
    if not args.tflite.is_file():
        raise ConversionError(f"{args.tflite}: file not found")
    dest = args.tflite if args.which == "pad-into-conv" else args.dest
    print(json.dumps(rewrite(args.tflite, dest, args.which, getattr(args, "reach", "first"))))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
