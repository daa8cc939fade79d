"""Per-target choice: reads a benchmark result (runtime.bench JSON) and the artifacts' records;
writes, per model and runtime, the artifact to deploy and the evidence for it.

A candidate is one of lenet-edge's own artifacts (never a stock one) that passed its checks: an
INT8 ONNX model whose quantize record meets results/tolerances.json, a .tflite file published by
`make tflite` (published means checked), or an FP32 file (each is checked against the export when
made). The choice is the fastest p50 at batch 1, one thread, in that one interleaved run; the
fastest INT8 candidate is recorded beside it. The CPU comes from the benchmark's environment
capture, never from a machine name. `--no-timing` records the documented default instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import add_common, parser
from lenet_edge.runtime.errors import ConfigError
from lenet_edge.runtime.files import quantize_record_path, read_json, write_json_atomic

# The documented default per runtime (README, "Per-target choice"): what the measurements on both
# x86 machine kinds and aarch64 favour for INT8 so far; used by --no-timing (CI).
DEFAULTS = {
    "onnxruntime": "int8.s2d.ort",
    "ai-edge-litert": "int8.dynamic.tflite",
    "tflite-runtime": "int8.full.tflite",
}


def _passes(onnx_dir: Path, row: dict[str, Any], tol: dict[str, Any]) -> bool:
    """The artifact passed its checks: INT8 ONNX by its quantize record; others when they exist."""
    from lenet_edge.quantize.checks import int8_failures

    f = onnx_dir / row["file"]
    if not f.is_file():
        return False
    if row["file"].endswith(".onnx") and "int8" in row["format"]:
        rec_path = quantize_record_path(f)
        if not rec_path.is_file():
            return False
        rec = read_json(rec_path)
        if isinstance(rec, dict) and "search" in rec:  # a published search choice: only while fresh
            from lenet_edge.quantize.published import stale_reason

            if stale_reason(f):
                return False
        return isinstance(rec, dict) and not rec.get("stock") and not int8_failures(rec, tol)
    return True


def select(bench: dict[str, Any], onnx_dir: Path, timing: bool = True) -> dict[str, Any]:
    from lenet_edge.quantize.checks import load_tolerances, tolerances_for
    from lenet_edge.workflow import workflows

    if not isinstance(bench, dict) or not isinstance(bench.get("results"), list):
        raise ConfigError("not a runtime.bench result (no 'results')")
    tol = load_tolerances()
    rows = [
        r
        for r in bench["results"]
        if r.get("batch") == 1 and r.get("threads") == 1 and not r.get("stock") and r.get("model") != "floor"
    ]
    choices = []
    for model in sorted({r["model"] for r in rows}):
        # a model with a workflow is checked against its own tolerances
        mtol = tolerances_for(model) if model in workflows() else tol
        for rt in sorted({r["runtime"] for r in rows if r["model"] == model}):
            cands = [
                r for r in rows if r["model"] == model and r["runtime"] == rt and _passes(onnx_dir, r, mtol)
            ]
            if not cands:
                continue
            best = min(cands, key=lambda r: r["latency_ms_p50"])
            int8 = [r for r in cands if "int8" in r["format"]]
            best8 = min(int8, key=lambda r: r["latency_ms_p50"]) if int8 else None
            dflt = [r for r in cands if r["format"] == DEFAULTS.get(rt)]
            default = min(dflt, key=lambda r: r["latency_ms_p50"]) if dflt else None
            pick = best if timing else (default or best)
            choices.append(
                {
                    "model": model,
                    "runtime": rt,
                    "choice": {
                        "file": pick["file"],
                        "call": pick["call"],
                        "latency_ms_p50": pick["latency_ms_p50"],
                    },
                    "fastest_int8": best8
                    and {
                        "file": best8["file"],
                        "call": best8["call"],
                        "latency_ms_p50": best8["latency_ms_p50"],
                    },
                    "candidates": sorted(
                        (
                            {"file": r["file"], "call": r["call"], "latency_ms_p50": r["latency_ms_p50"]}
                            for r in cands
                        ),
                        key=lambda c: c["latency_ms_p50"],
                    ),
                }
            )
    env = bench.get("environment", {})
    return {
        "method": "fastest measured p50 (batch 1, one thread), one interleaved run"
        if timing
        else "documented default",
        "cpu": env.get("cpu"),
        "machine": env.get("machine"),
        "runtime_versions": {k: env.get(k) for k in ("onnxruntime", "numpy") if k in env},
        # a process-wide runtime setting the choice was measured with (runtime/amx.py): deploy with it
        "amx": (bench.get("settings") or {}).get("amx", "on"),
        "defaults": DEFAULTS,
        "choices": choices,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.select", __doc__)
    p.add_argument(
        "--bench", type=Path, default=Path("build/bench/bench.json"), help="runtime.bench result JSON"
    )
    p.add_argument(
        "--onnx-dir", type=Path, default=Path("build/onnx"), help="the artifacts and their records"
    )
    add_common(
        p,
        "json",
        json={"default": Path("build/bench/targets.json"), "help": "default build/bench/targets.json"},
    )
    p.add_argument(
        "--timing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-timing: the documented default",
    )
    args = p.parse_args(argv)
    res = select(read_json(args.bench), args.onnx_dir, args.timing)
    write_json_atomic(args.json, res)
    for c in res["choices"]:
        i8 = c["fastest_int8"]
        print(
            f"{c['model']} on {c['runtime']}: {c['choice']['file']} ({c['choice']['call']}, "
            f"{1e3 * c['choice']['latency_ms_p50']:.1f} µs)"
            + (f"; fastest INT8 {i8['file']} {1e3 * i8['latency_ms_p50']:.1f} µs" if i8 else "")
        )
    print(f"wrote {args.json} ({res['method']})")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
