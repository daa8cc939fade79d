"""Reading and editing .tflite flatbuffers with LiteRT's own tools (device environment): the shared
helpers of the passes that edit converted files (quantize/tflite_edit.py, quantize/tflite_front.py)
and of the LiteRT layer search (quantize/litert_search.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lenet_edge.runtime.errors import ConversionError


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


def read_tflite(path: Path) -> Any:
    """The flatbuffer object model of `path`; unreadable bytes are one ConversionError."""
    _, fbu = litert_schema()
    try:
        return fbu.read_model(str(path))
    except Exception as e:  # the flatbuffer reader raises whatever the bytes make it raise
        why = f"{type(e).__module__}.{type(e).__name__}: {str(e)[:120]}".removeprefix("builtins.")
        raise ConversionError(f"{path}: not a readable .tflite file ({why})") from e
