"""Per-target INT8 choice by measurement: candidates built, checked, timed; the fastest kept.

For each model, on the machine it runs on (ONNX Runtime, batch 1, one thread, IO binding):
1. candidates: each source graph (the export; the space-to-depth graphs of `make optimize`, 2x2
   and the 4x4 conv-pool-conv-pool form where it matches, a duplicate graph counted once) x the
   default recipe and one change of it at a time (QOperator; int8 activations; no reduce-range;
   per-tensor weights); each QDQ candidate also as the ONNX Runtime target (optimize.ort_int8),
   and that target also with the passes that pay with one thread only (ONE_THREAD_PASSES: a uint8
   input Transpose), which can reorder the sources (chosen after the others, they did not);
2. every candidate is quantized with the quantize stage and checked against
   results/tolerances.json; one that fails is recorded with the reason and never timed;
3. the survivors and the model's FP32 files are timed in one interleaved child process;
4. mixed precision by measurement: from the fastest INT8 candidate's recipe, sets of weighted
   layers are kept in FP32 (`fp32_layers`; every tail of the layer list, then each layer alone,
   greedily on top of what was kept, then each kept layer handed back to INT8), built, checked and
   timed the same way, each in the form of the candidate it starts from; a set stays FP32 only if
   that is faster. On an ORT target their weights stay int8 (`weight_only`: FP32 compute at INT8
   size). The fastest checked INT8 candidate is the choice;
5. a choice that is a plain ORT target is tried in its one-thread form once more and kept if faster;
6. AMX (`--amx auto`, the default, on a CPU that has it): onnxruntime's int8 GEMMs take AMX tile
   kernels when Linux grants them, a process-wide setting (runtime/amx.py); the same search runs
   again in a child with AMX refused and the two choices are timed as a cross-process pair
   (choose_amx; kept below AMX_OFF_BELOW); the published record says `amx: off` if refusing won.
Writes the record (every candidate, its checks and p50, the CPU from the environment capture,
never a machine name) as JSON and Markdown; the candidates are built in a temp folder. Each
model's choice is published to --onnx-dir as <model>.int8.search.onnx with its record
(quantize.published), so `make bench` times it and `select` can deploy it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lenet_edge.runtime.bench import CLOSE_TO_FASTEST, KEEP_IF_PAIRED_BELOW
from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.env import command_line, describe_cpu, provenance_text
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.workflow import add_model_flags, data_source, selected

# label -> the fp32 variant quantize reads (`make optimize` writes them); a source whose graph is
# another's (s2d4 where its 4x4 pass does not match) is left out, said in the record
SOURCES = {"export": None, "s2d": "s2d", "s2d4": "s2d4"}
CHANGES = {
    "default": {},
    "qoperator": {"quant_format": "qoperator"},
    "s8-activations": {"activation_type": "s8"},
    "no-reduce-range": {"reduce_range": False},
    "per-tensor": {"per_channel": False},
}
WEIGHTED = ("Conv", "MatMul", "Gemm")
# a change is kept on the host if the 95 % interval of its paired ratio to the current best lies
# wholly below KEEP_IF_PAIRED_BELOW: faster, with confidence, by more than the 0.3-0.5 % an A/A pair
# (one file loaded twice) shows (0.995-0.997 with 100 rounds, intervals reaching 1.001-1.04);
# candidates within CLOSE_TO_FASTEST of the fastest p50 are paired with it before choosing. The
# benchmark checks its goal sides by the same rule (runtime.bench).


def time_files(files: list[Path], runs: int, rounds: int, call: str = "iobinding") -> dict[str, float]:
    """p50 µs per file, batch 1, one thread, all in one interleaved child process (IO binding for
    ONNX Runtime; `run` for TFLite, its only call path)."""
    import numpy as np

    from lenet_edge.runtime.bench import _child

    configs = [[str(f), call] for f in files]
    samples = _child(
        ["--latency", json.dumps(configs), "--batch", "1", "--threads", "1"]
        + ["--runs", str(runs), "--warmup", "200", "--rounds", str(rounds)]
    )
    return {Path(k.split("|")[0]).name: float(np.percentile(v, 50)) / 1e3 for k, v in samples.items()}


def pair_files(
    files: list[Path], ref: Path, rounds: int, call: str = "iobinding"
) -> dict[str, dict[str, Any]]:
    """Each file paired with `ref` (batch 1, one thread, `call`), one child process for all."""
    from lenet_edge.runtime.bench import _child, paired_ratio

    spec = [[[str(f), call], [str(ref), call]] for f in files]
    meds = _child(
        ["--paired", json.dumps(spec), "--batch", "1", "--threads", "1"]
        + ["--rounds", str(rounds), "--warmup", "200"]
    )
    return {f.name: paired_ratio(m["a"], m["b"]) for f, m in zip(files, meds, strict=True)}


ARM_CPUS = ("cortex-a72", "cortex-a76")


def _count(files: list[Path], cpu: str) -> dict[str, float]:
    """aarch64 instructions per batch-1 inference of each file under qemu-user for `cpu`
    (arm/run_counts.py: deterministic counts, so no interleaving is needed)."""
    from lenet_edge.runtime.files import ROOT, owned_temp_dir

    with owned_temp_dir("count") as out:
        cmd = [sys.executable, str(ROOT / "arm" / "run_counts.py"), "--cpus", cpu, "--reps", "1"]
        proc = subprocess.run(
            [*cmd, "--out-dir", str(out), "--models", *map(str, files)], capture_output=True, text=True
        )
        res = out / "counts.json"
        if proc.returncode != 0 or not res.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise LenetEdgeError(f"--target {cpu}: counting instructions under qemu failed: {tail}")
        rows = json.loads(res.read_text())["rows"]
    return {r["model"]: float(r["insns_per_inference"]) for r in rows}


@dataclass(frozen=True)
class Measure:
    """What the search minimises: p50 µs on this machine (interleaved timing), or the aarch64
    instructions per inference on an emulated Arm core (`target` = cortex-a72 / cortex-a76)."""

    target: str = "host"
    runs: int = 2000
    rounds: int = 20
    call: str = "iobinding"  # the call path timed: IO binding for ONNX Runtime, `run` for TFLite

    @property
    def key(self) -> str:
        return "p50_us" if self.target == "host" else "instructions"

    @property
    def keep_below(self) -> float:
        # timing: the paired interval's upper end (KEEP_IF_PAIRED_BELOW); counts repeat exactly (a few
        # hundred instructions of time-dependent work inside onnxruntime's Run aside), so 0.5 % is real
        return KEEP_IF_PAIRED_BELOW if self.target == "host" else 0.995

    def __call__(self, files: list[Path]) -> dict[str, float]:
        return (
            time_files(files, self.runs, self.rounds) if self.target == "host" else _count(files, self.target)
        )

    def versus(self, files: list[Path], ref: Path, measured: dict[str, float]) -> dict[str, dict[str, Any]]:
        """Each file against `ref`: on the host a paired timing of the two alone (runtime.bench.
        measure_paired: {ratio, ci95, rounds, p50_us}); for counts the ratio of `measured` (exact)."""
        if self.target != "host":
            r = {f.name: measured[f.name] / measured[ref.name] for f in files}
            return {k: {"ratio": v, "ci95": [v, v]} for k, v in r.items()}
        return pair_files(files, ref, max(20, self.runs // 10), self.call)

    def clearly_better(self, vs: dict[str, Any] | None) -> bool:
        return vs is not None and vs["ci95"][1] < self.keep_below

    def fmt(self, v: float) -> str:
        return f"{v:.1f} µs" if self.target == "host" else f"{v:,.0f} instructions"


def _weighted_layers(model: Any) -> list[str]:
    """'Conv:0', 'Gemm:2', ...: the k-th node of that type in the graph ORT quantizes (after the
    clean-up, so MatMul+Add are Gemm), in graph order; never node names."""
    seen: dict[str, int] = {}
    out = []
    for n in model.graph.node:
        if n.op_type in WEIGHTED:
            out.append(f"{n.op_type}:{seen.get(n.op_type, 0)}")
            seen[n.op_type] = seen.get(n.op_type, 0) + 1
    return out


def _layer_sets(layers: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """What mixed precision tries, in order, each step on top of what it kept so far: add every
    tail of the weighted layers from the shortest (the last two, ..., all: once in float, the rest
    can stay float with one dequantize), then add each layer alone; then drop each layer alone
    (back to INT8) from what was kept, so a core where most layers are faster in float can still
    find the one layer that pays in INT8."""
    tails = [("add", tuple(layers[i:])) for i in range(len(layers) - 2, -1, -1)]
    return tails + [("add", (x,)) for x in layers] + [("drop", (x,)) for x in layers]


def _apply(layers: list[str], kept: tuple[str, ...], step: tuple[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The layer set a step tries: `kept` with the step's layers added or dropped, in graph order."""
    op, group = step
    if op == "add":
        return tuple(x for x in layers if x in kept or x in group)
    return tuple(x for x in layers if x in kept and x not in group)


def _greedy(layers: list[str], trial: Callable[[tuple[str, ...]], bool]) -> tuple[str, ...]:
    """The layers kept in FP32: the steps of `_layer_sets` in order, each set tried once;
    `trial(set)` builds and measures it and says whether it beat the current best."""
    kept: tuple[str, ...] = ()
    tried: set[tuple[str, ...]] = {()}  # () is the INT8 candidate the search starts from
    for step in _layer_sets(layers):
        layer_set = _apply(layers, kept, step)
        if layer_set in tried:
            continue
        tried.add(layer_set)
        if trial(layer_set):
            kept = layer_set
    return kept


def _build(
    name: str, source: str, recipe: Any, work: Path, calibration: Any, prep: Any
) -> list[dict[str, Any]]:
    """Quantize one candidate (and its ORT target if QDQ); one row per file, checked."""
    from lenet_edge.optimize.ort_int8 import build_ort_model
    from lenet_edge.quantize.checks import int8_failures, tolerances_for
    from lenet_edge.quantize.ort_quant import QuantizeError, quantize_model

    tol = tolerances_for(name)
    label = f"{source}.{recipe.name}"
    row: dict[str, Any] = {"model": name, "source": source, "recipe": recipe.to_dict(), "label": label}
    out = work / f"{name}.int8.{label}.onnx"
    try:
        rec = quantize_model(
            prep.fp32_path, out, recipe, calibration, sqnr=False, progress=False, prep=prep,
            check=lambda r: int8_failures(r, tol),
        )  # fmt: skip
    except (QuantizeError, LenetEdgeError) as e:
        return [{**row, "file": None, "passed": False, "why": _why(e, work)}]
    except Exception as e:  # ORT rejects some type combinations with its own exceptions
        return [{**row, "file": None, "passed": False, "why": f"{type(e).__name__}: {_why(e, work)}"}]
    rows = [{**row, "file": out.name, "passed": True, **_metrics(rec)}]
    if recipe.quant_format == "qdq":
        ort_out = work / f"{name}.int8.{label}.ort.onnx"
        try:
            ort_rec = build_ort_model(out, rec, ort_out, prep.test_pixels)
            rows.append(
                {**row, "label": label + ".ort", "file": ort_out.name, "passed": True, **_metrics(ort_rec)}
            )
        except LenetEdgeError as e:
            rows.append({**row, "label": label + ".ort", "file": None, "passed": False, "why": _why(e, work)})
            return rows
        rows.append(_one_thread_form({**row, "label": label + ".ort"}, out, rec, work, prep.test_pixels))
    return rows


def _kind(label: str) -> str:
    """A candidate's form: the QDQ file (''), its ORT target ('.ort'), or that target with the
    one-thread passes ('.ort+uint8-transpose'); trials and the choice compare like with like."""
    from lenet_edge.optimize.ort_int8 import ONE_THREAD_PASSES

    one_thread = ".ort+" + "+".join(ONE_THREAD_PASSES)
    return one_thread if label.endswith(one_thread) else ".ort" if label.endswith(".ort") else ""


def _one_thread_form(
    ort_row: dict[str, Any], src: Path, src_rec: dict[str, Any], work: Path, pixels: Any
) -> dict[str, Any]:
    """An ORT target rebuilt with the passes that pay with one thread only (optimize.ort_int8.
    ONE_THREAD_PASSES: a uint8 input Transpose), checked the same way; a candidate of its own from
    the first timed run on, since it reorders the sources (`lenet_pool`, one run: the s2d4 target
    13.5 -> 11.2 µs with it, the s2d one 13.6 -> 13.2), or why it does not apply."""
    from lenet_edge.optimize.ort_int8 import DEFAULT_PASSES, ONE_THREAD_PASSES, build_ort_model

    label = f"{ort_row['label']}+{'+'.join(ONE_THREAD_PASSES)}"
    out = work / f"{ort_row['model']}.int8.{label}.onnx"
    row = {k: ort_row[k] for k in ("model", "source", "recipe")} | {"label": label}
    try:
        rec = build_ort_model(src, src_rec, out, pixels, DEFAULT_PASSES + ONE_THREAD_PASSES)
    except LenetEdgeError as e:
        return {**row, "file": None, "passed": False, "why": _why(e, work)}
    tried = [e for e in rec["ort_target"]["passes"] if e["pass"] in ONE_THREAD_PASSES]
    if not any(e["applied"] for e in tried):  # e.g. a choice computing in FP32 from its float input
        out.unlink(missing_ok=True)
        return {
            **row,
            "file": None,
            "passed": False,
            "not_applicable": True,
            "why": "; ".join(f"{e['pass']}: {e['not_applied']}" for e in tried),
        }
    return {**row, "file": out.name, "passed": True, **_metrics(rec)}


def _trial_rows(built: list[dict[str, Any]], form: str) -> list[dict[str, Any]]:
    """The rows of one mixed-precision trial to time against the current best: those in the form
    (`_kind`) of the candidate the trials start from (QDQ, ORT target, or that in its one-thread
    form), so like is compared with like. Where the one-thread form does not apply to a trial (its
    first conv computes in FP32 from the float input: no uint8 input to transpose), the trial's
    plain ORT target stands in for it; without that, lenet_stride's cortex-a72 search lost its
    conv1-FP32 trial (631,850 -> 651,282 instructions). Failed rows of every form stay in the record."""
    same = [b for b in built if _kind(b["label"]) == form]
    if any(b.get("not_applicable") for b in same):
        same += [b for b in built if _kind(b["label"]) == ".ort"]
    timed = {id(b) for b in same}
    return [b for b in built if not b["passed"] or id(b) in timed]


def _one_thread_variants(
    name: str, best: dict[str, Any], work: Path, pixels: Any, measure: Measure
) -> list[dict[str, Any]]:
    """The choice's ORT target in its one-thread form (a candidate already at every step before,
    but not for the exact choice when mixed precision ended on a plain ORT target), measured
    against it; the caller keeps it if it is clearly better (measure.clearly_better)."""
    from lenet_edge.runtime.files import quantize_record_path, read_json

    if _kind(best["label"]) != ".ort":
        return []
    src = work / f"{name}.int8.{best['label'].removesuffix('.ort')}.onnx"
    row = _one_thread_form(best, src, read_json(quantize_record_path(src)), work, pixels)
    if not row["passed"]:
        return [row]
    out = work / row["file"]
    t = measure([work / best["file"], out])
    vs = measure.versus([out], work / best["file"], t)[out.name]
    return [{**row, measure.key: t[out.name], "vs_current_best": vs}]


def _confirm_fastest(rows: list[dict[str, Any]], work: Path, measure: Measure) -> dict[str, Any]:
    """The fastest passing candidate of the interleaved run; on the host, the others within
    CLOSE_TO_FASTEST of it are then timed as pairs with it (a round-robin p50 moves by several
    percent on a shared host), and one that is clearly faster (measure.clearly_better) replaces it.
    Each paired row records `vs_fastest_first_run`."""
    passing = [r for r in rows if r["passed"]]
    best = min(passing, key=lambda r: r[measure.key])
    if measure.target != "host":
        return best  # counts repeat exactly
    close = [r for r in passing if r is not best and r[measure.key] <= CLOSE_TO_FASTEST * best[measure.key]]
    if not close:
        return best
    vs = measure.versus([work / r["file"] for r in close], work / best["file"], {})
    for r in close:
        r["vs_fastest_first_run"] = vs[r["file"]]
    better = [r for r in close if measure.clearly_better(r["vs_fastest_first_run"])]
    return min(better, key=lambda r: r["vs_fastest_first_run"]["ratio"]) if better else best


def _why(e: Exception, work: Path) -> str:
    """The reason, without the temp folder's path (records are committed)."""
    return str(e).replace(f"{work}/", "").replace(str(work), ".")[:300]


def _metrics(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("test_top1", "accuracy_drop_pp", "agreement_with_fp32", "bytes_per_param")}


def _distinct_sources(onnx_dir: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """The source labels whose FP32 graphs differ (the first of equal graphs stays), and for each
    one left out, the source it equals. Graphs compare without metadata (the variant's name)."""
    import onnx

    from lenet_edge.quantize.ort_quant import fp32_source

    seen: dict[bytes, str] = {}
    kept, same_as = [], {}
    for label, variant in SOURCES.items():
        f = fp32_source(onnx_dir, name, variant)
        if not f.is_file():
            raise LenetEdgeError(f"{f}: missing; run `make optimize` first")
        try:
            graph = onnx.load(str(f)).graph.SerializeToString()
        except Exception as e:  # a malformed file: one line naming it
            raise LenetEdgeError(f"{f}: not a readable ONNX model ({type(e).__name__})") from None
        if graph in seen:
            same_as[label] = seen[graph]
        else:
            seen[graph] = label
            kept.append(label)
    return kept, same_as


def search_model(
    name: str, onnx_dir: Path, work: Path, measure: Measure, data_dir: Path | None, timing: bool = True
) -> dict[str, Any]:
    from lenet_edge.quantize.calibration import load_calibration
    from lenet_edge.quantize.ort_quant import fp32_source, prepared
    from lenet_edge.quantize.recipe import DEFAULT_RECIPES

    calibration = load_calibration()
    base = DEFAULT_RECIPES[name]
    rows: list[dict[str, Any]] = []
    sources, same_as = _distinct_sources(onnx_dir, name)
    fp32_files = [fp32_source(onnx_dir, name, SOURCES[s]) for s in sources]
    with ExitStack() as stack:
        preps = {
            s: stack.enter_context(prepared(f, calibration, data_dir))
            for s, f in zip(sources, fp32_files, strict=True)
        }
        for source in sources:
            for change in CHANGES.values():
                rows += _build(name, source, replace(base, **change), work, calibration, preps[source])
        if not timing:  # the documented default, checked but not timed (CI)
            default = f"s2d.{base.name}.ort"
            pick = next((r for r in rows if r["label"] == default and r["passed"]), None)
            if pick is None:
                raise LenetEdgeError(f"{name}: the default candidate {default} failed its checks")
            return {
                "model": name,
                "sources_left_out": same_as,
                "candidates": rows,
                "mixed_precision": {"layers": [], "kept_fp32": [], "trials": []},
                "one_thread_passes": [],
                f"fp32_{measure.key}": {},
                "choice": {**{k: pick[k] for k in ("label", "file", "recipe", "source")}, measure.key: None},
                "method": "documented default (--no-timing)",
            }
        for f in fp32_files:
            shutil.copyfile(f, work / f.name)
        files = [work / f.name for f in fp32_files] + [work / r["file"] for r in rows if r["passed"]]
        p50 = measure(files)
        for r in rows:
            r[measure.key] = p50.get(r["file"]) if r["passed"] else None
        # mixed precision by measurement, greedy over the weighted layers, from the fastest INT8
        best = _confirm_fastest(rows, work, measure)
        layers = _weighted_layers(preps[best["source"]].pre)
        # an ORT target keeps the FP32 layers' weights in int8 (weight_only: folded to float when
        # onnxruntime loads the model, so FP32 speed at INT8 size); a QDQ file would dequantize
        # them on every call, so there they stay float
        form = _kind(best["label"])  # every trial is built in this form (_trial_rows)
        weight_only = form != ""
        mixed: list[dict[str, Any]] = []

        def trial(layer_set: tuple[str, ...]) -> bool:
            nonlocal best
            cur = best
            recipe = replace(
                base.__class__.from_dict(cur["recipe"]), fp32_layers=layer_set, weight_only=weight_only
            )
            built = _trial_rows(
                _build(name, cur["source"], recipe, work, calibration, preps[cur["source"]]), form
            )
            mixed.extend(built)
            timed = [work / b["file"] for b in built if b["passed"]]
            if not timed:
                return False
            t = measure([work / cur["file"], *timed])
            vs = measure.versus(timed, work / cur["file"], t)
            for b in built:
                b[measure.key] = t.get(b["file"]) if b["passed"] else None
                b["vs_current_best"] = vs.get(b["file"]) if b["passed"] else None
            # keep the set in FP32 only if clearly better than the current best (measure.clearly_better)
            ok = [b for b in built if b["passed"] and measure.clearly_better(b["vs_current_best"])]
            if ok:
                best = ok[0]
            return bool(ok)

        kept = _greedy(layers, trial)
        variants = _one_thread_variants(name, best, work, preps[best["source"]].test_pixels, measure)
        passing = [v for v in variants if v["passed"] and measure.clearly_better(v["vs_current_best"])]
        if passing:
            best = passing[0]
    fp32 = {f.name: p50[f.name] for f in fp32_files}
    return {
        "model": name,
        "sources_left_out": same_as,
        "candidates": rows,
        "mixed_precision": {
            "layers": layers,
            "kept_fp32": list(kept),
            "weight_only": weight_only,
            "trials": mixed,
        },
        "one_thread_passes": variants,
        f"fp32_{measure.key}": fp32,
        "choice": {k: best[k] for k in ("label", "file", "recipe", "source", measure.key)},
        "choice_over_best_fp32_first_run": best[measure.key] / min(fp32.values())
        if best[measure.key]
        else None,
        "method": "fastest checked candidate, interleaved timing (batch 1, one thread, IO binding)"
        if measure.target == "host"
        else f"fewest aarch64 instructions per inference on {measure.target} (qemu-user, batch 1, one thread)",
    }


def to_markdown(res: dict[str, Any]) -> str:
    measure = Measure(res.get("target", "host"))
    key, host = measure.key, measure.target == "host"
    how = (
        "p50 µs, batch 1, one thread, IO binding; candidates timed in one interleaved run per model; "
        f"the candidates within {CLOSE_TO_FASTEST:.2f}x of the fastest, each mixed-precision trial and the "
        "one-thread pass then timed as a pair with the current best (alternating blocks; median ratio "
        f"and 95 % interval in the last column), and preferred only if the interval lies below "
        f"{KEEP_IF_PAIRED_BELOW}."
        if host
        else f"aarch64 instructions per batch-1 inference on {measure.target} (qemu-user; counts, not time)."
    )
    lines = [
        f"# INT8 search ({describe_cpu(res['cpu']) if host else measure.target + ', emulated'}; "
        f"onnxruntime {res['onnxruntime']}" + amx_header(res) + ")",
        "",
        f"{provenance_text(res)} {how}",
        "",
    ]
    col = "p50 µs" if host else "instructions"
    for chosen in res["models"]:
        m = (
            chosen | chosen["amx_choice"]["on"] if chosen.get("amx_choice") else chosen
        )  # this process's search
        lines += [
            f"## {m['model']}",
            "",
            f"| candidate | checks | top-1 % | {col} | × current best |",
            "|---|---|---:|---:|---:|",
        ]
        for r in m["candidates"] + m["mixed_precision"]["trials"] + m.get("one_thread_passes", []):
            checks = "pass" if r["passed"] else "fail: " + r["why"].replace("|", "/")[:100]
            top1 = f"{100 * r['test_top1']:.2f}" if r["passed"] else ""
            val = (f"{r[key]:.1f}" if host else f"{r[key]:,.0f}") if r.get(key) else ""
            vs = _versus(r.get("vs_current_best") or r.get("vs_fastest_first_run"))
            lines.append(f"| `{r['label']}` | {checks} | {top1} | {val} | {vs} |")
        fp = ", ".join(f"`{k}` {measure.fmt(v)}" for k, v in m[f"fp32_{key}"].items()) or "not measured"
        took = f" ({measure.fmt(m['choice'][key])})" if m["choice"][key] else f" ({m['method']})"
        left = "; ".join(f"`{a}` is `{b}`'s graph" for a, b in (m.get("sources_left_out") or {}).items())
        lines += [
            "",
            *([f"Source graphs left out: {left}.", ""] if left else []),
            f"FP32 in the same run: {fp}. Layers kept FP32 by measurement: "
            f"{', '.join(m['mixed_precision']['kept_fp32']) or 'none'}. "
            f"**Choice: `{m['choice']['label']}`**{took}.",
            "",
        ]
        lines += amx_lines(chosen) if chosen.get("amx_choice") else []
    return "\n".join(lines)


def _versus(vs: dict[str, Any] | None) -> str:
    """A trial against the current best: the ratio, and on the host its paired 95 % interval."""
    if not vs:
        return ""
    lo, hi = vs["ci95"]
    return f"{vs['ratio']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if hi > lo else "")


def add_search_flags(p: argparse.ArgumentParser, json_default: str, timing_help: str, runtime: str) -> None:
    """The flags both searches (ONNX Runtime, LiteRT) share, spelled the same."""
    add_common(
        p,
        "json",
        json={"default": Path(json_default), "help": f"writes PATH and PATH.md (default {json_default})"},
    )
    p.add_argument("--runs", type=int, default=2000, help="timed runs per candidate (default 2000)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20; at most --runs)")
    p.add_argument("--data-dir", type=path_arg, default=None)
    p.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True, help=timing_help)
    p.add_argument(
        "--amx",
        choices=("auto", "on", "off"),
        default="auto",
        help=f"auto (default): where the CPU has AMX (and the search is timed on this host), search "
        f"again with AMX refused and keep the faster choice by a cross-process pair (the record then "
        f"says `amx: off`; bench, select and a deployment repeat it); elsewhere as on. on: as {runtime} "
        f"chooses. off: refuse Intel AMX to {runtime} (runtime/amx.py), as `bench --amx off` does, so "
        "the choice is the fastest with AVX-512 VNNI kernels",
    )


# Refusing AMX is kept only if the cross-process pair's 95 % interval lies below this: the same file
# in two processes measured 0.998-1.008 over four launches (runtime.bench.LOCKSTEP_LAUNCHES; up to
# ±5 % in a single launch), so the in-process 0.995 is not margin enough.
AMX_OFF_BELOW = 0.98


def amx_header(res: dict[str, Any]) -> str:
    """The record title's AMX part: refused, chosen per model, or (`auto` with no AMX to decide on:
    a CPU without it, or hidden by --isa) nothing chosen."""
    amx = res.get("amx")
    if amx == "off":
        return "; AMX refused"
    if amx == "auto":
        chosen = any(m.get("amx_choice") for m in res.get("models", []))
        return "; with AMX and without, chosen per model" if chosen else "; no AMX to decide on"
    return ""


def amx_to_choose(args: argparse.Namespace, cpu: dict[str, Any]) -> bool:
    """`--amx auto`, timed on this host, on a CPU (as this process sees it: --isa may hide AMX)
    whose int8 AMX the runtime would take: then the search also runs with AMX refused."""
    from lenet_edge.runtime.amx import applies

    return (
        args.amx == "auto"
        and args.timing
        and getattr(args, "target", "host") == "host"
        and applies()
        and "amx_int8" in cpu.get("isa_flags", [])
    )


def search_with_amx_refused(
    module: str, name: str, args: argparse.Namespace, work: Path, extra: list[str]
) -> dict[str, Any]:
    """The same search for one model in a child process with AMX refused (`--amx off`, nothing
    published): its record's entry for the model."""
    from lenet_edge.runtime.files import ROOT, inside

    out = inside(work, work / f"{name}.amx-off.json").resolve()
    cmd = [sys.executable, "-m", module, "--model", name, "--onnx-dir", str(args.onnx_dir.resolve())]
    cmd += ["--amx", "off", "--no-publish", "--json", str(out)]
    cmd += ["--runs", str(args.runs), "--rounds", str(args.rounds)]
    cmd += ["--data-dir", str(args.data_dir.resolve())] if args.data_dir else []
    cmd += ["--workflow", str(Path(args.workflow).resolve())] if args.workflow else []
    print(f"{name}: the same search with AMX refused (a child process)", flush=True)
    proc = subprocess.run(cmd + extra, cwd=ROOT, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        from lenet_edge.runtime.bench import child_error

        raise LenetEdgeError(f"{name}: the search with AMX refused failed: {child_error(proc.stderr)}")
    return json.loads(out.read_text())["models"][0]


def pair_amx(
    name: str, off: tuple[Path, str], on: tuple[Path, str], call: str, runs: int
) -> tuple[dict[str, Any] | None, bool]:
    """The AMX-refused choice against the AMX one, each in a process of its own in lockstep
    (runtime.bench.pair_lockstep): the paired ratio (`processes: 2`) and whether refusing is kept
    (interval below AMX_OFF_BELOW). `off` / `on`: (file, label)."""
    from lenet_edge.runtime.bench import pair_lockstep, paired_ratio

    meds = pair_lockstep((off[0], call, "off"), (on[0], call, "on"), 1, 1, max(20, runs // 10), 200)
    v = paired_ratio(meds["a"], meds["b"])
    v = v | {"processes": 2} if v else None
    keep_off = v is not None and v["ci95"][1] < AMX_OFF_BELOW
    said = f"{v['ratio']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" if v else "no valid pair"
    print(f"{name}: AMX refused {off[1]} / AMX on {on[1]}: {said} -> AMX {'off' if keep_off else 'on'}")
    return v, keep_off


def amx_record(
    m: dict[str, Any], off: dict[str, Any], v: dict[str, Any] | None, keep_off: bool
) -> dict[str, Any]:
    """m with `amx` and `amx_choice` (this process's choice, the child's search, the pair, the rule)."""
    return m | {
        "amx": "off" if keep_off else "on",
        "amx_choice": {
            "on": {"choice": m["choice"], "fp32_p50_us": m["fp32_p50_us"]},
            "search": off,
            "off_over_on": v,
            "rule": f"AMX refused only if the cross-process paired 95 % interval lies below {AMX_OFF_BELOW}",
        },
    }


def amx_lines(m: dict[str, Any]) -> list[str]:
    """The Markdown sentence for a model whose search chose AMX by a cross-process pair."""
    v = m["amx_choice"]["off_over_on"]
    off = m["amx_choice"]["search"]
    pair = f"{_versus(v)} ({v['p50_us'][0]:.1f} vs {v['p50_us'][1]:.1f} µs)" if v else "no valid pair"
    return [
        f"With AMX refused (the same search in a child process) the choice was `{off['choice']['label']}`. The "
        f"two choices as a pair, each in its own process (lockstep): AMX refused / AMX on {pair}; refusing "
        f"is kept if the interval lies below {AMX_OFF_BELOW}. **Published: `{m['choice']['label']}` with AMX "
        f"{m['amx']}**.",
        "",
    ]


def choose_amx(m: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """m["model"]'s search again with AMX refused (a child, which leaves its choice and record in
    a folder here), the two choices as a cross-process pair; if refusing wins, that choice (copied
    into `work` with its record) becomes m's, for `publish`."""
    from lenet_edge.runtime.files import inside, quantize_record_path

    name = m["model"]
    keep = inside(work, work / f"{name}.amx-off")
    keep.mkdir()
    off = search_with_amx_refused(
        "lenet_edge.quantize.search", name, args, work, ["--choice-dir", str(keep.resolve())]
    )
    f_off = inside(work, work / f"amx-off.{off['choice']['file']}")
    shutil.copyfile(keep / off["choice"]["file"], f_off)
    shutil.copyfile(quantize_record_path(keep / off["choice"]["file"]), quantize_record_path(f_off))
    on = m["choice"]
    v, keep_off = pair_amx(
        name, (f_off, off["choice"]["label"]), (work / on["file"], on["label"]), "iobinding", args.runs
    )
    m = amx_record(m, off, v, keep_off)
    if not keep_off:
        return m
    return m | {
        "choice": off["choice"] | {"file": f_off.name},
        "fp32_p50_us": off["fp32_p50_us"],  # the p50s of that choice's own run
        "choice_over_best_fp32_first_run": off["choice_over_best_fp32_first_run"],
        "method": m["method"] + "; AMX refused and on searched alike, compared as a cross-process pair",
    }


def write_result(path: Path, res: dict[str, Any], markdown: str) -> None:
    """The search record as PATH (JSON) and PATH.md, each written atomically."""
    from lenet_edge.runtime.files import write_json_and_markdown

    twin = write_json_and_markdown(path, res, markdown)
    print(f"wrote {path} and {twin}")


def check_search_flags(args: argparse.Namespace) -> int:
    """Checks --runs and --rounds; the rounds to time with: a round times >= 1 call of each
    candidate, so at most --runs of them (as `bench` does)."""
    from lenet_edge.runtime.contract import runs_problem

    if args.runs < 1 or args.rounds < 1:
        raise LenetEdgeError(f"--runs ({args.runs}) and --rounds ({args.rounds}) must be >= 1")
    too_many = runs_problem({"--runs": args.runs, "--rounds": args.rounds})
    if too_many:
        raise LenetEdgeError(too_many)
    return min(args.rounds, args.runs)


def refuse_amx_if_asked(args: argparse.Namespace) -> None:
    if args.amx == "off":  # before any runtime starts; the timing children inherit it
        from lenet_edge.runtime.amx import deny_amx

        deny_amx()


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.search", __doc__)
    add_model_flags(p)
    p.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"))
    add_search_flags(
        p,
        "build/bench/search.json",
        "--no-timing: build and check every candidate, record the documented default (CI)",
        "onnxruntime",
    )
    p.add_argument(
        "--target",
        choices=("host", *ARM_CPUS),
        default="host",
        help="host (default): time the candidates on this machine; cortex-a72 / cortex-a76: count their "
        "aarch64 instructions per inference under qemu-user instead (sets up the aarch64 sysroot as "
        "`lenet-edge arm-check` does) and publish <model>.int8.search.<cpu>.onnx",
    )
    p.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write each model's choice to --onnx-dir as <model>.int8.search.onnx (--target cortex-*: "
        "<model>.int8.search.<cpu>.onnx) + its record, for bench, bundle and select (default: yes)",
    )
    p.add_argument("--choice-dir", type=path_arg, default=None, help=argparse.SUPPRESS)  # choose_amx's child
    args = p.parse_args(argv)
    rounds = check_search_flags(args)
    if args.target != "host" and args.timing:
        from lenet_edge.cli import arm_setup

        if arm_setup() != 0:
            raise LenetEdgeError(f"--target {args.target}: the aarch64 sysroot could not be set up")
    refuse_amx_if_asked(args)
    import onnxruntime

    from lenet_edge.runtime.env import environment
    from lenet_edge.runtime.files import owned_temp_dir

    names = selected(args.model, args.workflow)
    env = environment({"onnxruntime": onnxruntime.__version__})
    res: dict[str, Any] = {
        "command": command_line("search", argv),
        "cpu": env["cpu"],
        "onnxruntime": onnxruntime.__version__,
        "amx": args.amx,
        "target": args.target,
        "environment": env,
        "models": [],
    }
    measure = Measure(args.target, args.runs, rounds)
    with owned_temp_dir("search") as work:
        for name in names:
            m = search_model(
                name, args.onnx_dir, work, measure, args.data_dir or data_source(name), args.timing
            )
            if args.choice_dir is not None:  # for the parent of choose_amx: the choice and its record
                from lenet_edge.runtime.files import quantize_record_path

                f = work / m["choice"]["file"]
                shutil.copyfile(f, args.choice_dir / f.name)
                shutil.copyfile(quantize_record_path(f), quantize_record_path(args.choice_dir / f.name))
            if amx_to_choose(args, env["cpu"]):
                m = choose_amx(m, args, work)
            res["models"].append(m)
            c = m["choice"]
            took = (
                f"{measure.fmt(c[measure.key])} (FP32 in the same run: "
                f"{measure.fmt(min(m[f'fp32_{measure.key}'].values()))})"
                if c[measure.key]
                else m["method"]
            )
            print(f"{name}: {c['label']} {took}")
            if args.publish:
                from lenet_edge.quantize.ort_quant import fp32_source
                from lenet_edge.quantize.published import publish

                src = fp32_source(args.onnx_dir, name, SOURCES[c["source"]])
                cpu = describe_cpu(env["cpu"]) if args.target == "host" else f"{args.target} (qemu-user)"
                out = publish(args.onnx_dir, name, work, m, src, cpu, args.target)
                print(f"{name}: published {out}")
    write_result(args.json, res, to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
