"""The goals scoreboard (report/goals.py): each run judged on its own figures, only whole-ISA runs
counted for a machine kind, NaN and untimed goals never met, older runs recomputed from their rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lenet_edge.report import goals
from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit

MODELS = ("lenet_pool", "lenet_stride")
PAIRED = {"ci95": [0, 0], "rounds": 20, "p50_us": [1, 1]}


def _side(ratio: float, settled: bool = True) -> dict:
    return {
        "int8_over_fp32": ratio,
        "int8_over_fp32_paired": {"ratio": ratio, **PAIRED},
        "int8_over_fp32_settled": settled,
    }


def _bench(flags: list[str], ort: float, created: int, mask: str | None = None, stock: float = 0.5) -> dict:
    cpu = {"model": "Test CPU", "isa_flags": flags, **({"isa_mask": mask} if mask else {})}
    summary = []
    for m in MODELS:
        summary.append(
            {
                "model": m,
                "batch": 1,
                "threads": 1,
                "per_runtime": {
                    "onnxruntime": _side(ort),
                    "ai-edge-litert": _side(0.5, settled=m == "lenet_pool"),
                },
                "lenet_edge_over_stock": stock,
            }
        )
        summary.append({"model": m, "batch": 64, "threads": 1, "per_runtime": {"onnxruntime": _side(0.8)}})
    return {
        "schema": "lenet-edge/bench/v1",
        "created_unix": created,
        "environment": {"cpu": cpu, "lenet_edge_code": {"git_commit": "a" * 40, "dirty": False}},
        "settings": {"amx": "on"},
        "results": [],
        "summary": summary,
    }


def _results(tmp_path: Path) -> Path:
    r = tmp_path / "results"
    (r / "bench").mkdir(parents=True)
    (r / "records").mkdir()
    # a real AVX2 machine that meets the ORT goal, and a later emulated AVX2 run that does not
    (r / "bench" / "x86_64-a-avx2.json").write_text(json.dumps(_bench(["avx2"], 0.85, 100)))
    emulated = _bench(["avx2"], 0.95, 200, mask="avx2")
    emulated["environment"]["cpu"]["isa_flags_hidden"] = ["avx512_vnni"]
    (r / "bench" / "x86_64-b-avx512vnni.isa-avx2.json").write_text(json.dumps(emulated))
    # an AVX-512 machine whose ORT figure is NaN for one model (never met)
    nan = _bench(["avx2", "avx512_vnni"], 0.7, 300)
    nan["summary"][2]["per_runtime"]["onnxruntime"] = _side(float("nan"))
    (r / "bench" / "x86_64-b-avx512vnni.json").write_text(json.dumps(nan))
    (r / "bench" / "x86_64-b-avx512vnni.search.json").write_text(json.dumps({"choices": []}))  # not a run
    (r / "reference.json").write_text(
        json.dumps({"models": {"lenet_pool": {"params": 1000}, "lenet_stride": {"params": 2000}}})
    )
    (r / "records" / "lenet_pool.int8.qdq.quantize.json").write_text(json.dumps({"accuracy_drop_pp": 0.25}))
    return r


def test_each_machine_kind_is_judged_by_its_latest_whole_isa_run(tmp_path):
    text = "\n".join(goals.section(_results(tmp_path)))
    row = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `x86_64")}
    assert set(row) == {"`x86_64-a-avx2`", "`x86_64-b-avx512vnni.isa-avx2`", "`x86_64-b-avx512vnni`"}
    assert (
        "0.850 / 0.850 ✓" in row["`x86_64-a-avx2`"]
        and "avx2 (emulated)" in row["`x86_64-b-avx512vnni.isa-avx2`"]
    )
    assert "0.700 / – ✗" in row["`x86_64-b-avx512vnni`"]  # NaN is shown as not timed and fails the goal
    assert "0.500 / 0.500‡ ✓" in row["`x86_64-a-avx2`"]  # unsettled by its pair: marked
    # the later emulated run (0.95) does not replace the real AVX2 machine's verdict
    assert "- ORT: AVX2: met (`x86_64-a-avx2`); AVX-512: not met (`x86_64-b-avx512vnni`)." in text
    assert "- tflite-runtime: AVX2: not timed (`x86_64-a-avx2`)" in text
    assert "results/arm/arm-check.json" in text  # the aarch64 goal says what makes it
    assert "int8.qdq +0.25 ✗" in text  # accuracy beyond 0.1 pt


def test_a_run_from_before_the_goal_summary_is_recomputed_from_its_rows(tmp_path):
    r = _results(tmp_path)
    rows = []
    for m in MODELS:
        for fmt, p50 in (("fp32", 0.010), ("int8.qdq", 0.020)):
            rows.append({"model": m, "format": fmt, "file": f"{m}.{fmt}.onnx", "file_bytes": 1000, "runtime": "onnxruntime",
                         "call": "run", "batch": 1, "threads": 1, "latency_ms_p50": p50})  # fmt: skip
    old = {
        "schema": "lenet-edge/bench/v1",
        "created_unix": 50,
        "environment": {"cpu": {"model": "Old", "isa_flags": ["avx2"]}},
        "results": rows,
    }
    (r / "bench" / "x86_64-old-avx2.json").write_text(json.dumps(old))
    text = "\n".join(goals.section(r))
    line = next(x for x in text.splitlines() if x.startswith("| `x86_64-old-avx2`"))
    assert "not recorded" in line and "p50 rows, unpaired" in line and "2.000 / 2.000 ✗" in line


def test_malformed_inputs_are_one_error_naming_the_file(tmp_path):
    r = _results(tmp_path)
    (r / "bench" / "x86_64-c.json").write_text("{not json")
    with pytest.raises(goals.GoalsError, match=r"x86_64-c.json: not readable JSON"):
        goals.section(r)
    (r / "bench" / "x86_64-c.json").write_text(json.dumps({"schema": "lenet-edge/bench/v1", "results": "x"}))
    with pytest.raises(goals.GoalsError, match=r"x86_64-c.json: no result rows"):
        goals.section(r)
    assert_one_line_error(
        run_cli("-m", "lenet_edge.report.goals", "--results", str(tmp_path / "none")),
        "none/bench: no such folder",
    )


def test_the_committed_results_show_every_run_and_the_report_carries_them(tmp_path):
    """Every committed run is a row (a run published later appears without code changes)."""
    text = "\n".join(goals.section(ROOT / "results"))
    runs = [
        p.stem
        for p in (ROOT / "results" / "bench").glob("*.json")
        if json.loads(p.read_text()).get("schema") == "lenet-edge/bench/v1"
    ]
    runs = [n for n in runs if not n.endswith(".tflite-runtime")]
    assert runs and all(f"| `{n}` |" in text for n in runs)
    assert "## 6. The performance goals, run by run" in (ROOT / "reports" / "REPORT.md").read_text()
    shutil.copytree(ROOT / "results" / "arm", tmp_path / "arm")  # the aarch64 table reads only arm-check.json
    assert "cortex-a76 ≤ 0.8, onnxruntime" in "\n".join(
        goals.arm_rows(json.loads((tmp_path / "arm" / "arm-check.json").read_text()))
    )


def _readme_table(first_cell: str) -> tuple[list[str], list[list[str]]]:
    """The README table whose header starts with `first_cell`: its header cells and body rows."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_cell} |"))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return [c.strip() for c in lines[start].strip("|").split("|")], rows


def _figures(cell: str) -> list[str]:
    import re

    return re.findall(r"\d+\.\d{3}", cell)


def test_the_readme_goal_figures_are_the_committed_results():
    """The README quotes the goals table by hand: each of its figures must be what `lenet-edge
    goals` computes from the results file its column names (a rerun that is committed without
    the README, or a figure typed from memory, fails here), ✓ only where every figure meets it."""
    import math
    import re

    header, rows = _readme_table("goal")
    by_name = {d["name"]: (bench, tfl) for d, bench, tfl in goals.runs(ROOT / "results" / "bench")}
    columns = [re.search(r"`([\w.-]+)`", h) for h in header[1:]]
    assert columns and all(columns), header
    assert len(rows) == len(goals.SPEED_GOALS)
    stale = "README.md's goals table is stale (copy the figures `lenet-edge goals` prints)"
    checked = 0
    for g, row in zip(goals.SPEED_GOALS, rows, strict=True):
        for m, cell in zip(columns, row[1:], strict=True):
            bench, tfl = by_name[m.group(1)]
            values = [goals.speed(bench, tfl, g, model) for model in MODELS]
            if all(math.isnan(v) for v, _ in values):
                assert cell == "not timed", (stale, g.short, m.group(1), cell)
                continue
            assert _figures(cell) == [f"{v:.3f}" for v, _ in values], (stale, g.short, m.group(1), cell)
            assert ("✓" in cell) == goals._met(values, g.limit), (stale, g.short, m.group(1), cell)
            checked += 1
    assert checked >= 15
    arm = json.loads((ROOT / "results" / "arm" / "arm-check.json").read_text())
    ratio = {(r["cpu"], r["runtime"], r["model"]): r["ratio"] for r in arm["best_int8_over_best_fp32"]}
    header, rows = _readme_table("aarch64 (qemu-user), best INT8 / best FP32 instructions")
    runtimes = {"ONNX Runtime": "onnxruntime", "LiteRT": "ai-edge-litert"}
    for row in rows:
        cpu = row[0].split()[0]
        for rt, cell in zip(header[1:], row[1:], strict=True):
            want = [ratio[(cpu, runtimes[rt], model)] for model in MODELS]
            assert _figures(cell) == [f"{v:.3f}" for v in want], (stale, cpu, rt, cell)
            assert ("✓" in cell) == goals._met([(v, True) for v in want], goals.ARM_LIMITS[cpu]), (
                stale,
                cpu,
                rt,
                cell,
            )


def test_a_ratio_that_cannot_be_a_ratio_of_times_never_meets_a_goal_and_odd_files_are_named(tmp_path):
    """A second audit: a summary ratio of -5 or 0 was shown as met ("-5.000 ✓"), created_unix 1e20
    was an OverflowError traceback, a FIFO named *.json waited forever."""
    import os

    r = _results(tmp_path)
    odd = _bench(["avx2", "avx512_vnni"], -5.0, 10**20)
    odd["summary"][2]["per_runtime"]["onnxruntime"] = _side(0.0)
    (r / "bench" / "x86_64-c-avx512vnni.json").write_text(json.dumps(odd))
    text = "\n".join(goals.section(r))
    line = next(x for x in text.splitlines() if x.startswith("| `x86_64-c-avx512vnni`"))
    assert line.split("|")[4].strip() == "–", line  # ORT: no ratio of times (was "-5.000 / 0.000 ✓")
    assert ", ?" in line  # no date for a time gmtime cannot hold
    os.mkfifo(r / "bench" / "x86_64-d.json")
    with pytest.raises(goals.GoalsError, match=r"x86_64-d.json: not a regular file"):
        goals.section(r)
