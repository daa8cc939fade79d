"""LiteRT INT8 by measurement: which weighted layers of the dynamic-range file run on int8 weights.

ONNX Runtime gets its per-target recipe from `lenet-edge search`; this is the same for LiteRT
(ai-edge-litert with its default XNNPACK delegate, batch 1, one thread). For each model:
1. the source is `<model>.int8.dynamic.tflite`, the dynamic-range file `make tflite` converted and
   checked (int8 weights, float activations quantized on the fly; the converter leaves weight
   tensors under 1,024 elements in float);
2. a candidate is the set of weighted layers (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, named by
   kind and order, never by tensor name) that compute on int8 weights (XNNPACK's hybrid kernels);
   the others compute in float. A layer whose weights are int8 in the source computes in float from
   those same int8 weights through a DEQUANTIZE op, which XNNPACK folds when it prepares the model
   (the file keeps INT8 size; logits identical to float-stored weights, measured); a float layer
   taken to int8 gets symmetric per-output-channel int8 weights, as the converter writes them. Only
   the weight path changes, edited with LiteRT's own flatbuffer tools; a layer whose weights are
   shared, not finite, or of an op kind the file has no int8 layer of (its op version may not cover
   hybrid kernels) is left as it is, and the record says why;
3. every candidate is checked on all 10,000 test images in LiteRT against results/tolerances.json
   (top-1 drop and agreement against the FP32 .tflite, McNemar, and the file at most
   int8_dynamic_size_ratio_max of the FP32 file); one that fails is recorded with the reason and
   never timed;
4. coordinate descent: from the faster of the converter's file and the all-int8 one, each round
   toggles one layer at a time, times the checked toggles in one interleaved child process with the
   current best and then each as a pair with it (runtime.bench, alternating blocks); a toggle is kept
   only if the 95 % interval of its paired ratio lies below KEEP_IF_PAIRED_BELOW (quantize.search's
   rule); it stops when a round keeps nothing.
Measured on the Xeon (bench, batch 1, one thread): AVX2 kernels run the hybrid conv slower than
float, AVX-512 VNNI kernels run every layer faster in int8, AMX kernels none: one file cannot be
fastest everywhere, so the choice is made where the file runs.
5. AMX (`--amx auto`, the default, on a CPU that has it): XNNPACK takes AMX tile kernels for its
   int8 GEMMs whenever Linux grants them, and for nets this small the tile set-up costs more than
   it saves; refusing AMX is a process-wide setting (runtime/amx.py), so it is part of the recipe.
   The same search runs again in a child process with AMX refused; the two choices are then timed
   as a pair, each in its own process, driven in lockstep (runtime.bench.pair_lockstep), and the
   AMX-refused one is kept only if its paired interval lies below quantize.search.AMX_OFF_BELOW
   (the same file in two processes, spread over four launches, measured 0.998-1.008). The record then says
   `amx: off`, which bench and select honour and a deployment must repeat (`--amx off`); the ONNX
   Runtime search (`lenet-edge search`) does the same.

Writes the record (every candidate, its checks and p50, the CPU from the environment capture, never
a machine name) as JSON and Markdown; publishes each model's choice as <model>.int8.search.tflite
+ its record (quantize.published), which `make bench` times and `select` can deploy. Runs in the
device environment (ai-edge-litert): `make search` calls it with .venv-device.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.quantize.flatbuffer import (
    WEIGHTED,
    behind_dequantize,
    buffer_uses,
    constant_array,
    litert_schema,
    op_kind,
    per_channel_symmetric,
    set_constant,
    tensor_readers,
)
from lenet_edge.quantize.search import (
    Measure,
    _confirm_fastest,
    add_search_flags,
    amx_header,
    amx_lines,
    amx_record,
    amx_to_choose,
    check_search_flags,
    pair_amx,
    refuse_amx_if_asked,
    search_with_amx_refused,
    write_result,
)
from lenet_edge.runtime.bench import KEEP_IF_PAIRED_BELOW
from lenet_edge.runtime.cli import parser, path_arg, run
from lenet_edge.runtime.env import command_line, describe_cpu, provenance_text
from lenet_edge.runtime.errors import ConfigError, LenetEdgeError
from lenet_edge.workflow import add_model_flags, data_source, selected

SOURCE = "int8.dynamic.tflite"  # <model>.<SOURCE>: what `make tflite` converted and checked
FP32 = "fp32.tflite"
CALL = "run"  # the TFLite runner's only call path


@dataclass(frozen=True)
class Layer:
    label: str  # "CONV_2D:0": the k-th op of that kind, in graph order
    op: int  # operator index in subgraph 0
    int8: bool  # int8 weights in the source
    why_fixed: str  # '' if the search may toggle it, else why not


def layers(model: Any) -> list[Layer]:
    """The weighted layers of subgraph 0, in order, with whether each may be toggled."""
    schema, _ = litert_schema()
    g = model.subgraphs[0]
    kinds = [op_kind(model, op) for op in g.operators]
    uses, shared = tensor_readers(g), buffer_uses(g)
    int8_kinds = {
        k
        for k, op in zip(kinds, g.operators, strict=True)
        if k in WEIGHTED and g.tensors[op.inputs[1]].type == schema.TensorType.INT8
    }
    seen: dict[str, int] = {}
    out = []
    for i, (kind, op) in enumerate(zip(kinds, g.operators, strict=True)):
        if kind not in WEIGHTED:
            continue
        label = f"{kind}:{seen.get(kind, 0)}"
        seen[kind] = seen.get(kind, 0) + 1
        t = g.tensors[op.inputs[1]]
        buf = model.buffers[t.buffer].data
        why = ""
        if t.type not in (schema.TensorType.INT8, schema.TensorType.FLOAT32):
            why = f"weights of type {t.type}, neither int8 nor float32"
        elif buf is None or len(buf) == 0:
            why = "weights computed in the graph, not a constant"
        elif uses[op.inputs[1]] != 1 or shared[t.buffer] != 1:
            why = "weights shared with another op or tensor"
        elif t.type == schema.TensorType.FLOAT32 and kind not in int8_kinds:
            why = f"no {kind} in the file has int8 weights (its op version may not cover hybrid kernels)"
        elif t.type == schema.TensorType.FLOAT32 and not np.all(
            np.isfinite(constant_array(model, t, np.float32))
        ):
            why = "weights not finite"
        elif t.type == schema.TensorType.INT8 and not per_channel_symmetric(t, kind):
            why = "int8 weights not symmetric per channel on the output axis"
        out.append(Layer(label, i, t.type == schema.TensorType.INT8, why))
    return out


def _axis_shape(ndim: int, axis: int) -> list[int]:
    return [-1 if d == axis else 1 for d in range(ndim)]


def _to_int8(model: Any, t: Any, kind: str) -> None:
    """float weights -> symmetric int8 per output channel (zero point 0, [-127, 127]), as the
    converter's dynamic-range quantization writes them."""
    schema, _ = litert_schema()
    w = constant_array(model, t, np.float32).astype(np.float64)
    axis = WEIGHTED[kind]
    amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(_axis_shape(w.ndim, axis))), -127, 127).astype(np.int8)
    set_constant(model, t, q)
    qp = schema.QuantizationParametersT()
    qp.scale, qp.zeroPoint, qp.quantizedDimension = scale.tolist(), [0] * scale.size, axis
    t.type, t.quantization = schema.TensorType.INT8, qp


def with_int8_layers(data: bytes, int8: frozenset[str]) -> bytes:
    """The file with exactly the toggleable layers named in `int8` computing on int8 weights
    (hybrid kernels), the others in float: from their int8 weights through DEQUANTIZE where the
    source has them in int8, else from their float weights; a fixed layer stays as it is. Raises
    ConfigError for a fixed layer asked to change."""
    _, fbu = litert_schema()
    model = fbu.read_model_from_bytearray(bytearray(data))
    g = model.subgraphs[0]
    dequantize = []
    for layer in layers(model):
        if (layer.label in int8) == layer.int8:
            continue
        if layer.why_fixed:
            raise ConfigError(f"{layer.label}: cannot change: {layer.why_fixed}")
        op = g.operators[layer.op]
        if layer.int8:
            dequantize.append(behind_dequantize(model, op))
        else:
            _to_int8(model, g.tensors[op.inputs[1]], layer.label.split(":")[0])
    g.operators = dequantize + list(g.operators)  # constants in, so first is in order
    return bytes(fbu.convert_object_to_bytearray(model))


def _label(all_layers: list[Layer], int8: frozenset[str]) -> str:
    fp = [x.label.replace(":", "") for x in all_layers if x.label not in int8]
    return "int8" + (f"-fp32_{'+'.join(fp)}" if fp else "-all")


@dataclass
class Reference:
    """The FP32 .tflite's test-set results, for the checks."""

    top1: float
    pred: np.ndarray
    correct: np.ndarray
    bytes: int


def _check(name: str, f: Path, ref: Reference, tol: dict[str, Any], data_dir: Path | None) -> dict[str, Any]:
    """Accuracy, agreement, McNemar and size against the FP32 .tflite; `passed` and `why`."""
    from lenet_edge.quantize.checks import int8_failures
    from lenet_edge.quantize.stats import mcnemar_exact
    from lenet_edge.runtime.evaluate import evaluate_onnx
    from lenet_edge.runtime.mnist import load_split

    acc, logits = evaluate_onnx(f, data_dir)
    if not np.all(np.isfinite(logits)):
        return {"passed": False, "why": "non-finite logits"}
    pred = logits.argmax(1)
    correct = pred == load_split("test", data_dir).labels
    rec = {
        "model": name,
        "test_top1": acc.top1,
        "accuracy_drop_pp": round(100 * (ref.top1 - acc.top1), 4),
        "agreement_with_fp32": float((pred == ref.pred).mean()),
        "mcnemar": mcnemar_exact(ref.correct, correct),
        "bytes": f.stat().st_size,
        "size_ratio_vs_fp32": f.stat().st_size / ref.bytes,
    }
    fails = int8_failures(rec, {**tol, "int8_size_ratio_max": tol["int8_dynamic_size_ratio_max"]})
    del rec["model"]
    return {**rec, "passed": not fails, **({"why": "; ".join(fails)} if fails else {})}


def search_model(
    name: str,
    onnx_dir: Path,
    work: Path,
    data_dir: Path | None,
    timing: bool = True,
    runs: int = 2000,
    rounds: int = 20,
    say: Any = print,
) -> dict[str, Any]:
    from lenet_edge.quantize.checks import tolerances_for
    from lenet_edge.runtime.evaluate import evaluate_onnx
    from lenet_edge.runtime.files import inside, sha256_bytes, sha256_file
    from lenet_edge.runtime.mnist import load_split

    src, fp32 = onnx_dir / f"{name}.{SOURCE}", onnx_dir / f"{name}.{FP32}"
    for f in (src, fp32):
        if not f.is_file():
            raise LenetEdgeError(f"{f}: missing; run `make tflite` first")
    _, fbu = litert_schema()
    data = src.read_bytes()
    try:
        all_layers = layers(fbu.read_model_from_bytearray(bytearray(data)))
    except Exception as e:  # the flatbuffer reader's own exceptions on a damaged file
        raise LenetEdgeError(f"{src}: not a readable .tflite file ({type(e).__name__})") from e
    if not all_layers:
        raise LenetEdgeError(f"{src}: no CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED layer to choose for")
    tol = tolerances_for(name)
    acc, logits = evaluate_onnx(fp32, data_dir)
    pred = logits.argmax(1)
    ref = Reference(acc.top1, pred, pred == load_split("test", data_dir).labels, fp32.stat().st_size)
    converter = frozenset(x.label for x in all_layers if x.int8)
    rows: dict[frozenset[str], dict[str, Any]] = {}

    def build(int8: frozenset[str], origin: str) -> dict[str, Any]:
        if int8 in rows:
            return rows[int8]
        label = _label(all_layers, int8)
        out = inside(work, work / f"{name}.int8.{label}.tflite")
        row: dict[str, Any] = {"label": label, "int8_layers": sorted(int8), "origin": origin}
        try:
            edited = data if int8 == converter else with_int8_layers(data, int8)
            out.write_bytes(edited)
            row |= {"file": out.name, "sha256": sha256_bytes(edited), **_check(name, out, ref, tol, data_dir)}
        except LenetEdgeError as e:
            row |= {"file": None, "passed": False, "why": str(e)[:300]}
        rows[int8] = row
        return row

    first = [build(converter, "converter")]
    toggleable = [x for x in all_layers if not x.why_fixed]
    every = frozenset(x.label for x in toggleable) | frozenset(
        x.label for x in all_layers if x.int8 and x.why_fixed
    )
    if every != converter:
        first.append(build(every, "all int8"))
    result: dict[str, Any] = {
        "model": name,
        "source": {"file": src.name, "sha256": sha256_file(src)},
        "layers": [
            {"layer": x.label, "int8_in_source": x.int8, **({"fixed": x.why_fixed} if x.why_fixed else {})}
            for x in all_layers
        ],
        "fp32": {"file": fp32.name, "test_top1": ref.top1, "bytes": ref.bytes},
    }
    if not timing:  # the documented default, checked but not timed (CI)
        pick = rows[converter]
        if not pick["passed"]:
            raise LenetEdgeError(
                f"{name}: the converter's dynamic-range file failed its checks: {pick['why']}"
            )
        return result | {
            "candidates": list(rows.values()),
            "fp32_p50_us": None,
            "choice": {k: pick[k] for k in ("label", "file", "int8_layers")} | {"p50_us": None},
            "method": "documented default (--no-timing): the converter's dynamic-range file",
        }
    passing = [r for r in first if r["passed"]]
    if not passing:
        raise LenetEdgeError(f"{name}: no candidate passed its checks: {first[0]['why']}")
    measure = Measure(runs=runs, rounds=rounds, call=CALL)
    t = measure([fp32] + [work / r["file"] for r in passing])
    for r in passing:
        r["p50_us"] = t[r["file"]]
    best = _confirm_fastest(passing, work, measure)
    say(f"{name}: start {best['label']} {best['p50_us']:.1f} µs (FP32 {t[fp32.name]:.1f} µs)")
    for step in range(len(toggleable)):
        cur = frozenset(best["int8_layers"])
        trials = [
            build(cur ^ {x.label}, f"round {step + 1}") for x in toggleable if cur ^ {x.label} not in rows
        ]
        timed = [r for r in trials if r["passed"]]
        if not timed:
            break
        t2 = measure([work / best["file"]] + [work / r["file"] for r in timed])
        vs = measure.versus([work / r["file"] for r in timed], work / best["file"], t2)
        for r in timed:
            r["p50_us"], r["vs_current_best"] = t2[r["file"]], vs[r["file"]]
        ok = [r for r in timed if measure.clearly_better(r["vs_current_best"])]
        if not ok:
            break
        best = min(ok, key=lambda r: r["vs_current_best"]["ratio"])
        say(
            f"{name}: round {step + 1}: {best['label']} ({best['vs_current_best']['ratio']:.3f} x the previous best)"
        )
    return result | {
        "candidates": list(rows.values()),
        "fp32_p50_us": t[fp32.name],
        "choice": {k: best[k] for k in ("label", "file", "int8_layers", "p50_us")},
        "choice_over_fp32_first_run": best["p50_us"] / t[fp32.name],
        "method": "coordinate descent over int8/float weights per layer, interleaved timing + pairs "
        "(ai-edge-litert, batch 1, one thread)",
    }


def choose_amx(m: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Module step 5: the same search for m["model"] with AMX refused, in a child process; its choice
    against m's as a cross-process pair; m with `amx` and `amx_choice`, and if refusing wins, that
    choice (rebuilt here from the same source: the same bytes, checked by sha256) as m's choice."""
    from lenet_edge.runtime.files import inside, sha256_bytes

    name = m["model"]
    off = search_with_amx_refused("lenet_edge.quantize.litert_search", name, args, work, [])
    if off["source"]["sha256"] != m["source"]["sha256"]:
        raise LenetEdgeError(f"{m['source']['file']}: changed while the search ran; run `make search` again")
    pick = next(r for r in off["candidates"] if r["file"] == off["choice"]["file"])
    data = (args.onnx_dir / m["source"]["file"]).read_bytes()
    converter = frozenset(x["layer"] for x in m["layers"] if x["int8_in_source"])
    chosen = frozenset(pick["int8_layers"])
    edited = data if chosen == converter else with_int8_layers(data, chosen)
    if sha256_bytes(edited) != pick["sha256"]:
        raise LenetEdgeError(f"{name}: the AMX-refused choice rebuilt here differs from the file it checked")
    f_off = inside(work, work / f"{name}.int8.{pick['label']}.amx-off.tflite")
    f_off.write_bytes(edited)
    on = m["choice"]
    v, keep_off = pair_amx(name, (f_off, pick["label"]), (work / on["file"], on["label"]), CALL, args.runs)
    m = amx_record(m, off, v, keep_off)
    if not keep_off:
        return m
    row = pick | {"file": f_off.name, "origin": "search with AMX refused", "amx": "off"}
    return m | {
        "candidates": m["candidates"] + [row],
        "fp32_p50_us": off["fp32_p50_us"],  # the p50s of that choice's own run
        "choice": {k: row[k] for k in ("label", "file", "int8_layers", "p50_us")},
        "choice_over_fp32_first_run": off["choice_over_fp32_first_run"],
        "method": m["method"] + "; AMX refused and on searched alike, compared as a cross-process pair",
    }


def to_markdown(res: dict[str, Any]) -> str:

    lines = [
        f"# LiteRT INT8 search ({describe_cpu(res['cpu'])}; ai-edge-litert {res['ai_edge_litert']}"
        + amx_header(res)
        + ")",
        "",
        f"{provenance_text(res)} p50 µs, batch 1, one thread, XNNPACK (LiteRT's default); the "
        "candidates of each step timed in one interleaved run, then each as a pair with the current best "
        f"(alternating blocks; median ratio and 95 % interval in the last column); a toggle is kept only if "
        f"the interval lies below {KEEP_IF_PAIRED_BELOW}. Labels name the layers on float weights.",
        "",
    ]
    for m in res["models"]:
        off = m.get("amx_choice")
        lines += [f"## {m['model']}", ""] + _model_md(m | off["on"] if off else m)
        if off:
            lines += [f"### {m['model']} with AMX refused (the same search in a child process)", ""]
            lines += _model_md(off["search"]) + amx_lines(m)
    return "\n".join(lines)


def _model_md(m: dict[str, Any]) -> list[str]:
    from lenet_edge.quantize.search import _versus

    fixed = [f"{x['layer']} ({x['fixed']})" for x in m["layers"] if x.get("fixed")]
    lines = [
        f"Source `{m['source']['file']}`; layers {', '.join(x['layer'] for x in m['layers'])}"
        + (f"; left as converted: {'; '.join(fixed)}" if fixed else "")
        + ".",
        "",
        "| candidate | from | checks | top-1 % | agreement % | bytes | p50 µs | × current best |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in m["candidates"]:
        if r.get("amx") == "off":
            continue  # the AMX-refused choice: listed with its own search
        checks = "pass" if r["passed"] else "fail: " + r["why"].replace("|", "/")[:100]
        top1 = f"{100 * r['test_top1']:.2f}" if "test_top1" in r else ""
        agree = f"{100 * r['agreement_with_fp32']:.2f}" if "agreement_with_fp32" in r else ""
        size = f"{r['bytes']:,}" if "bytes" in r else ""
        p50 = f"{r['p50_us']:.1f}" if r.get("p50_us") else ""
        vs = _versus(r.get("vs_current_best") or r.get("vs_fastest_first_run"))
        lines.append(
            f"| `{r['label']}` | {r['origin']} | {checks} | {top1} | {agree} | {size} | {p50} | {vs} |"
        )
    fp = f"{m['fp32_p50_us']:.1f} µs" if m.get("fp32_p50_us") else "not measured"
    took = f" ({m['choice']['p50_us']:.1f} µs)" if m["choice"]["p50_us"] else f" ({m['method']})"
    return lines + [
        "",
        f"FP32 `{m['fp32']['file']}` in the same run: {fp}. **Choice: `{m['choice']['label']}`**{took}.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.litert_search", __doc__)
    add_model_flags(p)
    p.add_argument(
        "--onnx-dir", type=path_arg, default=Path("build/onnx"), help="where the .tflite files are"
    )
    add_search_flags(
        p,
        "build/bench/search.litert.json",
        "--no-timing: check the converter's file and record it as the documented default (CI)",
        "LiteRT (XNNPACK)",
    )
    p.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write each model's choice to --onnx-dir as <model>.int8.search.tflite + its record, for "
        "bench and select (default: yes)",
    )
    args = p.parse_args(argv)
    rounds = check_search_flags(args)
    refuse_amx_if_asked(args)
    try:
        import ai_edge_litert
    except ImportError as e:
        raise LenetEdgeError(
            "ai-edge-litert is not installed here: run it with .venv-device (`make search`)"
        ) from e

    from lenet_edge.runtime.env import environment
    from lenet_edge.runtime.files import owned_temp_dir

    names = selected(args.model, args.workflow)
    version = getattr(ai_edge_litert, "__version__", "?")
    env = environment({"ai-edge-litert": version})
    res: dict[str, Any] = {
        "command": command_line("search-litert", argv),
        "cpu": env["cpu"],
        "ai_edge_litert": version,
        "amx": args.amx,
        "environment": env,
        "models": [],
    }
    with owned_temp_dir("search-litert") as work:
        for name in names:
            m = search_model(
                name,
                args.onnx_dir,
                work,
                args.data_dir or data_source(name),
                args.timing,
                args.runs,
                rounds,
            )
            if amx_to_choose(args, env["cpu"]):
                m = choose_amx(m, args, work)
            res["models"].append(m)
            c = m["choice"]
            took = (
                f"{c['p50_us']:.1f} µs (FP32 in the same run: {m['fp32_p50_us']:.1f} µs)"
                if c["p50_us"]
                else m["method"]
            )
            print(f"{name}: {c['label']} {took}")
            if args.publish:
                from lenet_edge.quantize.published import publish_tflite

                out = publish_tflite(args.onnx_dir, name, work, m, describe_cpu(env["cpu"]))
                print(f"{name}: published {out}")
    write_result(args.json, res, to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
