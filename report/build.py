"""make report: reports/REPORT.md and its plots, from result files only (never retrains).

Reads results/reference.json (FP32 and ORT INT8 of the committed models), the quantize and TFLite
records (per-layer SQNR, TFLite accuracy and size) from build/onnx/ or else their committed copies
in results/records/, the newest x86 benchmark run on a whole ISA (results/bench/; its fastest files
per runtime get a row, with a top-1 only from a record of the same sha256), the aarch64
check (results/arm/), the multi-seed study (results/study.json) and the invariance study
(results/invariance.json). A missing input leaves its section saying which command makes it.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lenet_edge.report.goals import section as goals_section
from lenet_edge.report.stats import binomial_se_pp
from lenet_edge.runtime.bench import SCHEMA as BENCH_SCHEMA
from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.env import describe_cpu, whole_isa
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import atomic_path, read_json, remove_stale_temp_files, write_problem
from lenet_edge.runtime.numeric import non_finite_at
from lenet_edge.workflow import comparison, get

# The pair the report compares, labels and colours: from the workflow files (workflows/*.toml).
# POOL is the baseline (the blog's LeNet), STRIDE the workflow that names it as its [study] baseline.
MODELS = comparison()
POOL, STRIDE = MODELS
LABEL = {m: get(m).label for m in MODELS}
COLORS = {m: get(m).color for m in MODELS}


class ReportError(LenetEdgeError):
    """A result file the report needs is unreadable."""


def _load(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except Exception as e:  # a corrupt result file is a user-facing problem, not a traceback
        raise ReportError(f"{path}: not a readable result file ({e.__class__.__name__}: {e})") from e
    # no command writes NaN or Infinity into a result: one there would become a verdict ("+nan pp")
    bad = non_finite_at(data)
    if bad:
        raise ReportError(f"{path}: holds NaN or Infinity at {bad}; rerun the command that makes it")
    return data


@contextmanager
def _reading(*files: Any) -> Iterator[None]:
    """A section reads these result files: one of another shape than the pipeline writes (a key
    missing, a string for a number, a list for an object) is one error naming them."""
    try:
        yield
    except (
        KeyError,
        TypeError,
        AttributeError,
        ValueError,
        IndexError,
        StopIteration,
        ZeroDivisionError,
    ) as e:
        named = " or ".join(str(f) for f in files if f) or "a result file"
        raise ReportError(
            f"{named}: not the shape the pipeline writes ({e.__class__.__name__}: {str(e)[:120]}); "
            "rerun the command that makes it"
        ) from e


def _fp32_source_sha(rec: Any) -> Any:
    """The sha256 of the FP32 export a quantize or TFLite record was made from (None if it says none)."""
    if not isinstance(rec, dict):
        return None
    if isinstance(rec.get("fp32"), dict):  # a quantize record
        return rec["fp32"].get("onnx_sha256")
    return (rec.get("source") or {}).get("export_sha256") if isinstance(rec.get("source"), dict) else None


def _record(onnx_dir: Path, results: Path, name: str, model: str, ref: dict[str, Any]) -> Any | None:
    """A stage record: this checkout's build/onnx/ if it was made from the reference models (its FP32
    source is this checkout's export of the checkpoint results/reference.json names), else the
    committed copy in results/records/. A plain `make` trains its own checkpoints and converts
    those to TFLite: their records describe other weights than the rest of the report."""
    local = _load(onnx_dir / name)
    export = _load(onnx_dir / f"{model}.fp32.export.json")
    want = (ref.get("models") or {}).get(model, {}).get("checkpoint_sha256")
    if (
        isinstance(export, dict)
        and want
        and export.get("checkpoint_sha256") == want
        and _fp32_source_sha(local) == export.get("onnx_sha256")
    ):
        return local
    return _load(results / "records" / name)


RUNTIME_LABEL = {"onnxruntime": "ORT", "ai-edge-litert": "LiteRT", "tflite-runtime": "tflite-runtime"}


def _dict(x: Any) -> dict[str, Any]:
    """x if it is a JSON object, else an empty one (a hand-edited record of the wrong shape matches nothing)."""
    return x if isinstance(x, dict) else {}


def _bench_row(bench: dict[str, Any] | None, file: str) -> dict[str, Any]:
    """The first row the benchmark recorded for a file it timed (an empty one if it did not)."""
    return next((r for r in _dict(bench).get("results") or [] if _dict(r).get("file") == file), {})


def _bench_sha(bench: dict[str, Any] | None, file: str) -> str | None:
    """The sha256 the benchmark recorded for a file it timed (None if it did not time it)."""
    return _bench_row(bench, file).get("file_sha256")


def _same_file_record(onnx_dir: Path, results: Path, name: str, key: str, sha: str | None) -> Any | None:
    """The record `name` (this checkout's build/onnx/, else results/records/) that describes exactly
    the file with this sha256 (its `key`); None if neither does."""
    if not sha:
        return None
    for rec in (_load(onnx_dir / name), _load(results / "records" / name)):
        if isinstance(rec, dict) and rec.get(key) == sha:
            return rec
    return None


def _same_top1_as_export(
    onnx_dir: Path, results: Path, model: str, file: str, sha: str | None, export_sha: str | None
) -> bool:
    """Whether a record shows this FP32 graph (sha) giving the export's (export_sha) top-1 on every
    test image: `make optimize`'s record of it, or the ORT-optimized variants' record."""
    if not sha or not export_sha:
        return False

    def every_image(c: dict[str, Any]) -> bool:
        n = c.get("images")
        return isinstance(n, int) and n > 0 and c.get("top1_identical") == n

    opt = _same_file_record(onnx_dir, results, file.replace(".onnx", ".optimize.json"), "onnx_sha256", sha)
    if opt is not None:
        c = _dict(opt.get("check"))
        return (
            c.get("passed") is True
            and every_image(c)
            and _dict(opt.get("fp32")).get("onnx_sha256") == export_sha
        )
    name = f"{model}.fp32.variants.json"
    for rec in (_load(onnx_dir / name), _load(results / "records" / name)):
        if (
            isinstance(rec, dict)
            and _dict(rec.get("fp32")).get("sha256") == export_sha
            and every_image(rec)
            and any(_dict(v).get("sha256") == sha for v in _dict(rec.get("variants")).values())
        ):
            return True
    return False


def _checked_top1(
    onnx_dir: Path,
    results: Path,
    ref: dict[str, Any],
    bench: dict[str, Any],
    model: str,
    file: str,
    runtime: str | None = None,
) -> float | None:
    """Test top-1 of a file the benchmark timed, from the stage record of that very file (same
    sha256): a quantize or LiteRT-search record's own figure, or for an optimized FP32 graph the
    reference FP32 top-1 when `make optimize` found the top-1 identical on every test image of the
    export this run timed. None when no record matches."""
    sha = _bench_sha(bench, file)
    if file.endswith(".tflite"):
        rec = _same_file_record(onnx_dir, results, f"{file}.quantize.json", "sha256", sha)
        top1 = _dict(_dict(rec).get("checks")).get("test_top1")
        if rec is None:  # a file of `make tflite`: its conversion record checked every output
            top1 = _tflite_output_top1(onnx_dir, results, model, file, sha, runtime)
    elif ".fp32." in file:
        same = _same_top1_as_export(
            onnx_dir, results, model, file, sha, _bench_sha(bench, f"{model}.fp32.onnx")
        )
        top1 = ref["models"][model]["fp32"]["test_top1"] if same else None
    else:
        rec = _same_file_record(
            onnx_dir, results, file.replace(".onnx", ".quantize.json"), "onnx_sha256", sha
        )
        top1 = _dict(rec).get("test_top1")
    ok = isinstance(top1, (int, float)) and not isinstance(top1, bool) and math.isfinite(top1)
    return top1 if ok and 0 <= top1 <= 1 else None


def _tflite_output_top1(
    onnx_dir: Path, results: Path, model: str, file: str, sha: str | None, runtime: str | None
) -> Any:
    """Test top-1 of one output of `make tflite` (`<model>.tflite.json`: `outputs.<key>` names the
    file and its sha256, `checks.<interpreter>.<key with _>` or `….stock.<key>` its top-1, in the
    interpreter that was timed where the record checked it there), from the record whose output has
    this very sha256 (this checkout's, else the committed copy)."""
    if not sha:
        return None
    for rec in (
        _load(onnx_dir / f"{model}.tflite.json"),
        _load(results / "records" / f"{model}.tflite.json"),
    ):
        outputs = _dict(_dict(rec).get("outputs"))
        key = next((k for k, o in outputs.items() if _dict(o).get("file") == file), None)
        if key is None or _dict(outputs[key]).get("sha256") != sha:
            continue
        by_interpreter = _dict(_dict(rec).get("checks"))
        checks = by_interpreter.get(runtime) or next(iter(by_interpreter.values()), None)
        check = _dict(_dict(checks).get("stock")).get(key) if key.startswith("stock.") else None
        return _dict(check or _dict(checks).get(key.replace(".", "_"))).get("top1")
    return None


def fastest_files(
    onnx_dir: Path, results: Path, ref: dict[str, Any], bench: dict[str, Any] | None
) -> dict[str, list[dict[str, Any]]]:
    """Per model, the best INT8 and best FP32 file of each runtime in the reference run's goal summary
    (batch 1, one thread), with its format, size and checked top-1."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in MODELS:
        sm = summary_at(bench, m)
        rows = []
        for rt, side in sorted(_dict(_dict(sm).get("per_runtime")).items()):
            for prec in ("fp32", "int8"):
                file = _dict(_dict(side).get(f"best_{prec}")).get("file")
                # a plain file name: it names records in build/onnx/ and results/records/
                if not isinstance(file, str) or Path(file).name != file or file.startswith("."):
                    continue
                row = _bench_row(bench, file)
                if not isinstance(row.get("format"), str):
                    continue
                rows.append(
                    {
                        "file": file,
                        "fmt": row["format"],
                        "runtime": rt,
                        "precision": prec,
                        "bytes": size
                        if isinstance(size := row.get("file_bytes"), int) and size > 0
                        else None,
                        "top1": _checked_top1(onnx_dir, results, ref, bench, m, file, rt),
                    }
                )
        out[m] = rows
    return out


def reference_bench(folder: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The x86 run the report quotes: of the benchmark results in `folder`, the newest (created_unix)
    taken on a CPU's whole ISA (no `--isa` mask, AMX not refused) that timed onnxruntime and has the
    goal summary; else the newest benchmark result of any kind; (None, None) if there is none.
    Search, target and training files in the same folder are not benchmark results."""
    runs = []
    for f in sorted(glob.glob(str(folder / "*.json"))):
        b = _load(Path(f))
        if (
            not isinstance(b, dict)
            or b.get("schema") != BENCH_SCHEMA
            or not isinstance(b.get("results"), list)
        ):
            continue
        whole = (
            whole_isa(b)
            and "summary" in b
            and any(r.get("runtime") == "onnxruntime" for r in b["results"] if isinstance(r, dict))
        )
        created = b.get("created_unix")
        runs.append((whole, created if isinstance(created, (int, float)) else 0, f, b))
    if not runs:
        return None, None
    _, _, f, b = max(runs, key=lambda r: (r[0], r[1], r[2]))
    return f, b


def summary_at(
    bench: dict[str, Any] | None, model: str, batch: int = 1, threads: int = 1
) -> dict[str, Any] | None:
    """The benchmark's own goal summary for one model and setting (None for a run without one)."""
    for s in (bench or {}).get("summary") or []:
        if s.get("model") == model and s.get("batch") == batch and s.get("threads") == threads:
            return s
    return None


def _ratio(side: dict[str, Any], key: str) -> tuple[float | None, str]:
    """A goal ratio as the benchmark settled it: the paired figure where there is one."""
    paired = side.get(f"{key}_paired")
    if isinstance(paired, dict) and isinstance(paired.get("ratio"), (int, float)):
        # the benchmark marks a pair whose two measurements disagree, or whose interval is wide
        return paired["ratio"], "paired, not settled" if side.get(f"{key}_settled") is False else "paired"
    value = side.get(key)
    return (value, "p50") if isinstance(value, (int, float)) else (None, "")


def _unsettled(how: str) -> str:
    return " (not settled)" if how.endswith("not settled") else ""


def gather(results: Path, onnx_dir: Path) -> dict[str, Any]:
    ref = _load(results / "reference.json")
    if ref is None:
        raise ReportError(f"{results / 'reference.json'}: missing (it is committed; restore it with git)")
    bench_file, bench = reference_bench(results / "bench")
    return {
        "reference": ref,
        "quantize": {m: _record(onnx_dir, results, f"{m}.int8.qdq.quantize.json", m, ref) for m in MODELS},
        "tflite": {m: _record(onnx_dir, results, f"{m}.tflite.json", m, ref) for m in MODELS},
        "bench": bench,
        "bench_file": bench_file,
        "fastest": fastest_files(onnx_dir, results, ref, bench),
        "arm": _load(results / "arm" / "arm-check.json"),
        "devices": {
            Path(f).name: _load(Path(f)) for f in sorted(glob.glob(str(results / "devices" / "*.json")))
        },
        "study": _load(results / "study.json"),
        "invariance": _load(results / "invariance.json"),
    }


# --------------------------------------------------------------------------------------------
# the per model x format table


def best_latency(bench: dict[str, Any] | None, model: str, fmt: str, size: int | None = None) -> float | None:
    """p50 µs at batch 1, one thread, the fastest call path for that artifact; with `size`, only
    of a file of that many bytes (a row whose size and top-1 come from a record of another build
    than the one timed gets no latency)."""
    if bench is None:
        return None
    rows = [
        r
        for r in bench["results"]
        if r["model"] == model
        and r["format"] == fmt
        and r["batch"] == 1
        and r["threads"] == 1
        and (size is None or r.get("file_bytes") in (None, size))
    ]
    return 1000 * min(r["latency_ms_p50"] for r in rows) if rows else None


def arm_insns(arm: dict[str, Any] | None, model: str, fmt: str, cpu: str) -> float | None:
    if arm is None:
        return None
    return arm["instructions_per_inference"].get(f"{cpu}|{model}.{fmt}.onnx")


def artifacts(d: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model x deployable format with accuracy, size, latency, instructions."""
    out = []
    for m in MODELS:
        r = d["reference"]["models"][m]
        params = r["params"]
        rows = [
            ("FP32 ONNX (ORT)", "fp32", r["fp32"]["test_top1"], r["fp32"]["onnx_bytes"], "fp32"),
            ("INT8 QDQ ONNX (ORT)", "int8.qdq", r["int8"]["test_top1"], r["int8"]["onnx_bytes"], "int8.qdq"),
        ]
        t = d["tflite"][m]
        if t is not None and t.get("checks"):
            c = next(iter(t["checks"].values()))
            rows += [
                (
                    "FP32 TFLite (LiteRT)",
                    "fp32.tflite",
                    c["fp32"]["top1"],
                    t["outputs"]["fp32"]["bytes"],
                    None,
                ),
                (
                    "full-INT8 TFLite (LiteRT)",
                    "int8.full.tflite",
                    c["int8_full"]["top1"],
                    t["outputs"]["int8.full"]["bytes"],
                    None,
                ),
            ]
        have = {fmt for _, fmt, _, _, _ in rows}
        for f in (d.get("fastest") or {}).get(m) or []:
            if f["fmt"] in have or not f["bytes"]:
                continue
            have.add(f["fmt"])
            kind = "ONNX" if f["file"].endswith(".onnx") else "TFLite"
            rows.append(
                (
                    f"fastest {f['precision'].upper()} on {RUNTIME_LABEL.get(f['runtime'], f['runtime'])}: "
                    f"`{f['fmt']}` {kind}",
                    f["fmt"],
                    f["top1"],
                    f["bytes"],
                    f["fmt"] if kind == "ONNX" else None,
                )
            )
        for label, fmt, top1, size, arm_fmt in rows:
            out.append(
                {
                    "model": m,
                    "format": label,
                    "fmt": fmt,
                    "top1": top1,
                    "bytes": size,
                    "bytes_per_param": size / params,
                    "p50_us": best_latency(d["bench"], m, fmt, size),
                    "a72": arm_insns(d["arm"], m, arm_fmt, "cortex-a72") if arm_fmt else None,
                    "a76": arm_insns(d["arm"], m, arm_fmt, "cortex-a76") if arm_fmt else None,
                }
            )
    return out


def estimate_lines(arm: dict[str, Any] | None) -> list[str]:
    """The boards' latency estimates from `make arm-check`, labelled as estimates, with their band."""
    est = (arm or {}).get("cycle_estimates")
    if not est or not est.get("rows"):
        return []
    cpus = sorted({r["cpu"] for r in est["rows"]})
    cal = est.get("calibration")
    band = (
        f"x86-calibrated ({_calibration_factors(cal)}, leave-one-out error on x86 {100 * cal['loo_min']:+.0f} % .. "
        f"{100 * cal['loo_max']:+.0f} %; unknown on real boards until their figures are ingested)"
        if cal
        else "no calibration"
    )
    out = [
        "",
        f"Latency **estimates** for the boards (not measurements): per-block counts × llvm-mca cycles, raw / {band}.",
        "",
        "| artifact | " + " | ".join(f"{c} µs" for c in cpus) + " |",
        "|---|" + "---:|" * len(cpus),
    ]
    for m in sorted({r["model"] for r in est["rows"]}):
        cells = []
        for c in cpus:
            r = next((r for r in est["rows"] if r["cpu"] == c and r["model"] == m), None)
            cal_us = r and r.get("us_estimate_calibrated")
            cells.append("–" if r is None else f"{r['us_estimate_raw']:.0f} / {_f(cal_us, '.0f')}")
        out.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return out


def _calibration_factors(cal: dict[str, Any]) -> str:
    if cal.get("model") == "simd+scalar":
        return f"× {cal['factor_simd']:.3f} SIMD blocks, × {cal['factor_scalar']:.3f} scalar blocks"
    return f"× {cal['factor']:.3f}"


def board_lines(arm: dict[str, Any] | None, devices: dict[str, Any]) -> list[str]:
    """Real boards (results/devices/, `lenet-edge ingest`) beside the estimate for their core:
    measured p50 at batch 1, one thread, the fastest call path, and the estimate's error."""
    est = ((arm or {}).get("cycle_estimates") or {}).get("rows") or []
    rows = []
    for name, rep in devices.items():
        core = ((rep or {}).get("environment") or {}).get("cpu", {}).get("core")
        for e in (e for e in est if e["cpu"] == core):
            ms = [
                r["latency_ms_p50"]
                for r in rep.get("results", [])
                if r.get("file") == e["model"] and r.get("batch") == 1 and r.get("threads") == 1
            ]
            if ms:
                rows.append((name, core, e, 1000 * min(ms)))
    if not rows:
        return []
    out = [
        "",
        "Estimates against real boards (`lenet-edge ingest`; batch 1, one thread, fastest call path; error = "
        "estimate / measured − 1; the estimate assumes the stated clock, a board may run slower or faster):",
        "",
        "| device result | core | artifact | measured µs | estimate raw µs (error) | calibrated µs (error) |",
        "|---|---|---|---:|---:|---:|",
    ]
    errors = []
    for name, core, e, us in rows:
        raw, cal = e["us_estimate_raw"], e.get("us_estimate_calibrated")
        err_cal = cal / us - 1 if cal else None
        if err_cal is not None and math.isfinite(err_cal):
            errors.append(err_cal)
        out.append(
            f"| {name} | {core} | `{e['model']}` | {us:.0f} | {raw:.0f} ({100 * (raw / us - 1):+.0f} %) | "
            f"{_f(cal, '.0f')} ({_f(None if err_cal is None else 100 * err_cal, '+.0f')} %) |"
        )
    if errors:
        out += [
            "",
            f"Calibrated estimate error on real boards: {100 * min(errors):+.0f} % .. {100 * max(errors):+.0f} % "
            f"over {len(errors)} artifact(s).",
        ]
    return out


def _f(x: float | None, fmt: str, none: str = "–") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


# --------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(fig: Any, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        _plt().close(fig)  # pyplot keeps every figure until closed


MARKERS = {"fp32": "o", "int8.qdq": "s", "fp32.tflite": "^", "int8.full.tflite": "D"}


def _crowd(pts: list[tuple[float, float, Any]], i: int, key: str) -> int:
    """How many of the points drawn before point i sit close enough for their labels to overlap its
    label: each one moves it a line down."""
    f = math.log if key == "bytes" else float  # the size axis is logarithmic
    xs = [f(p[0]) for p in pts]
    char = 1.1 * (max(xs) - min(xs) or 1.0) / 70  # one 7-pt character of an axis about 4 inches wide
    x, y, me = pts[i]
    near = 0
    for x2, y2, r in pts[:i]:
        d = f(x) - f(x2)  # labels start right of their point
        wide = len(r["fmt"]) + 2 if d >= 0 else len(me["fmt"]) + 2
        near += abs(d) < wide * char and abs(y2 - y) < 0.03
    return near


def plot_pareto(rows: list[dict[str, Any]], out: Path) -> None:
    plt = _plt()
    have_lat = any(r["p50_us"] for r in rows)
    fig, axes = plt.subplots(1, 2 if have_lat else 1, figsize=(10 if have_lat else 5.5, 4), squeeze=False)
    for ax, key, xlabel in zip(
        axes[0],
        ("bytes", "p50_us"),
        ("model file size (KB)", "p50 latency, batch 1, 1 thread, x86 (µs)"),
        strict=False,
    ):
        pts = [
            (r[key] / 1000 if key == "bytes" else r[key], 100 * r["top1"], r)
            for r in rows
            if r[key] and r["top1"] is not None
        ]
        se = binomial_se_pp(0.988, 10000)
        for i, (x, y, r) in enumerate(pts):
            ax.errorbar(
                x,
                y,
                yerr=se,
                fmt=MARKERS.get(r["fmt"], "*"),
                ms=7,
                color=COLORS[r["model"]],
                capsize=2,
                elinewidth=0.8,
                zorder=3,
            )
            ax.annotate(
                r["fmt"],
                (x, y),
                textcoords="offset points",
                xytext=(6, 3 - 8 * _crowd(pts, i, key)),
                fontsize=7,
            )
        # Pareto front: points no other point beats on both axes (smaller x, higher accuracy)
        front = sorted(
            (x, y)
            for x, y, _ in pts
            if not any(x2 <= x and y2 > y or x2 < x and y2 >= y for x2, y2, _ in pts)
        )
        if len(front) > 1:
            ax.step(
                [x for x, _ in front],
                [y for _, y in front],
                where="post",
                color="grey",
                lw=1,
                ls=":",
                label="Pareto front",
                zorder=2,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 (%)")
        if key == "bytes":
            ax.set_xscale("log")
        ax.errorbar(
            [], [], yerr=[], color="grey", label=f"±1 SE of an accuracy on 10,000 images ({se:.2f} pp)"
        )
    for m in MODELS:
        axes[0][0].scatter([], [], color=COLORS[m], label=LABEL[m])
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Accuracy against size and latency (up and left is better)")
    _save(fig, out)


def plot_sqnr(q: dict[str, Any], out: Path) -> bool:
    plt = _plt()
    have = {m: v for m, v in q.items() if v and v.get("sqnr")}
    if not have:
        return False
    fig, axes = plt.subplots(1, len(have), figsize=(5.5 * len(have), 3.8), squeeze=False)
    for ax, (m, rec) in zip(axes[0], have.items(), strict=True):
        acts = {k: v for k, v in rec["sqnr"]["activations_sqnr_db"].items() if k != "pixels"}
        names = sorted(acts, key=lambda k: (acts[k]["vs_float"], k))  # worst first, ties by name
        ax.barh(
            range(len(names)),
            [acts[n]["vs_float"] for n in names],
            color=COLORS[m],
            alpha=0.8,
            label="activation, INT8 model vs FP32",
        )
        ax.set_yticks(range(len(names)), [n[:28] for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("SQNR (dB), higher is better")
        ax.set_title(LABEL[m])
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Per-layer SQNR of the INT8 models (ORT qdq_loss_debug, 500 calibration images)")
    _save(fig, out)
    return True


def plot_seeds(study: dict[str, Any], blog: dict[str, Any], out: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = study["rows"]
    seeds = study["seeds"]
    for ax, prec in zip(axes, ("fp32", "int8"), strict=True):
        by = {m: {r["seed"]: 100 * r[f"{prec}_top1"] for r in rows if r["model"] == m} for m in MODELS}
        for s in seeds:
            ax.plot([0, 1], [by[POOL][s], by[STRIDE][s]], color="grey", alpha=0.5, lw=1)
        for i, m in enumerate(MODELS):
            st = study["models"][m][f"{prec}_top1_pct"]
            ax.scatter([i] * len(seeds), [by[m][s] for s in seeds], color=COLORS[m], zorder=3, s=18)
            ax.errorbar(
                i + 0.12,
                st["mean"],
                yerr=[[st["mean"] - st["ci_low"]], [st["ci_high"] - st["mean"]]],
                fmt="_",
                color="black",
                capsize=4,
                ms=12,
            )
            if prec == "fp32":
                ax.scatter(
                    i - 0.12,
                    100 * blog[m]["test_top1"],
                    marker="x",
                    color="black",
                    s=40,
                    label="the blog (one run)" if i == 0 else None,
                )
        ax.set_xticks([0, 1], [LABEL[m] for m in MODELS])
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{prec.upper()} top-1, {len(seeds)} seeds")
        if prec == "fp32":
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Per seed (grey lines join the two models of one seed); black bar: mean and its 95 % t interval"
    )
    _save(fig, out)


FAMILY = {
    "shift": "translation (px, mean of 4 directions)",
    "rotate": "rotation (°, mean of ±)",
    "scale": "scale factor",
}


def plot_invariance(
    inv: dict[str, Any], source: str, out: Path, paired: dict[str, Any] | None = None
) -> None:
    """inv: {'lenet_pool.fp32': {'shift': {'magnitude': [...], 'mean': [...], 'sd': [...]|None}}}.

    With `paired` (the study's stride - pool differences per seed) a second row shows the
    difference and its 95 % interval, which the overlapping curves above cannot show.
    """
    plt = _plt()
    rows = 2 if paired else 1
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.8 * rows), squeeze=False)
    for ax, fam in zip(axes[0], ("shift", "rotate", "scale"), strict=True):
        for key, fams in inv.items():
            m, prec = key.split(".", 1)
            c = fams[fam]
            style = "-" if prec == "fp32" else "--"
            ax.plot(
                c["magnitude"],
                c["mean"],
                style,
                marker="o",
                ms=3,
                color=COLORS[m],
                label=f"{LABEL[m]} {prec.upper()}",
            )
            if c.get("sd"):
                lo = [a - b for a, b in zip(c["mean"], c["sd"], strict=True)]
                hi = [a + b for a, b in zip(c["mean"], c["sd"], strict=True)]
                ax.fill_between(c["magnitude"], lo, hi, color=COLORS[m], alpha=0.12)
        ax.set_xlabel(FAMILY[fam])
        ax.set_ylabel("test top-1 (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    if paired:
        for ax, fam in zip(axes[1], ("shift", "rotate", "scale"), strict=True):
            for prec, dx, color in (("fp32", -0.015, "black"), ("int8", 0.015, "grey")):
                pts = paired[prec][fam]
                span = max(p["magnitude"] for p in pts) - min(p["magnitude"] for p in pts)
                x = [p["magnitude"] + dx * span for p in pts]
                y = [p["mean_diff"] for p in pts]
                err = [
                    [p["mean_diff"] - p["ci_low"] for p in pts],
                    [p["ci_high"] - p["mean_diff"] for p in pts],
                ]
                ax.errorbar(x, y, yerr=err, fmt="o", ms=3, capsize=3, color=color, label=f"{prec.upper()}")
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xlabel(FAMILY[fam])
            ax.set_ylabel("stride − pool (pp), 95 % CI")
        axes[1][0].legend(fontsize=7, loc="upper left")
        axes[1][1].set_title(
            "above zero: the stride-2 model keeps more accuracy (paired by seed)", fontsize=9
        )
    fig.suptitle(f"Accuracy on transformed test images ({source})")
    _save(fig, out)


def reference_invariance(res: dict[str, Any]) -> dict[str, Any]:
    from lenet_edge.report.invariance import curves

    out = {}
    for key, fams in curves(res).items():
        m = key.split(".")[0]
        prec = "fp32" if ".fp32" in key else "int8"
        out[f"{m}.{prec}"] = {
            f: {"magnitude": [x for x, _ in pts], "mean": [100 * y for _, y in pts], "sd": None}
            for f, pts in fams.items()
        }
    return out


# --------------------------------------------------------------------------------------------
# the Markdown


def _pm(s: dict[str, Any], nd: int = 2) -> str:
    return f"{s['mean']:.{nd}f} ± {s['sd']:.{nd}f} (95 % CI {s['ci_low']:.{nd}f}–{s['ci_high']:.{nd}f})"


def _reproduction(d: dict[str, Any]) -> list[str]:
    """Section 1: the blog's table, reproduced from the reference."""
    ref, blog = d["reference"], d["reference"]["blog"]
    L: list[str] = ["# lenet-edge report: max-pooling or learned stride-2 downsampling, on a device?", ""]
    L += [
        "Generated by `make report` from the result files in `results/` (and `build/onnx/` records when "
        "present); nothing here is retrained. Every figure names the command that produced it.",
        "",
        "## 1. The blog's table, reproduced",
        "",
        "The committed reference checkpoints (`make train`, seed 0, the blog's recipe: Adam 1e-3, batch 64, "
        "10 epochs, inputs scaled to [-1, 1]), evaluated through ONNX Runtime on the 10,000 test images.",
        "",
        "| model | params | top-1 (ours) | top-2 (ours) | top-1 (blog) | params (blog) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in MODELS:
        r = ref["models"][m]
        L.append(
            f"| {LABEL[m]} | {r['params']:,} | {100 * r['fp32']['test_top1']:.2f} % | "
            f"{100 * r['fp32']['test_top2']:.2f} % | {100 * blog[m]['test_top1']:.2f} % | {blog[m]['params']:,} |"
        )
    se = binomial_se_pp(0.985, 10000)
    L += [
        "",
        f"One accuracy on 10,000 images has a binomial standard error of about ±{se:.2f} pp; the blog's "
        f"gap ({100 * (blog[STRIDE]['test_top1'] - blog[POOL]['test_top1']):.2f} pp) and ours "
        f"({100 * (ref['models'][STRIDE]['fp32']['test_top1'] - ref['models'][POOL]['fp32']['test_top1']):.2f} pp) "
        "are one run each. Section 3 repeats the experiment over seeds.",
        "",
    ]

    return L


def _artifacts(d: dict[str, Any], out_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Section 2: every deployable artifact, its size, latency and aarch64 counts (and the Pareto plot)."""
    L: list[str] = []
    rows = artifacts(d)
    plot_pareto(rows, out_dir / "pareto.png")
    bench = d["bench"]
    env = bench["environment"]["cpu"] if bench else None
    L += [
        "## 2. Every deployable artifact",
        "",
        "| model | format | top-1 | size (bytes) | bytes/param | p50 µs, x86, batch 1, 1 thread | "
        "aarch64 instructions / inference (emulated; a72, a76) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ins = "–" if r["a72"] is None else f"{r['a72']:,.0f}; {r['a76']:,.0f}"
        L.append(
            f"| {r['model']} | {r['format']} | {_f(r['top1'], '.2%').replace('%', ' %')} | {r['bytes']:,} | "
            f"{r['bytes_per_param']:.3f} | {_f(r['p50_us'], '.1f')} | {ins} |"
        )
    L += [""]
    if bench:
        cpu = describe_cpu(env) if isinstance(env, dict) and env.get("isa_flags") is not None else env
        L.append(
            f"Latency: `make bench` reference run `{d['bench_file']}` ({cpu}; the newest run on a whole "
            "ISA in results/bench/); the fastest call path per artifact (ORT `run` or IO binding), "
            "quoted only where the run timed a file of the row's size ('–' else: another build). Compare "
            "as ratios within the run, not across machines."
        )
        if any(r["format"].startswith("fastest ") for r in rows):
            L.append(
                "The *fastest* rows are the run's best INT8 and best FP32 file per runtime (its goal summary) "
                "that the four default formats above do not already cover: the search choices of `make search` "
                "and the optimized FP32 graphs. Their top-1 comes from the stage record of that very file (same "
                "sha256 as the one timed; an optimized FP32 graph has the export's top-1 on every test image), "
                "'–' where no record matches; their aarch64 counts are of the x86 choice (each core's own choice "
                "is in the goal ratios of section 5)."
            )
    else:
        L.append("Latency: no benchmark result in results/bench/ (`make bench`).")
    if d["arm"]:
        L.append(
            "Instructions: `make arm-check` (qemu-user, TCG plugin counting between markers around steady-state "
            "runs). They are **emulated aarch64 instruction counts, not latency**: they ignore caches, "
            "pipelines and SIMD width. TFLite files are not in this count (it drives ORT); their cycle estimates are below."
        )
    else:
        L.append("Instructions: no aarch64 result in results/arm/ (`make arm-check`).")
    L += estimate_lines(d["arm"])
    L += board_lines(d["arm"], d.get("devices") or {})
    if not any(d["tflite"].values()):
        L.append("TFLite rows appear after `make tflite`.")
    L += ["", "![accuracy vs size and latency](pareto.png)", ""]

    return L, rows


def _sqnr(d: dict[str, Any], out_dir: Path) -> list[str]:
    """Per-layer SQNR of the INT8 models (and its plot)."""
    L: list[str] = []
    if plot_sqnr(d["quantize"], out_dir / "sqnr.png"):
        L += [
            "### Per-layer SQNR of the INT8 models",
            "",
            "Signal-to-quantization-noise ratio of each activation of the INT8 QDQ model against the same "
            "tensor of the FP32 model (ORT `qdq_loss_debug`, from `make quantize`); the lowest bar is where "
            "INT8 hurts most.",
            "",
            "| model | weight tensors SQNR (dB), min–max | lowest activation SQNR (INT8 model vs FP32) |",
            "|---|---|---|",
        ]
        for m in MODELS:
            q = d["quantize"][m]
            if not q or not q.get("sqnr"):
                continue
            # learned weight tensors only (biases are int32 and constants exact: hundreds of dB)
            w = [v for k, v in q["sqnr"]["weights_sqnr_db"].items() if k.endswith(".w_0")]
            acts = {k: v for k, v in q["sqnr"]["activations_sqnr_db"].items() if k != "pixels"}
            worst = min(acts, key=lambda k: (acts[k]["vs_float"], k))
            L.append(f"| {m} | {min(w):.1f}–{max(w):.1f} | {acts[worst]['vs_float']:.1f} dB at `{worst}` |")
        L += ["", "![per-layer SQNR](sqnr.png)", ""]
    else:
        L += ["Per-layer SQNR: run `make quantize` (its records in build/onnx/ carry it).", ""]

    return L


def _study(d: dict[str, Any], out_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
    """Section 3: the multi-seed study; also its headline (stride - pool, FP32 top-1)."""
    blog = d["reference"]["blog"]
    L: list[str] = []
    st = d["study"]
    L += ["## 3. Is stride-2 really better? The multi-seed study", ""]
    headline = None
    if st:
        sp = st["stride_minus_pool"]
        t = sp["fp32_top1_pp"]
        n = len(st["seeds"])
        plot_seeds(st, blog, out_dir / "seeds.png")
        L += [
            f"`make study SEEDS={n}`: both models trained with seeds {st['seeds'][0]}..{st['seeds'][-1]} (the seed sets "
            "initialisation and data order), exported and quantized with the default recipe; "
            f"{st['jobs_in_parallel']} jobs in parallel, one thread each"
            + (
                f"; the whole study took {st['wall_seconds_full_run'] / 60:.1f} min wall on this 2-core machine."
                if st.get("wall_seconds_full_run")
                else "."
            ),
            "",
            "| model | FP32 top-1 (%) mean ± sd | INT8 top-1 (%) | INT8 − FP32 (pp) |",
            "|---|---|---|---|",
        ]
        for m in MODELS:
            s = st["models"][m]
            L.append(
                f"| {LABEL[m]} | {_pm(s['fp32_top1_pct'])} | {_pm(s['int8_top1_pct'])} | "
                f"{-s['int8_drop_pp']['mean']:+.3f} ± {s['int8_drop_pp']['sd']:.3f} "
                f"(paired t p = {s['int8_vs_fp32_paired']['p_two_sided']:.2g}) |"
            )
        w = sp["fp32_wilcoxon"]
        ti = sp["int8_top1_pp"]
        L += [
            "",
            f"**Stride − pool, FP32 top-1: {t['mean_diff']:+.3f} pp (95 % CI {t['ci_low']:+.3f} to {t['ci_high']:+.3f}; "
            f"paired t-test over {n} seeds, t = {t['t']:.2f}, df = {t['df']}, p = {t['p_two_sided']:.3g}).** "
            f"The stride model was better on {sp['seeds_stride_better_fp32']} of {n} seeds (exact Wilcoxon "
            f"signed-rank p = {w['p_two_sided']:.3g}; with {n} pairs it cannot go below {2 / 2**n:.3g}). "
            f"In INT8: {ti['mean_diff']:+.3f} pp (95 % CI {ti['ci_low']:+.3f} to {ti['ci_high']:+.3f}, "
            f"p = {ti['p_two_sided']:.3g}).",
            "",
            "Per seed, exact McNemar test of the two models on the same 10,000 images (b = only pool right, "
            "c = only stride right):",
            "",
            "| seed | FP32 b / c | FP32 p (two-sided) | INT8 b / c | INT8 p |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in sp["per_seed_mcnemar"]:
            f, i = r["fp32"], r["int8"]
            L.append(
                f"| {r['seed']} | {f['ref_only_correct']} / {f['new_only_correct']} | {f['p_two_sided']:.3g} | "
                f"{i['ref_only_correct']} / {i['new_only_correct']} | {i['p_two_sided']:.3g} |"
            )
        fp = {(r["model"], r["seed"]): 100 * r["fp32_top1"] for r in st["rows"]}
        gaps = [fp[(STRIDE, s)] - fp[(POOL, s)] for s in st["seeds"]]
        below = [
            m
            for m in MODELS
            if 100 * blog[m]["test_top1"] < min(100 * r["fp32_top1"] for r in st["rows"] if r["model"] == m)
        ]
        if below:
            L += [
                "",
                f"The blog's single-run figures lie below all {n} of our seeds for {', '.join(below)}, so its "
                "set-up differed from this reproduction of the described recipe in some unstated way. Its gap "
                f"({100 * (blog[STRIDE]['test_top1'] - blog[POOL]['test_top1']):+.2f} pp) compares "
                f"with single-seed gaps from {min(gaps):+.2f} to {max(gaps):+.2f} pp here.",
            ]
        L += ["", "![per-seed accuracy](seeds.png)", ""]
        headline = t
    else:
        L += ["No study results yet: `make study SEEDS=5` writes results/study.json.", ""]

    return L, headline


def _invariance(d: dict[str, Any], out_dir: Path) -> tuple[list[str], Any]:
    """Section 4: invariance curves and the paired differences; also the curves for the conclusion."""
    st = d["study"]
    L: list[str] = []
    inv = None
    L += ["## 4. Invariance: does learned downsampling lose what pooling gives?", ""]
    inv_src = None
    if st and st.get("invariance"):
        inv, inv_src = st["invariance"], f"mean ± sd over {len(st['seeds'])} seeds, make study"
    elif d["invariance"]:
        inv, inv_src = reference_invariance(d["invariance"]), "the reference models, make invariance"
    if inv_src:
        plot_invariance(
            inv,
            inv_src,
            out_dir / "invariance.png",
            st.get("invariance_stride_minus_pool_pp") if st else None,
        )
        L += [
            f"Top-1 on the test set shifted by 1–4 px (4 directions, zero fill), rotated by ±5–20° and scaled "
            f"0.8–1.2× (bilinear), {inv_src}. Solid FP32, dashed INT8.",
            "",
            "| model | clean | shift 2 px | shift 4 px | rotate 20° | scale 0.8 | scale 1.2 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]

        def at(c: dict[str, Any], mag: float) -> str:
            i = min(range(len(c["magnitude"])), key=lambda j: abs(c["magnitude"][j] - mag))
            sd = f" ± {c['sd'][i]:.2f}" if c.get("sd") else ""
            return f"{c['mean'][i]:.2f}{sd}"

        for key, fams in inv.items():
            m, prec = key.split(".", 1)
            L.append(
                f"| {m} {prec.upper()} | {at(fams['shift'], 0)} | {at(fams['shift'], 2)} | {at(fams['shift'], 4)} | "
                f"{at(fams['rotate'], 20)} | {at(fams['scale'], 0.8)} | {at(fams['scale'], 1.2)} |"
            )
        L += ["", "![invariance curves](invariance.png)", ""]
        paired = st.get("invariance_stride_minus_pool_pp") if st else None
        if paired:
            L += [
                "Stride − pool under each transform, paired by seed (pp; 95 % CI; paired t p). Positive means "
                "the stride-2 model is the more robust one. These are "
                f"{sum(len(v) - 1 for v in paired['fp32'].values())} comparisons per precision: "
                "read a single p near 0.05 with that in mind.",
                "",
                "| transform | FP32 | INT8 |",
                "|---|---|---|",
            ]
            for fam in ("shift", "rotate", "scale"):
                for a, b in zip(paired["fp32"][fam], paired["int8"][fam], strict=True):
                    if (fam == "scale" and a["magnitude"] == 1.0) or (fam != "scale" and a["magnitude"] == 0):
                        continue
                    unit = {"shift": " px", "rotate": "°", "scale": "×"}[fam]
                    cell = [
                        f"{x['mean_diff']:+.2f} ({x['ci_low']:+.2f} to {x['ci_high']:+.2f}); p = {x['p_two_sided']:.2g}"
                        for x in (a, b)
                    ]
                    L.append(f"| {fam} {a['magnitude']:g}{unit} | {cell[0]} | {cell[1]} |")
            L.append("")
    else:
        L += ["No invariance results yet: `make invariance` or `make study`.", ""]

    return L, inv if inv_src else None


def build(results: Path, onnx_dir: Path, out_dir: Path) -> Path:
    """reports/REPORT.md (and its plots) from the result files: one section after another, built in
    a staging folder and moved into out_dir only when every section succeeded (a report that fails
    halfway leaves the old report and plots as they were)."""
    with _reading(results):
        d = gather(results, onnx_dir)
    ref, study, inv_file = results / "reference.json", results / "study.json", results / "invariance.json"
    bench, arm = d["bench_file"], results / "arm" / "arm-check.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    # named like atomic_path's temp files: a later run removes one whose process was killed
    remove_stale_temp_files(out_dir / "REPORT.md")
    stage = Path(tempfile.mkdtemp(prefix=f".REPORT.md.{os.getpid()}.", suffix=".tmp", dir=out_dir))
    try:
        with _reading(ref):
            L = _reproduction(d)
        with _reading(ref, bench, arm, results / "records", results / "devices"):
            artifacts_md, rows = _artifacts(d, stage)
        with _reading(study):
            study_md, headline = _study(d, stage)
        with _reading(inv_file, study):
            invariance_md, inv = _invariance(d, stage)
        with _reading(results / "records"):
            sqnr_md = _sqnr(d, stage)
        L += artifacts_md + sqnr_md + study_md + invariance_md
        L += ["## 5. What to deploy", ""]
        with _reading(study, bench, arm, inv_file):
            L += conclusion(d, rows, headline, inv)
        L += ["", "## 6. The performance goals, run by run", ""]
        with _reading(results / "bench", arm, results / "records", ref):
            L += goals_section(results)
        # no timestamp: the same result files give a byte-identical report
        L += ["", "_Built by `lenet-edge report` from the result files named above._", ""]
        (stage / "REPORT.md").write_bytes("\n".join(L).encode())
        built = sorted(stage.iterdir(), key=lambda f: f.name == "REPORT.md")  # the report last
        for f in built:  # every place free before the first rename: never new plots beside the old report
            if problem := write_problem(out_dir / f.name):
                raise ReportError(f"{out_dir / f.name}: {problem}; the previous report is unchanged")
        for f in built:
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir / "REPORT.md"


def conclusion(
    d: dict[str, Any], rows: list[dict[str, Any]], t: dict[str, Any] | None, inv: Any
) -> list[str]:
    """Sentences computed from the numbers; each claim carries its figure."""
    out = []
    if t is not None:
        if t["ci_low"] > 0:
            verdict = "stride-2 is more accurate, and the interval excludes zero"
        elif t["ci_high"] < 0:
            verdict = "max-pooling is more accurate, and the interval excludes zero"
        else:
            verdict = "the difference is not distinguishable from zero with these seeds"
        out.append(
            f"- **Accuracy:** stride − pool = {t['mean_diff']:+.2f} pp (95 % CI {t['ci_low']:+.2f} to "
            f"{t['ci_high']:+.2f}, p = {t['p_two_sided']:.2g}): {verdict}."
        )
    if inv is not None:
        sh = {k: v["shift"]["mean"][-1] - v["shift"]["mean"][0] for k, v in inv.items()}
        out.append(
            "- **Translation:** top-1 lost at a 4 px shift: "
            + ", ".join(f"{k} {v:+.1f} pp" for k, v in sh.items())
            + "."
        )
    paired = (d["study"] or {}).get("invariance_stride_minus_pool_pp")
    if paired:
        for fam, mag, what in (
            ("shift", 2, "a 2 px shift"),
            ("rotate", 20, "a 20° rotation"),
            ("scale", 1.2, "1.2× scaling"),
        ):
            for prec in ("fp32", "int8"):
                x = next(p for p in paired[prec][fam] if p["magnitude"] == mag)
                n_cmp = sum(len(v) - 1 for v in paired[prec].values())
                caveat = (
                    f" (uncorrected; not significant after Bonferroni for {n_cmp} comparisons)"
                    if x["p_two_sided"] > 0.05 / n_cmp
                    else ""
                )
                if x["ci_low"] > 0:
                    verdict = "the stride-2 model is the more robust one" + caveat
                elif x["ci_high"] < 0:
                    verdict = "max-pooling is the more robust one" + caveat
                else:
                    verdict = "no difference established, point estimate favours " + (
                        "stride-2" if x["mean_diff"] > 0 else "pooling"
                    )
                out.append(
                    f"- **Under {what}, {prec.upper()}:** stride − pool {x['mean_diff']:+.2f} pp "
                    f"(95 % CI {x['ci_low']:+.2f} to {x['ci_high']:+.2f}, p = {x['p_two_sided']:.2g}): {verdict}."
                )
    by = {(r["model"], r["fmt"]): r for r in rows}
    lat = {k: r["p50_us"] for k, r in by.items() if r["p50_us"]}
    summaries = {m: summary_at(d["bench"], m) for m in MODELS}
    if all(summaries.values()):
        parts = []
        for m, sm in summaries.items():
            best = sm["best_lenet_edge"]
            per = []
            for rt, side in sorted(sm["per_runtime"].items()):
                ratio, how = _ratio(side, "int8_over_fp32")
                if ratio is not None:
                    per.append(f"{rt} {ratio:.2f}{_unsettled(how)}")
            stock, how = _ratio(sm, "lenet_edge_over_stock")
            parts.append(
                f"{m}: fastest artifact `{best['file']}` ({best['runtime']}) at "
                f"{1e3 * best['latency_ms_p50']:.1f} µs; best INT8 / best FP32 per runtime {', '.join(per)}"
                + (
                    f"; fastest lenet-edge / fastest stock {stock:.2f}{_unsettled(how)}"
                    if stock is not None
                    else ""
                )
            )
        out.append(
            "- **Latency (x86, batch 1, one thread; paired ratios, marked where the benchmark did not settle them):** "
            + "; ".join(parts)
            + "."
        )
    elif lat:
        fastest = min(lat, key=lat.get)
        ratios = []
        for m in MODELS:
            for fp, q, rt in (("fp32", "int8.qdq", "ORT"), ("fp32.tflite", "int8.full.tflite", "LiteRT")):
                if lat.get((m, fp)) and lat.get((m, q)):
                    ratios.append(f"{m} {rt} {lat[(m, q)] / lat[(m, fp)]:.2f}×")
        out.append(
            f"- **Latency (x86, batch 1):** fastest artifact {fastest[0]} {fastest[1]} at {lat[fastest]:.1f} µs; "
            f"INT8 / FP32 p50 (fastest call path of each): {', '.join(ratios)}."
        )
    small = min(rows, key=lambda r: r["bytes"])
    out.append(
        f"- **Size:** smallest artifact {small['model']} {small['format']} at {small['bytes']:,} bytes "
        f"({small['bytes_per_param']:.2f} B/param)."
    )
    out.append("")
    out.append(pick(d, rows, t))
    return out


def pick(d: dict[str, Any], rows: list[dict[str, Any]], t: dict[str, Any] | None) -> str:
    """The deployment choice, with every reason computed from the rows and the study."""
    by = {(r["model"], r["fmt"]): r for r in rows}
    params = {m: d["reference"]["models"][m]["params"] for m in MODELS}
    if t is not None and t["ci_low"] > 0:
        model, why = STRIDE, [f"it is more accurate ({t['mean_diff']:+.2f} pp, interval above zero)"]
    else:
        model = POOL
        why = [
            "the accuracy gain of stride-2 is not established (section 3)"
            if t
            else "one seed cannot rank them"
        ]
        why.append(f"it has fewer parameters ({params[POOL]:,} vs {params[STRIDE]:,})")
        ins = {m: by[(m, "fp32")]["a76"] for m in MODELS if by[(m, "fp32")]["a76"]}
        if len(ins) == 2:
            why.append(
                f"it executes {ins[STRIDE] / ins[POOL]:.1f}x fewer aarch64 instructions per "
                "FP32 inference (emulated cortex-a76)"
            )
    fp, q = by[(model, "fp32")], by.get((model, "int8.qdq"))
    sm = summary_at(d["bench"], model)
    if sm and sm.get("best_lenet_edge"):
        return _pick_from_summary(d, model, why, sm, fp, q)
    cands = [r for r in rows if r["model"] == model and r["p50_us"]]
    r = min(cands, key=lambda x: x["p50_us"]) if cands else by[(model, "fp32")]
    text = (
        f"**On a Raspberry Pi we would ship `{model}` as {r['format']}**: {'; '.join(why)}"
        + (
            f"; it is the fastest of its artifacts on the x86 reference ({r['p50_us']:.0f} µs p50)"
            if r["p50_us"]
            else ""
        )
        + f". It reaches {100 * r['top1']:.2f} % top-1 at {r['bytes']:,} bytes."
    )
    if q:
        slower = []
        if q["p50_us"] and fp["p50_us"]:
            slower.append(f"{q['p50_us'] / fp['p50_us']:.2f}x the FP32 latency on x86")
        if q["a76"] and fp["a76"]:
            slower.append(f"{q['a76'] / fp['a76']:.2f}x the FP32 instructions on cortex-a76")
        text += (
            f" INT8 ({q['bytes']:,} bytes, {fp['bytes'] / q['bytes']:.1f}x smaller) is the choice only when "
            "flash or RAM is the limit"
            + (f": at batch 1 it costs {', '.join(slower)}" if slower else "")
            + "."
        )
    return text + (_int8_cost(d, model, "Its accuracy cost") if q else "")


def _int8_cost(d: dict[str, Any], model: str, what: str) -> str:
    """The study's INT8 − FP32 top-1 for the model, as one sentence (empty without a study)."""
    st = d["study"]
    if not st:
        return ""
    drop = st["models"][model]["int8_drop_pp"]
    return (
        f" {what} is {drop['mean']:+.3f} pp (95 % CI {drop['ci_low']:+.3f} to {drop['ci_high']:+.3f}) "
        f"over {drop['n']} seeds."
    )


def _pick_from_summary(
    d: dict[str, Any],
    model: str,
    why: list[str],
    sm: dict[str, Any],
    fp: dict[str, Any],
    q: dict[str, Any] | None,
) -> str:
    """The deployment choice when the reference run has a goal summary: its fastest lenet-edge
    artifact for the model, with the INT8 / FP32 ratio of that runtime and the aarch64 goal ratio."""
    best = sm["best_lenet_edge"]
    name, runtime = best["file"], best["runtime"]
    size = _bench_row(d["bench"], name).get("file_bytes")
    int8 = ".int8." in name
    ratio, how = _ratio(sm["per_runtime"].get(runtime, {}), "int8_over_fp32")
    text = (
        f"**On a Raspberry Pi we would ship `{model}` as `{name}` ({runtime})**: {'; '.join(why)}; it is "
        f"the fastest lenet-edge artifact in the x86 reference run ({1e3 * best['latency_ms_p50']:.1f} µs p50"
        + (f", {size:,} bytes" if size else "")
        + ")."
    )
    if int8 and ratio is not None and ratio < 1:
        text += (
            f" INT8 is the faster as well as the smaller choice there: best INT8 / best FP32 on {runtime} "
            f"{ratio:.2f} ({how})"
        )
        if size and fp.get("bytes"):
            text += f", {fp['bytes'] / size:.1f}x smaller than the FP32 ONNX file"
        text += "; every published INT8 choice is checked against results/tolerances.json."
    elif q and ratio is not None:
        text += (
            f" INT8 ({q['bytes']:,} bytes, {fp['bytes'] / q['bytes']:.1f}x smaller) is the choice only when "
            f"flash or RAM is the limit: best INT8 / best FP32 on {runtime} {ratio:.2f} ({how})."
        )
    arm = [
        g
        for g in (d["arm"] or {}).get("best_int8_over_best_fp32") or []
        if g.get("model") == model and isinstance(g.get("ratio"), (int, float))
    ]
    if arm:
        text += (
            " Best INT8 / best FP32 aarch64 instructions (emulated): "
            + "; ".join(
                f"{cpu} " + ", ".join(f"{g['runtime']} {g['ratio']:.2f}" for g in arm if g.get("cpu") == cpu)
                for cpu in sorted({str(g.get("cpu")) for g in arm})
            )
            + "."
        )
    return text + (_int8_cost(d, model, "Its INT8 accuracy cost (the default recipe)") if q else "")


def main(argv: list[str] | None = None) -> int:
    p = parser("report", __doc__)
    p.add_argument("--results", type=path_arg, default=Path("results"), help="default results/")
    p.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"), help="default build/onnx/")
    add_common(p, "out_dir", out_dir={"default": Path("reports"), "help": "default reports/"})
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    md = build(a.results, a.onnx_dir, a.out_dir)
    print(f"wrote {md} and its plots in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
