"""The performance goals of INT8 that pays, run by run: reads the committed benchmark runs
(results/bench/<machine>.json and its .tflite-runtime.json), the aarch64 counts
(results/arm/arm-check.json), the ORT stage records (results/records/) and the parameter counts
(results/reference.json); writes nothing. `lenet-edge goals` prints it; the report's section 6 is it.

Each goal is a ratio inside one run on one machine, so each run is judged on its own. The issue asks
for every goal on an AVX2 and on an AVX-512 machine: a run on a CPU's whole ISA counts for its kernel
set; a run with `--isa` (another CPU's kernels emulated on this core) is shown, never counted.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenet_edge.report.publish import cpu_flags, isa_class
from lenet_edge.runtime.bench import SCHEMA as BENCH_SCHEMA
from lenet_edge.runtime.bench import summarize_goals
from lenet_edge.runtime.cli import parser, path_arg, run
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import missing_file
from lenet_edge.workflow import comparison


@dataclass(frozen=True)
class Goal:
    key: str  # the benchmark summary's runtime, or "stock" / "batch64"
    short: str
    text: str
    limit: float


# batch 1, one thread unless said
SPEED_GOALS = (
    Goal("onnxruntime", "ORT", "ONNX Runtime, best INT8 / best FP32 p50", 0.9),
    Goal("ai-edge-litert", "LiteRT", "LiteRT (ai-edge-litert), best INT8 / best FP32 p50", 0.9),
    Goal("tflite-runtime", "tflite-runtime", "tflite-runtime 2.14, best INT8 / best FP32 p50", 0.9),
    Goal("stock", "vs stock", "fastest lenet-edge artifact / fastest stock artifact p50, any runtime", 0.85),
    Goal(
        "batch64",
        "batch 64",
        "ONNX Runtime at batch 64, one thread: INT8 / FP32 time (INT8 throughput ≥ FP32)",
        1.0,
    ),
)
ARM_LIMITS = {"cortex-a76": 0.8, "cortex-a72": 1.0}  # best INT8 / best FP32 instructions
SIZE_LIMIT = 1.05  # bytes per parameter
DROP_LIMIT_PP = 0.1  # INT8 top-1 within 0.1 pt of FP32


class GoalsError(LenetEdgeError):
    """A results file the goals read is not what the pipeline writes."""


def _read(path: Path) -> Any:
    problem = missing_file(path, "JSON file")
    if problem:  # a FIFO named *.json waited forever
        raise GoalsError(f"{path}: {problem}")
    try:
        return json.loads(path.read_text(), parse_constant=lambda c: float("nan"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GoalsError(f"{path}: not readable JSON ({e.__class__.__name__})") from e


def _ratio(side: dict[str, Any], key: str) -> tuple[float, bool]:
    """(ratio, settled) of a summary ratio: the paired one where the benchmark measured it."""
    paired = side.get(f"{key}_paired")
    value = paired.get("ratio") if isinstance(paired, dict) else side.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return math.nan, True  # a ratio of times is > 0: -5 was shown as met
    return float(value), side.get(f"{key}_settled", True) is not False


def _entry(bench: dict[str, Any], model: str, batch: int, threads: int) -> dict[str, Any]:
    for e in bench.get("summary") or []:
        if isinstance(e, dict) and (e.get("model"), e.get("batch"), e.get("threads")) == (
            model,
            batch,
            threads,
        ):
            return e
    return {}


def speed(bench: dict[str, Any], tflrt: dict[str, Any] | None, goal: Goal, model: str) -> tuple[float, bool]:
    """One run's figure for a speed goal and model (NaN where the run did not time it)."""
    if goal.key == "stock":
        return _ratio(_entry(bench, model, 1, 1), "lenet_edge_over_stock")
    source, batch = (
        (tflrt, 1) if goal.key == "tflite-runtime" else (bench, 64 if goal.key == "batch64" else 1)
    )
    runtime = "onnxruntime" if goal.key == "batch64" else goal.key
    side = (_entry(source or {}, model, batch, 1).get("per_runtime") or {}).get(runtime)
    return _ratio(side, "int8_over_fp32") if isinstance(side, dict) else (math.nan, True)


def describe_run(name: str, bench: dict[str, Any]) -> dict[str, Any]:
    env = bench.get("environment") if isinstance(bench.get("environment"), dict) else {}
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    code = env.get("lenet_edge_code") if isinstance(env.get("lenet_edge_code"), dict) else {}
    mask = cpu.get("isa_mask")
    kernels = str(mask) if mask else isa_class(cpu_flags(cpu))
    amx_off = (bench.get("settings") or {}).get("amx") == "off"
    created = bench.get("created_unix")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not 0 < created < 4.1e9:
        created = None  # NaN, or a time gmtime cannot hold (1e20 was an OverflowError traceback)
    return {
        "name": name,
        "cpu": str(cpu.get("model", "?")),
        "kernels": kernels + (" (AMX refused)" if amx_off else ""),
        "kind": None
        if mask or amx_off
        else ("avx2" if kernels == "avx2" else "avx512" if "avx512" in kernels else None),
        "emulated": bool(mask),
        "commit": (str(code.get("git_commit", ""))[:7] + (" (dirty)" if code.get("dirty") else ""))
        if code.get("git_commit")
        else "not recorded",
        "date": time.strftime("%Y-%m-%d", time.gmtime(created)) if created is not None else "?",
        "created": float(created or 0.0),
        "summary": "benchmark",  # runs() says so where the run predates the benchmark's goal summary
    }


def runs(bench_dir: Path) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]]:
    """(description, bench, tflite-runtime bench or None) of every committed benchmark run, by name."""
    out = []
    for path in sorted(bench_dir.glob("*.json")):
        if path.name.endswith(".tflite-runtime.json"):
            continue
        doc = _read(path)
        if not isinstance(doc, dict) or doc.get("schema") != BENCH_SCHEMA:
            continue  # a search, select, training or study file beside the runs
        described = describe_run(path.stem, doc)
        if not isinstance(doc.get("summary"), list):  # a run from before the goal summary: its p50 rows
            doc = {**doc, "summary": _recomputed(doc, path)}
            described["summary"] = "p50 rows" if doc["summary"] else "no goal summary"
        tfl_path = path.with_name(path.stem + ".tflite-runtime.json")
        tfl = _read(tfl_path) if tfl_path.is_file() else None
        out.append((described, doc, tfl if isinstance(tfl, dict) else None))
    return out


def _recomputed(doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The goal summary of an older run's rows (round-robin p50, nothing paired; it timed no stock
    artifact, which it did not mark); none where its rows lack what a summary needs."""
    rows = doc.get("results")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise GoalsError(f"{path}: no result rows")
    try:
        return summarize_goals([{**r, "stock": "stock" in str(r.get("format"))} for r in rows])
    except (KeyError, TypeError, ValueError):
        return []


def _cell(values: list[tuple[float, bool]], limit: float) -> str:
    if all(math.isnan(v) for v, _ in values):
        return "–"
    text = " / ".join(
        "–" if math.isnan(v) else (f"{v:.3f}" if v < 1e4 else f"{v:.3g}") + ("‡" if not settled else "")
        for v, settled in values
    )
    return f"{text} {'✓' if all(v <= limit for v, _ in values) else '✗'}"  # NaN is never <= limit


def _met(values: list[tuple[float, bool]], limit: float) -> bool:
    return all(v <= limit for v, _ in values)  # NaN (not timed) is not met


def arm_rows(arm: dict[str, Any] | None) -> list[str]:
    if not arm:
        return ["aarch64: no results/arm/arm-check.json (make search-arm bundle arm-check)."]
    rows = [r for r in arm.get("best_int8_over_best_fp32") or [] if isinstance(r, dict)]
    lines = ["| aarch64 best INT8 / best FP32 instructions | " + " | ".join(comparison()) + " |"]
    lines.append("|---|" + "---|" * len(comparison()))
    for cpu, limit in ARM_LIMITS.items():
        for rt in sorted({str(r.get("runtime")) for r in rows if r.get("cpu") == cpu}):
            vals = []
            for m in comparison():
                hit = [r for r in rows if (r.get("cpu"), r.get("runtime"), r.get("model")) == (cpu, rt, m)]
                v = hit[0].get("ratio") if hit else None
                vals.append(
                    (float(v), True)
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                    else (math.nan, True)
                )
            lines.append(f"| {cpu} ≤ {limit:g}, {rt} | " + " | ".join(_cell([v], limit) for v in vals) + " |")
    code = (arm.get("environment") or {}).get("lenet_edge_code") or {}
    lines += [
        "",
        f"Counted by `{arm.get('command', 'arm-check')}` on {str(code.get('git_commit', '?'))[:7]}.",
    ]
    return lines


def size_rows(latest: dict[str, Any] | None, params: dict[str, int], records: Path) -> list[str]:
    """INT8 bytes per parameter of the run's files (its smallest and its fastest INT8 ONNX Runtime
    file) and the top-1 drop of every committed INT8 record."""
    lines = [
        "| INT8 size and accuracy | " + " | ".join(comparison()) + " |",
        "|---|" + "---|" * len(comparison()),
    ]
    if latest is not None:
        smallest, fastest = [], []
        for m in comparison():
            rows = [r for r in latest.get("results") or [] if isinstance(r, dict) and r.get("model") == m]
            sizes = {
                r["file"]: r["file_bytes"] / params[m]
                for r in rows
                if "int8" in str(r.get("format"))
                and not r.get("stock")
                and isinstance(r.get("file_bytes"), int)
                and m in params
            }
            best = ((_entry(latest, m, 1, 1).get("per_runtime") or {}).get("onnxruntime") or {}).get(
                "best_int8"
            ) or {}
            small = min(sizes, key=sizes.get) if sizes else None
            smallest.append(
                f"{sizes[small]:.3f} `{small}` {'✓' if sizes[small] <= SIZE_LIMIT else '✗'}" if small else "–"
            )
            f = best.get("file")
            fastest.append(
                f"{sizes[f]:.3f} `{f}` {'✓' if sizes[f] <= SIZE_LIMIT else '✗'}" if f in sizes else "–"
            )
        lines.append(f"| smallest INT8 file, B/param ≤ {SIZE_LIMIT} | " + " | ".join(smallest) + " |")
        lines.append(
            f"| fastest INT8 ONNX Runtime file, B/param ≤ {SIZE_LIMIT} | " + " | ".join(fastest) + " |"
        )
    drops = []
    for m in comparison():
        recs = []
        for p in sorted(records.glob(f"{m}.int8.*.quantize.json")):
            rec = _read(p)
            d = rec.get("accuracy_drop_pp") if isinstance(rec, dict) else None
            if isinstance(d, (int, float)) and not isinstance(d, bool):
                name = p.name.removesuffix(".quantize.json")
                recs.append(
                    f"{name.removeprefix(m + '.')} {d:+.2f} {'✓' if abs(d) <= DROP_LIMIT_PP else '✗'}"
                )
        drops.append("; ".join(recs) or "–")
    lines.append(
        f"| top-1 drop (pp) of each committed INT8 record, ≤ {DROP_LIMIT_PP} | " + " | ".join(drops) + " |"
    )
    return lines


def _speed_table(all_runs: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]]) -> list[str]:
    """A row per run, a column per speed goal; then each machine kind's latest whole-ISA run."""
    L = [
        "| run | kernels | commit, date | "
        + " | ".join(f"{g.short} ≤ {g.limit:g}" for g in SPEED_GOALS)
        + " |",
        "|---|---|---|" + "---|" * len(SPEED_GOALS),
    ]
    latest: dict[tuple[str, str], tuple[float, str, bool, bool]] = {}  # (goal, kind) -> the newest run's
    for d, bench, tfl in all_runs:
        cells = []
        for g in SPEED_GOALS:
            vals = [speed(bench, tfl, g, m) for m in comparison()]
            cells.append(_cell(vals, g.limit))
            timed = not all(math.isnan(v) for v, _ in vals)
            if d["kind"] and (d["created"], d["name"]) > latest.get((g.key, d["kind"]), (-1.0, ""))[:2]:
                latest[(g.key, d["kind"])] = (d["created"], d["name"], _met(vals, g.limit), timed)
        kernels = f"{d['kernels']}{' (emulated)' if d['emulated'] else ''}, {d['cpu']}"
        older = {"benchmark": "", "p50 rows": "; p50 rows, unpaired"}.get(d["summary"], f"; {d['summary']}")
        L.append(
            f"| `{d['name']}` | {kernels} | {d['commit']}, {d['date']}{older} | " + " | ".join(cells) + " |"
        )
    L += ["", "Columns: " + "; ".join(f"**{g.short}**: {g.text}" for g in SPEED_GOALS) + ".", ""]
    L += ["On each machine kind's latest run on its CPU's whole ISA:", ""]
    for g in SPEED_GOALS:
        said = []
        for kind, label in (("avx2", "AVX2"), ("avx512", "AVX-512")):
            run_ = latest.get((g.key, kind))
            if run_ is None:
                said.append(f"{label}: no run")
            else:
                state = "met" if run_[2] else "not met" if run_[3] else "not timed"
                said.append(f"{label}: {state} (`{run_[1]}`)")
        L.append(f"- {g.short}: " + "; ".join(said) + ".")
    return L


def section(results: Path) -> list[str]:
    """Markdown: every run's figure for every speed goal, which machine kinds meet them, and the
    aarch64, size and accuracy goals."""
    all_runs = runs(results / "bench")
    ref = _read(results / "reference.json") if (results / "reference.json").is_file() else {}
    models = ref.get("models") if isinstance(ref, dict) and isinstance(ref.get("models"), dict) else {}
    params = {
        m: v["params"] for m, v in models.items() if isinstance(v, dict) and isinstance(v.get("params"), int)
    }
    L = [
        "Each goal is a ratio inside one benchmark run (batch 1, one thread unless said; paired where the "
        "benchmark paired it, ‡ where its interval did not settle the side). Cells: "
        + " / ".join(f"`{m}`" for m in comparison())
        + ", ✓ when all meet the goal. A run with `--isa` (another kernel set emulated on "
        "this CPU) or with AMX refused is shown but does not count for a machine kind.",
        "",
    ]
    if not all_runs:
        L += ["No benchmark run in results/bench/ (make search bench select publish).", ""]
    else:
        L += _speed_table(all_runs) + [""]
    arm = results / "arm" / "arm-check.json"
    L += arm_rows(_read(arm) if arm.is_file() else None) + [""]
    whole = [(d, b) for d, b, _ in all_runs if d["kind"]]
    latest_run = max(whole, key=lambda x: (x[0]["created"], x[0]["name"]))[1] if whole else None
    return L + size_rows(latest_run, params, results / "records")


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "report.goals",
        "The performance goals, run by run: each committed benchmark run's figure for each goal and "
        "which machine kinds meet them (Markdown on stdout).",
    )
    p.add_argument(
        "--results", type=path_arg, default=Path("results"), help="the results folder (default results)"
    )
    a = p.parse_args(argv)
    if not (a.results / "bench").is_dir():
        raise GoalsError(f"{a.results / 'bench'}: no such folder")
    print("\n".join(section(a.results)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
