"""Where an ONNX model file's bytes go: weights, biases, scales, zero points, graph, metadata.

    lenet-edge size build/onnx/lenet_pool.int8.s2d.ort.onnx [more.onnx ...] [--json PATH]

Each initializer gets the role of the input slot it reaches, followed through the constant nodes
that rebuild it at load (pack-padding's Pad/Reshape/Transpose, narrow-constants' Cast/Expand,
fold-weight-dq's Cast * scale): a QLinearConv's input 3 is a weight, 4 a scale, 8 a bias, and so
on. Bytes are serialized protobuf bytes (a tensor's data plus its name and header), so the rows
add up to the file size. `params` (from the file's record or --params) gives bytes per parameter;
the weight and bias entry counts give the floor (one byte per int8 weight, four per int32 bias).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.errors import ConfigError

# (op type, input index) -> role. Scales and zero points of activations and weights alike.
_Q = {1: "scales", 2: "zero points"}
ROLES: dict[str, dict[int, str]] = {
    "QLinearConv": {
        **_Q,
        3: "weights",
        4: "scales",
        5: "zero points",
        6: "scales",
        7: "zero points",
        8: "biases",
    },
    "QGemm": {**_Q, 3: "weights", 4: "scales", 5: "zero points", 6: "biases", 7: "scales", 8: "zero points"},
    "QLinearMatMul": {**_Q, 3: "weights", 4: "scales", 5: "zero points", 6: "scales", 7: "zero points"},
    "QuantizeLinear": _Q,
    "DequantizeLinear": _Q,  # its input 0 takes the role of where its output goes
    "Conv": {1: "weights", 2: "biases"},
    "FusedConv": {1: "weights", 2: "biases"},
    "ConvInteger": {1: "weights", 2: "zero points", 3: "zero points"},
    "Gemm": {1: "weights", 2: "biases"},
    "FusedGemm": {1: "weights", 2: "biases"},
    "MatMul": {1: "weights"},
    "MatMulInteger": {1: "weights", 2: "zero points", 3: "zero points"},
    "Add": {1: "biases"},
    "Mul": {0: "weights", 1: "scales"},  # fold-weight-dq: Cast(int8 weight) * per-channel scale
}
LAYOUT = {"Reshape", "Transpose", "Pad", "Cast", "Expand", "Squeeze", "Unsqueeze", "Concat"}
ORDER = ("weights", "biases", "scales", "zero points", "graph constants", "graph", "metadata", "other")


def _roles(model: Any, consts: dict[str, tuple[Any, int]]) -> dict[str, str]:
    """Initializer name -> role, through constant layout nodes (their outputs inherit the role of
    where they go; their own shape/pads/value inputs are graph constants)."""
    g = model.graph
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, k))

    def role(name: str, seen: frozenset[str] = frozenset()) -> str:
        for n, k in consumers.get(name, []):
            if n.output[0] in seen:
                continue
            if k in ROLES.get(n.op_type, {}):
                return ROLES[n.op_type][k]
            if n.op_type in LAYOUT or n.op_type == "DequantizeLinear":
                return role(n.output[0], seen | {name}) if k == 0 else "graph constants"
        return "other"

    return {name: role(name) for name in consts}


def _constants(model: Any) -> dict[str, tuple[Any, int]]:
    """Initializers and Constant nodes (paddle2onnx writes weights as those): name -> (tensor,
    serialized bytes)."""
    from onnx import helper

    out = {t.name: (t, len(t.SerializeToString())) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = (helper.get_attribute_value(n.attribute[0]), len(n.SerializeToString()))
    return out


def size_profile(path: Path, params: int | None = None) -> dict[str, Any]:
    """Bytes by role for one ONNX file (rows add up to its size)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ConfigError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
    if not model.graph.node:  # protobuf reads an empty file as an empty model
        raise ConfigError(f"{path}: not an ONNX model (no graph nodes)")
    total = path.stat().st_size
    consts = _constants(model)
    roles = _roles(model, consts)
    by: dict[str, int] = dict.fromkeys(ORDER, 0)
    data: dict[str, int] = dict.fromkeys(ORDER, 0)
    entries: dict[str, int] = dict.fromkeys(ORDER, 0)
    for name, (t, nbytes) in consts.items():
        r, a = roles[name], numpy_helper.to_array(t)
        by[r] += nbytes
        data[r] += a.nbytes
        entries[r] += a.size
    by["metadata"] = sum(len(p.SerializeToString()) for p in model.metadata_props) + len(
        model.doc_string.encode()
    )
    by["graph"] = total - sum(v for k, v in by.items() if k != "graph")
    if params is None:
        params = _params_from_record(path)
    out: dict[str, Any] = {
        "file": path.name,
        "bytes": total,
        "rows": {
            k: {"bytes": v, "tensor_bytes": data[k] if k not in ("graph", "metadata") else None}
            for k, v in by.items()
            if v
        },
        "weight_entries": entries["weights"],
        "bias_entries": entries["biases"],
    }
    if params:
        out["params"] = params
        out["bytes_per_param"] = round(total / params, 4)
    return out


def _params_from_record(path: Path) -> int | None:
    from lenet_edge.runtime.files import quantize_record_path, read_json

    for rec_path in (quantize_record_path(path), path.with_suffix(".export.json")):
        try:
            rec = read_json(rec_path)
        except Exception:
            continue
        if isinstance(rec, dict) and type(rec.get("params")) is int and rec["params"] > 0:
            return rec["params"]
    return None


def to_markdown(profiles: list[dict[str, Any]]) -> str:
    lines = []
    for p in profiles:
        per = f", {p['bytes_per_param']:.3f} B/param ({p['params']:,} params)" if p.get("params") else ""
        lines += [
            f"{p['file']}: {p['bytes']:,} bytes{per}",
            "",
            "| part | bytes | share |",
            "|---|---:|---:|",
        ]
        for k, v in p["rows"].items():
            lines.append(f"| {k} | {v['bytes']:,} | {100 * v['bytes'] / p['bytes']:.1f} % |")
        lines += ["", f"{p['weight_entries']:,} weight and {p['bias_entries']:,} bias entries stored.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("optimize.size", __doc__)
    p.add_argument("models", nargs="+", type=path_arg, help="ONNX files")
    p.add_argument(
        "--params", type=int, default=None, help="parameter count (default: from the file's record)"
    )
    add_common(p, "json")
    args = p.parse_args(argv)
    if args.params is not None and args.params < 1:
        raise ConfigError(f"--params {args.params}: must be >= 1")
    if args.params is not None and args.params > 10**12:  # 1e26 printed "0.000 B/param"
        raise ConfigError(f"--params {args.params:.3g}: must be at most 10^12")
    profiles = []
    for m in args.models:
        if m.suffix != ".onnx":
            raise ConfigError(f"{m}: the size profile reads ONNX files (.onnx)")
        if not m.is_file():
            raise ConfigError(f"{m}: no such file")
        try:
            profiles.append(size_profile(m, args.params))
        except (ValueError, TypeError, IndexError, KeyError, RecursionError) as e:
            # a graph the checker would refuse: tensor data shorter than its dims, a node without
            # outputs, an undefined element type, a layout chain deeper than Python's stack
            raise ConfigError(
                f"{m}: not an ONNX graph the size profile can read ({e.__class__.__name__}: {str(e)[:160]})"
            ) from e
    print(to_markdown(profiles), end="")
    if args.json:
        from lenet_edge.runtime.files import write_json_atomic

        write_json_atomic(args.json, {"profiles": profiles})
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
