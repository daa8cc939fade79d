"""Per-target choice: reads a benchmark result (runtime.bench JSON) and the artifacts' records;
writes, per model and runtime, the artifact to deploy and the evidence for it.

A candidate is one of lenet-edge's own artifacts (never a stock one) that passed its checks: an
INT8 ONNX model whose quantize record meets results/tolerances.json, a .tflite file published by
`make tflite` (published means checked) or by the LiteRT search while its source is unchanged, or an FP32 file (each is checked against the export when
made). The choice is the fastest p50 at batch 1, one thread, in that one interleaved run, checked
by pairs: the candidates within 1.15x of it are timed alone with it in alternating blocks, and one
clearly faster takes its place (the benchmark's and `make search`'s rule; a round-robin on a shared
host named files "best" that pairs showed 18-23 % slower than another). The fastest INT8 candidate
is recorded beside it, checked the same way. The pairs load each candidate's runtime, so a timed
`select` runs where the benchmark ran (`.venv-device`). The CPU comes from the benchmark's environment
capture, never from a machine name. `--no-timing` records the documented default instead.
A row whose file no longer has the sha256 the benchmark recorded (re-published under the same name
since, e.g. by a `make search` with other flags) is not a candidate; the choices carry the sha256 of
the file chosen. For each other setting the benchmark ran (batch 1 on two threads, batch 64, ...),
`choices_other_settings` names the round-robin's fastest candidate there (not paired) and what the
batch-1 one-thread choice takes there: a deployment with more threads or larger batches reads its
file from there (a one-thread choice can be much slower with two threads).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenet_edge.runtime.bench import CLOSE_TO_FASTEST, KEEP_IF_PAIRED_BELOW
from lenet_edge.runtime.cli import add_common, int_range, parser, path_arg
from lenet_edge.runtime.contract import MAX_RUNS
from lenet_edge.runtime.errors import ConfigError
from lenet_edge.runtime.files import inside, quantize_record_path, read_json, sha256_file, write_json_atomic
from lenet_edge.runtime.numeric import finite

# The documented default per runtime (README, "Per-target choice"): what the measurements on both
# x86 machine kinds and aarch64 favour for INT8 so far; used by --no-timing (CI).
DEFAULTS = {
    "onnxruntime": "int8.s2d.ort",
    "ai-edge-litert": "int8.dynamic.tflite",
    # the first-conv float-front twin: the fastest INT8 with AVX2 kernels, ~3 % behind int8.fc on AVX-512
    "tflite-runtime": "int8.mixed.tflite",
}
PAIR_ROUNDS = 200  # the benchmark's paired rounds (runtime.bench, 2000 runs)
PAIR_WARMUP = 200


def _check_rows(bench: dict[str, Any], source: str) -> None:
    """Every row select reads is a benchmark row: a plain file name, string fields, a positive finite
    p50 (NaN, inf, 0 or a negative p50 is never a measurement to choose by); the environment and
    settings objects. A hand-edited or truncated result is one error naming the row."""
    for key in ("environment", "settings"):
        if key in bench and not isinstance(bench[key], dict):
            raise ConfigError(f"{source}: '{key}' must be an object")
    for i, r in enumerate(bench["results"]):
        where = f"{source}: results[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: not an object")
        if r.get("stock") or r.get("model") == "floor":
            continue  # never a candidate
        for key in ("file", "model", "runtime", "format", "call"):
            v = r.get(key)
            if not isinstance(v, str) or not v or "\0" in v:
                raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {v!r:.60}")
        for key in ("batch", "threads"):
            if key in r and (not isinstance(r[key], int) or isinstance(r[key], bool)):
                raise ConfigError(f"{where}: '{key}' must be an integer, got {r[key]!r:.60}")
        p50 = r.get("latency_ms_p50")
        if not finite(p50) or p50 <= 0:
            raise ConfigError(
                f"{where} ({r['file']}): latency_ms_p50 must be a positive finite number, got {p50!r:.60}"
            )
        if r.get("file_sha256") is not None and not isinstance(r["file_sha256"], str):
            raise ConfigError(f"{where} ({r['file']}): file_sha256 must be a string")


def _changed(onnx_dir: Path, row: dict[str, Any]) -> str | None:
    """Why the file a bench row names no longer holds the bytes it timed; None if it does, if it is
    missing (`_passes` leaves that out), or if the row predates the per-row sha256."""
    f = inside(onnx_dir, onnx_dir / row["file"])  # a name from the bench JSON never leaves the folder
    timed = row.get("file_sha256")
    if timed and f.is_file() and sha256_file(f) != timed:
        return "changed since the benchmark timed it (sha256 differs): run `make bench` again"
    return None


def _passes(onnx_dir: Path, row: dict[str, Any], tol: dict[str, Any]) -> bool:
    """The artifact passed its checks: INT8 ONNX by its quantize record; others when they exist."""
    from lenet_edge.quantize.checks import int8_failures

    f = inside(onnx_dir, onnx_dir / row["file"])
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
        if not isinstance(rec, dict) or rec.get("stock"):
            return False
        try:
            return not int8_failures(rec, tol)
        except (KeyError, TypeError, ValueError) as e:  # not the shape `make quantize` writes
            raise ConfigError(
                f"{rec_path}: not a quantize record select can read ({e.__class__.__name__}: {e})"
            ) from e
    if row["file"].endswith(".tflite") and ".int8.search" in row["file"]:
        from lenet_edge.quantize.published import stale_reason  # the LiteRT search's choice, checked there

        return not stale_reason(f)
    return True


def select(
    bench: dict[str, Any],
    onnx_dir: Path,
    timing: bool = True,
    pair_rounds: int = PAIR_ROUNDS,
    warmup: int = PAIR_WARMUP,
    source: str = "bench result",
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Per model and runtime, the artifact to deploy. With timing, the round-robin's fastest
    candidate (and the fastest INT8 one) is checked by pairs first (pair_rounds > 0): candidates
    within CLOSE_TO_FASTEST of its p50 are timed as pairs with it and one clearly faster replaces it
    (runtime.bench.check_sides_by_pairs, the benchmark's and `make search`'s rule)."""
    from lenet_edge.quantize.checks import load_tolerances, tolerances_for
    from lenet_edge.runtime.bench import check_sides_by_pairs, goal_side, row_cell
    from lenet_edge.workflow import workflows

    if not isinstance(bench, dict) or not isinstance(bench.get("results"), list):
        raise ConfigError(f"{source}: not a runtime.bench result (no 'results')")
    if pair_rounds < 0:
        raise ConfigError("--pair-rounds must be >= 0")
    _check_rows(bench, source)
    tol = load_tolerances()
    timed = [r for r in bench["results"] if not r.get("stock") and r.get("model") != "floor"]
    # a row whose file was re-published since (same name, other bytes) says nothing about it
    named = {r["file"]: r for r in timed}
    changed = {n: why for n, r in named.items() if (why := _changed(onnx_dir, r))}
    for name, why in sorted(changed.items()):
        say(f"not a candidate: {name}: {why}")
    timed = [r for r in timed if r["file"] not in changed]
    passing: dict[str, bool] = {}

    def candidates(rows: list[dict[str, Any]], model: str, rt: str) -> list[dict[str, Any]]:
        # a model with a workflow is checked against its own tolerances
        mtol = tolerances_for(model) if model in workflows() else tol
        out = []
        for r in rows:
            if r["model"] == model and r["runtime"] == rt:
                if r["file"] not in passing:
                    passing[r["file"]] = _passes(onnx_dir, r, mtol)
                if passing[r["file"]]:
                    out.append(r)
        return out

    rows = [r for r in timed if r.get("batch") == 1 and r.get("threads") == 1]
    choices = []
    for model in sorted({r["model"] for r in rows}):
        for rt in sorted({r["runtime"] for r in rows if r["model"] == model}):
            cands = candidates(rows, model, rt)
            if not cands:
                continue
            int8 = [r for r in cands if "int8" in r["format"]]
            dflt = [r for r in cands if r["format"] == DEFAULTS.get(rt)]
            default = min(dflt, key=_p50) if dflt else None
            choices.append(
                {
                    "model": model,
                    "runtime": rt,
                    "choice": goal_side(cands) if timing else row_cell(default or min(cands, key=_p50)),
                    "fastest_int8": goal_side(int8),
                    "candidates": [row_cell(r) for r in sorted(cands, key=_p50)],
                }
            )
    if not choices:  # a wrong --onnx-dir (or a bench of other files) must not replace a good targets file
        raise ConfigError(
            f"{onnx_dir}: none of the files that {source} timed (batch 1, one thread, lenet-edge's) is there "
            "with a record that passes its checks: nothing to select"
        )
    paired = timing and pair_rounds > 0
    if paired:
        _same_cpu_as(bench, source)
        sides = [(c, k) for c in choices for k in ("choice", "fastest_int8") if c[k] and c[k]["close"]]
        n = sum(len(c[k]["close"]) for c, k in sides)
        say(
            f"checking the round-robin's choices by pairs: {n} candidates close to them (batch 1, one thread)"
        )
        by_name = {r["file"]: onnx_dir / r["file"] for r in rows}
        kept = check_sides_by_pairs([c[k] for c, k in sides], by_name, 1, 1, pair_rounds, warmup)
        for (c, k), side in zip(sides, kept, strict=True):
            c[k] = side
    elif timing:  # the round-robin's word alone: no rows were paired
        for c in choices:
            for k in ("choice", "fastest_int8"):
                if c[k]:
                    c[k].pop("close")
    # The benchmark's other settings (batch, intra-op threads): the round-robin's fastest there (no
    # pairs: with more threads on a few cores there is no steady state, docs/performance.md). The
    # batch-1 one-thread choice can lose there, e.g. the search's `uint8-transpose` input reorder,
    # which onnxruntime 1.32 splits into one thread-pool job per row with 2+ threads.
    settings = {(r.get("batch"), r.get("threads")) for r in timed} - {(1, 1)}
    more: dict[str, list[dict[str, Any]]] = {}
    for b, t in sorted(x for x in settings if all(isinstance(v, int) for v in x)):
        rows_t = [r for r in timed if (r.get("batch"), r.get("threads")) == (b, t)]
        for c in choices if timing else []:
            cands = candidates(rows_t, c["model"], c["runtime"])
            if not cands:
                continue
            best = min(cands, key=_p50)
            int8 = [r for r in cands if "int8" in r["format"]]
            more.setdefault(f"batch {b}, {t} thread{'s' if t > 1 else ''}", []).append(
                {
                    "model": c["model"],
                    "runtime": c["runtime"],
                    "choice": row_cell(best),
                    "fastest_int8": row_cell(min(int8, key=_p50)) if int8 else None,
                    "one_thread_choice_here": next(
                        (
                            row_cell(r)
                            for r in cands
                            if (r["file"], r["call"]) == (c["choice"]["file"], c["choice"]["call"])
                        ),
                        None,
                    ),
                }
            )
    for c in [*choices, *(x for v in more.values() for x in v)]:  # the bytes chosen, so a deployment
        for k in ("choice", "fastest_int8"):  # can check it ships the file measured
            if c[k]:
                c[k]["file_sha256"] = sha256_file(onnx_dir / c[k]["file"])
    env = bench.get("environment", {})
    method = "documented default"
    if timing:
        method = "fastest measured p50 (batch 1, one thread), one interleaved run" + (
            f"; candidates within {CLOSE_TO_FASTEST}x of it paired with it ({pair_rounds} rounds), "
            f"one with a 95 % interval wholly below {KEEP_IF_PAIRED_BELOW} replaces it"
            if paired
            else ""
        )
    return {
        "method": method,
        "cpu": env.get("cpu"),
        "machine": env.get("machine"),
        "runtime_versions": {k: env.get(k) for k in ("onnxruntime", "numpy") if k in env},
        # a process-wide runtime setting the choice was measured with (runtime/amx.py): deploy with it
        "amx": (bench.get("settings") or {}).get("amx", "on"),
        "defaults": DEFAULTS,
        "changed_since_bench": changed,
        "choices": choices,
        # per other (batch, intra-op threads) the benchmark ran: the round-robin's fastest there
        "choices_other_settings": more,
    }


def _same_cpu_as(bench: dict[str, Any], source: str) -> None:
    """Pairs time the files here: refuse unless this is the CPU (and ISA mask) the benchmark saw;
    refuse AMX to the pairs' runtimes if the benchmark did (runtime/amx.py)."""
    from lenet_edge.runtime.env import cpu_info

    ran = (bench.get("environment") or {}).get("cpu") or {}
    here = cpu_info()
    for key in ("model", "isa_flags"):
        if ran.get(key) != here.get(key):
            raise ConfigError(
                f"{source}: the benchmark ran on a CPU with {key} {ran.get(key)!r}, this one has {here.get(key)!r}: "
                "select where it ran (with the same --isa), or pass --pair-rounds 0"
            )
    if (bench.get("settings") or {}).get("amx") == "off":
        from lenet_edge.runtime.amx import deny_amx

        deny_amx()


def _said(side: dict[str, Any]) -> str:
    amx = ", AMX off" if side.get("amx") == "off" else ""
    text = f"{side['file']} ({side['call']}{amx}, {1e3 * side['latency_ms_p50']:.1f} µs)"
    rr = side.get("round_robin_best")
    if rr:
        v = rr["vs_chosen"]
        text += f" [pairs: {v['ratio']:.3f} of the round-robin's {rr['file']} ({rr['call']})]"
    return text


def _p50(r: dict[str, Any]) -> float:
    return r["latency_ms_p50"]


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.select", __doc__)
    p.add_argument(
        "--bench", type=path_arg, default=Path("build/bench/bench.json"), help="runtime.bench result JSON"
    )
    p.add_argument(
        "--onnx-dir", type=path_arg, default=Path("build/onnx"), help="the artifacts and their records"
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
    p.add_argument(
        "--pair-rounds",
        type=int_range(0, MAX_RUNS),  # was reported as "--rounds ..." by the pair timing
        default=PAIR_ROUNDS,
        help=f"rounds per pair when checking the round-robin's choice (default {PAIR_ROUNDS}; "
        "0: take its fastest p50 unchecked); the pairs load every runtime, so run it where they are",
    )
    args = p.parse_args(argv)
    res = select(
        read_json(args.bench),
        args.onnx_dir,
        args.timing,
        args.pair_rounds,
        source=str(args.bench),
        say=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    from lenet_edge.runtime.env import code_version, command_line

    code = code_version()
    res = {"command": command_line("select", argv), **res, **({"lenet_edge_code": code} if code else {})}
    write_json_atomic(args.json, res)
    for c in res["choices"]:
        i8 = c["fastest_int8"]
        print(
            f"{c['model']} on {c['runtime']}: {_said(c['choice'])}"
            + (f"; fastest INT8 {_said(i8)}" if i8 else "")
        )
    for setting, cs in res["choices_other_settings"].items():
        for c in cs:
            one = c["one_thread_choice_here"]
            than = (
                ""
                if one is None or one["file"] == c["choice"]["file"]
                else f"; the batch-1 one-thread choice {one['file']} takes {1e3 * one['latency_ms_p50']:.1f} µs here"
            )
            print(f"{c['model']} on {c['runtime']}, {setting}: {_said(c['choice'])}{than}")
    print(f"wrote {args.json} ({res['method']})")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
