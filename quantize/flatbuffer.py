"""Reading and editing .tflite flatbuffers with LiteRT's own tools (device environment): the shared
helpers of the passes that edit converted files (quantize/tflite_edit.py, quantize/tflite_front.py)
and of the LiteRT layer search (quantize/litert_search.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.errors import ConversionError

WEIGHTED = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}  # op kind -> output-channel axis


def litert_schema() -> tuple[Any, Any]:
    """LiteRT's generated flatbuffer schema module and its flatbuffer_utils (imported on use)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    return schema, fbu


def op_kind(model: Any, op: Any) -> str:
    """The builtin operator name of `op` ("CONV_2D", ...), or its code if unnamed."""
    schema, fbu = litert_schema()
    code = fbu.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
    return next((k for k, v in vars(schema.BuiltinOperator).items() if v == code), str(code))


def buffer_uses(g: Any) -> dict[int, int]:
    """How many tensors of subgraph `g` name each buffer (a shared buffer must not be edited)."""
    n: dict[int, int] = {}
    for t in g.tensors:
        n[t.buffer] = n.get(t.buffer, 0) + 1
    return n


def tensor_readers(g: Any) -> dict[int, int]:
    """How many times each tensor of subgraph `g` is read: as an op input, or as a graph output."""
    n: dict[int, int] = {}
    for op in g.operators:
        for i in op.inputs:
            if i >= 0:
                n[i] = n.get(i, 0) + 1
    for i in g.outputs:
        n[i] = n.get(i, 0) + 1
    return n


def constant_values(model: Any, t: Any, dtype: Any) -> np.ndarray:
    """The values of constant tensor `t`, flat (its buffer's bytes as `dtype`; read-only)."""
    return np.frombuffer(bytes(model.buffers[t.buffer].data), dtype=dtype)


def constant_array(model: Any, t: Any, dtype: Any) -> np.ndarray:
    """The values of constant tensor `t` (its buffer's bytes as `dtype`, in its shape)."""
    return constant_values(model, t, dtype).reshape(t.shape)


def set_constant(model: Any, t: Any, a: np.ndarray) -> None:
    """Store `a`'s bytes (its dtype, C order) as the values of constant tensor `t`."""
    model.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)


def per_channel_symmetric(t: Any, kind: str) -> bool:
    """Whether the int8 weights `t` of a `kind` op (one of WEIGHTED) are symmetric (zero points 0,
    finite positive scales), per tensor or per channel on the op's output-channel axis."""
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return False
    n = t.shape[WEIGHTED[kind]]
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else [], dtype=np.int64)
    scale = np.asarray(q.scale, dtype=np.float64)
    per_axis = len(q.scale) == n and q.quantizedDimension == WEIGHTED[kind]
    return (
        (per_axis or len(q.scale) == 1)
        and not np.any(zp)
        and bool(np.all(np.isfinite(scale)) and np.all(scale > 0))
    )


def read_tflite(path: Path) -> Any:
    """The flatbuffer object model of `path`; unreadable bytes are one ConversionError."""
    _, fbu = litert_schema()
    try:
        return fbu.read_model(str(path))
    except Exception as e:  # the flatbuffer reader raises whatever the bytes make it raise
        why = f"{type(e).__module__}.{type(e).__name__}: {str(e)[:120]}".removeprefix("builtins.")
        raise ConversionError(f"{path}: not a readable .tflite file ({why})") from e


def opcode(model: Any, kind: str, version: int = 1) -> int:
    """The operator-code index of builtin `kind` at `version` or above, added if the file has none."""
    schema, fbu = litert_schema()
    code = getattr(schema.BuiltinOperator, kind)
    for i, oc in enumerate(model.operatorCodes):
        if fbu.get_builtin_code_from_operator_code(oc) == code and oc.version >= version:
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def behind_dequantize(model: Any, op: Any, slot: int = 1) -> Any:
    """Operator `op` computes in float from its int8 constant input `slot` (weights with their
    quantization): a DEQUANTIZE op feeds it a new float tensor (scale x q), the int8 tensor stays in
    the file. The interpreter's kernel dequantizes a constant input once, in Prepare, and XNNPACK
    takes the result as static weights (measured: the same time as float-stored weights), so the
    file keeps its int8 size. Returns the DEQUANTIZE op; the caller puts it before every other op.
    Its version is TFLite's for an int8 input: 5 per channel, 2 per tensor (TF's op_version table)."""
    schema, _ = litert_schema()
    g = model.subgraphs[0]
    w = g.tensors[op.inputs[slot]]
    q = w.quantization
    if w.type != schema.TensorType.INT8 or q is None or q.scale is None or len(q.scale) == 0:
        raise ValueError(f"{w.name!r}: not an int8 tensor with its quantization")
    if model.buffers[0].data is not None and len(model.buffers[0].data):
        raise ValueError("buffer 0 is not the empty buffer")  # TFLite's convention, which the converter keeps
    f = copy.deepcopy(w)  # its shape and rank fields; the values come from the DEQUANTIZE
    f.type, f.quantization, f.buffer = schema.TensorType.FLOAT32, None, 0
    f.name = (w.name or b"w") + b"_dequantized"
    g.tensors.append(f)
    deq = schema.OperatorT()
    deq.opcodeIndex = opcode(model, "DEQUANTIZE", version=5 if len(q.scale) > 1 else 2)
    deq.inputs, deq.outputs = [op.inputs[slot]], [len(g.tensors) - 1]
    inputs = list(op.inputs)
    inputs[slot] = len(g.tensors) - 1
    op.inputs = inputs
    return deq
