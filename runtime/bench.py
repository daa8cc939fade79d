"""Latency benchmark: models x call paths x batch sizes x thread counts -> JSON + Markdown table.

Start-up (session init, first inference, peak RSS) is measured in one subprocess per
configuration; latency in one subprocess per (batch, threads) holding every session, timed in
interleaved blocks over many rounds so that drift of a shared machine lands on all alike.
Reports p50/p90/p99/min, throughput and each model's ratio to its default FP32 session.

Each goal ratio (best INT8 / best FP32, fastest lenet-edge / fastest stock) is then measured again
as a pair, after each side's "best" is itself checked by pairs (the rows close to the round-robin's
fastest are paired with it; one clearly faster takes its place): the two sessions alone,
alternating short blocks A B B A ..., the ratio of each round's two block medians, and the median of those ratios with a distribution-free 95 % interval. A shared
host that flips between a fast and a ~1.6x slower state moves a round-robin p50 by several percent
(an A/A pair of one file loaded twice: 0.93-1.04); the paired ratio of that pair stays within 0.5 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .amx import deny_amx, effective_amx, refused_here
from .cli import add_common, parser, path_arg
from .contract import IMAGE_SHAPE, MAX_BATCH, MAX_THREADS, check_pixels, runs_problem
from .env import command_line, describe_cpu, provenance_text
from .errors import ConfigError, LenetEdgeError
from .files import missing_file, sha256_file, write_json_and_markdown
from .runner import check_scores

SCHEMA = "lenet-edge/bench/v1"
CALLS = ("run", "iobinding")


def fixed_input(batch: int, image_shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """Deterministic raw-pixel batch (seeded), so every runtime times the same numbers."""
    rng = np.random.default_rng(1234)
    return rng.integers(0, 256, size=(batch, *image_shape)).astype(np.float32)


def native_input(runner: Any, batch: int) -> np.ndarray:
    """The fixed batch, validated once, in the dtype the model takes (uint8 for full-int8 TFLite):
    the timed call does no conversion, as on a device feeding camera bytes."""
    from .runner import as_native

    shape = runner.image_shape
    return as_native(check_pixels(fixed_input(batch, shape), shape), runner.input_dtype)


def is_stock(path: Path) -> bool:
    """What a user gets from the stock tools alone: the plain export (`<model>.fp32.onnx`) and the
    `.stock.` conversions; everything else is lenet-edge's own (passes, recipes, variants)."""
    return ".stock." in path.name or path.name.endswith(".fp32.onnx")


# A goal side's round-robin best is not taken on trust: every row of that side within
# CLOSE_TO_FASTEST of its p50 is timed as a pair with it (measure_paired), and one whose 95 %
# interval lies wholly below KEEP_IF_PAIRED_BELOW (faster, with confidence, by more than the
# 0.3-0.5 % an A/A pair shows) replaces it; the goal is then paired between the sides' choices.
# `make search` decides by the same rule (quantize.search imports both).
CLOSE_TO_FASTEST = 1.15
KEEP_IF_PAIRED_BELOW = 0.995
MAX_CLOSE = 4  # at most this many rows per side are paired (the nearest in p50), to bound the time

# A goal ratio is *settled* when its pair agrees with the round-robin within SETTLED_WITHIN and the
# pair's 95 % interval is narrower than SETTLED_WITHIN of it. On 2 vCPUs batch 1 with two threads
# is not (the round-robin 0.76, pairs 0.78-1.33 for one pair of files: docs/performance.md, Traps);
# the table marks such a figure instead of letting it read like the others.
SETTLED_WITHIN = 0.10


def _fastest(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(rows, key=lambda r: r["latency_ms_p50"]) if rows else None


def row_cell(r: dict[str, Any], with_runtime: bool = False) -> dict[str, Any]:
    """What a summary or a choice keeps of a result row: file, call, p50 (and the runtime; and
    `amx: off` for a file timed without AMX, a process-wide setting a deployment must repeat)."""
    c = {"file": r["file"], "call": r["call"], "latency_ms_p50": r["latency_ms_p50"]}
    c |= {"amx": "off"} if r.get("amx") == "off" else {}
    return c | {"runtime": r["runtime"]} if with_runtime else c


def goal_side(rows: list[dict[str, Any]], with_runtime: bool = False) -> dict[str, Any] | None:
    """The round-robin's fastest row of one goal side, and in `close` the rows within
    CLOSE_TO_FASTEST of it (nearest first, at most MAX_CLOSE) that the pairs then check."""
    best = _fastest(rows)
    if best is None:
        return None

    near = sorted(
        (
            r
            for r in rows
            if r is not best and r["latency_ms_p50"] <= CLOSE_TO_FASTEST * best["latency_ms_p50"]
        ),
        key=lambda r: r["latency_ms_p50"],
    )
    return row_cell(best, with_runtime) | {"close": [row_cell(r, with_runtime) for r in near[:MAX_CLOSE]]}


def _set_ratios(entry: dict[str, Any]) -> None:
    """The round-robin p50 ratios of the entry's sides (again after the pairs changed a side)."""

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        return a["latency_ms_p50"] / b["latency_ms_p50"] if a and b else None

    for v in entry["per_runtime"].values():
        v["int8_over_fp32"] = ratio(v["best_int8"], v["best_fp32"])
    entry["lenet_edge_over_stock"] = ratio(entry["best_lenet_edge"], entry["best_stock"])


def summarize_goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, batch and threads: per runtime the best INT8 and best FP32 p50 and their ratio;
    and the best lenet-edge artifact against the best stock one (any runtime). Ratios in one run.
    Each side also lists the rows close to it (`close`), which _confirm_sides pairs with it."""
    out = []
    for key in sorted({(r["model"], r["batch"], r["threads"]) for r in results}):
        rows = [r for r in results if (r["model"], r["batch"], r["threads"]) == key]
        entry: dict[str, Any] = {"model": key[0], "batch": key[1], "threads": key[2], "per_runtime": {}}
        for rt in sorted({r["runtime"] for r in rows}):
            rr = [r for r in rows if r["runtime"] == rt]
            entry["per_runtime"][rt] = {
                "best_int8": goal_side([r for r in rr if "int8" in r["format"]]),
                "best_fp32": goal_side([r for r in rr if "int8" not in r["format"]]),
            }
        entry["best_lenet_edge"] = goal_side([r for r in rows if not r["stock"]], with_runtime=True)
        entry["best_stock"] = goal_side([r for r in rows if r["stock"]], with_runtime=True)
        _set_ratios(entry)
        out.append(entry)
    return out


def model_label(path: Path) -> tuple[str, str]:
    """lenet_pool.int8.qdq.onnx -> ('lenet_pool', 'int8.qdq'); floor.onnx -> ("floor", "floor")."""
    stem = path.name.removesuffix(".onnx")
    model, _, fmt = stem.partition(".")
    return model, fmt or model  # lenet_pool.fp32.tflite -> ('lenet_pool', 'fp32.tflite')


def _amx_args(amx: str) -> list[str]:
    return ["--amx", "off"] if amx == "off" else []


def _load(model: Path, threads: int, call: str) -> Any:
    from .runner import SessionConfig, load_runner

    return load_runner(model, SessionConfig(threads=threads, io_binding=call == "iobinding"))


def measure_startup(model: Path, batch: int, threads: int, call: str) -> dict[str, Any]:
    """Child process, one per configuration: session init, first inference, peak RSS."""
    t0 = time.perf_counter()
    runner = _load(model, threads, call)
    init_ms = (time.perf_counter() - t0) * 1e3
    x = native_input(runner, batch)
    if not runner.accepts_batch(batch):
        return {"skipped": f"static batch {runner.static_batch}"}
    if call == "iobinding" and runner.backend != "onnxruntime":
        return {"skipped": "IO binding is an onnxruntime call path"}
    t0 = time.perf_counter()
    out = runner.run_checked(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    check_scores(runner.name, np.asarray(out), batch)  # a model that computes garbage is not timed
    for _ in range(50):
        runner.run(x)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "session_init_ms": init_ms,
        "first_inference_ms": first_ms,
        "peak_rss_mb": rss_mb,
        "runner": runner.info(),
    }


def _warm_sessions(
    configs: list[tuple[Path, str]], batch: int, threads: int, warmup: int
) -> dict[tuple[Path, str], tuple[Any, np.ndarray]]:
    """Each (model, call) loaded, fed its native input `warmup` times: its bare `run` and that input."""
    out = {}
    for model, call in configs:
        runner = _load(model, threads, call)
        x = native_input(runner, batch)
        for _ in range(warmup):
            runner.run(x)
        out[(model, call)] = (runner.run, x)
    return out


def measure_latency(
    configs: list[tuple[Path, str]], batch: int, threads: int, runs: int, warmup: int, rounds: int
) -> dict[str, list[int]]:
    """Child process, one per (batch, threads): every session loaded, timed in interleaved blocks.

    Each round times every (model, call) for runs/rounds calls after 10 untimed ones; the input
    is validated once, the timed loop is the runner's bare `run`, the path a device loop takes.
    """
    warm = _warm_sessions(configs, batch, threads, warmup)
    runs_by_key = {f"{model}|{call}": warm[(model, call)] for model, call in configs}
    per_round = max(1, -(-runs // rounds))
    samples: dict[str, list[int]] = {k: [] for k in runs_by_key}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for key, (run, x) in runs_by_key.items():
            for _ in range(10):
                run(x)
            out = samples[key]
            for _ in range(per_round):
                t = clock()
                run(x)
                out.append(clock() - t)
    return samples


PAIRED_BLOCK = 20  # timed calls per block of a paired comparison
PAIRED_WARM_NS = 5_000_000  # untimed calls before them: at least 10 and 5 ms (see measure_paired)


def measure_paired(
    pairs: list[tuple[tuple[Path, str], tuple[Path, str]]], batch: int, threads: int, rounds: int, warmup: int
) -> list[dict[str, list[int]]]:
    """Child process: for each pair (A, B), `rounds` rounds of one block each, in the order A B then
    B A (so neither always runs first). A block is untimed calls for at least 10 calls and 5 ms, then
    PAIRED_BLOCK timed ones, reduced to their median (ns). Returns per pair {"a": medians, "b": medians}.

    The untimed part is long because a session switched to is not at its steady speed for a while:
    on the Xeon, `lenet_pool`'s INT8 file against its FP32 one measured 0.995 after 10 untimed
    calls per block and 0.95-0.96 after 100 (about 2.5 ms), the figure long blocks also give."""
    sessions = _warm_sessions(list({c for pair in pairs for c in pair}), batch, threads, warmup)
    out = []
    for a, b in pairs:
        meds: dict[str, list[int]] = {"a": [], "b": []}
        for r in range(rounds):
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                meds[side].append(_block(*sessions[a if side == "a" else b]))
        out.append(meds)
    return out


def _block(run: Any, x: np.ndarray) -> int:
    """One block of a paired comparison: untimed calls for at least 10 calls and PAIRED_WARM_NS,
    then PAIRED_BLOCK timed ones; their median (ns)."""
    clock = time.perf_counter_ns
    start, n = clock(), 0
    while n < 10 or clock() - start < PAIRED_WARM_NS:
        run(x)
        n += 1
    ts = []
    for _ in range(PAIRED_BLOCK):
        t = clock()
        run(x)
        ts.append(clock() - t)
    return int(np.median(ts))


def serve_blocks(config: tuple[Path, str], batch: int, threads: int, warmup: int) -> int:
    """Child process of pair_lockstep: one session, warmed; prints `ready`, then for each `block`
    line on stdin one block's median (ns) on stdout; stops at end of input or any other line. The
    `ready` line says whether this process refused AMX (--amx off)."""
    run, x = _warm_sessions([config], batch, threads, warmup)[config]
    print("ready", "refused" if refused_here() else "as-the-runtime-chooses", flush=True)
    for line in sys.stdin:
        if line.strip() != "block":
            break
        print(_block(run, x), flush=True)
    return 0


Side = tuple[Path, str, str]  # (model, call, amx)


# A process runs the same file at its own speed, a little off another's (memory placement): one
# file against itself in one launch of two processes measured 0.985-1.007 (LiteRT FP32), 0.988-1.010
# (ORT INT8) and 0.953-1.033 (ORT FP32; once 0.953 [0.873, 0.986]) over six launches each (100
# rounds, the Xeon). Spread over four launches of 50 rounds, the same A/A pairs measured 0.998-1.008
# (twelve pairs, intervals within 0.994-1.025). So a cross-process pair uses several launches.
LOCKSTEP_LAUNCHES = 4


def pair_lockstep(
    a: Side, b: Side, batch: int, threads: int, rounds: int, warmup: int, launches: int = LOCKSTEP_LAUNCHES
) -> dict[str, list[int]]:
    """measure_paired for two sessions that need different process-wide settings (AMX on for one,
    refused for the other): each in a child of its own (serve_blocks), driven in lockstep from here,
    one block at a time (A B, then B A), so only one of them computes at any moment; the rounds are
    shared out over `launches` pairs of fresh children, so no one process's offset decides. Returns
    {"a": block medians, "b": block medians}."""
    meds: dict[str, list[int]] = {"a": [], "b": []}
    launches = max(1, min(launches, rounds))
    done = 0
    for i in range(launches):
        n = rounds // launches + (1 if i < rounds % launches else 0)
        _lockstep_once(a, b, batch, threads, range(done, done + n), warmup, meds)
        done += n
    return meds


def _lockstep_once(
    a: Side, b: Side, batch: int, threads: int, rounds: range, warmup: int, meds: dict[str, list[int]]
) -> None:
    """One launch of pair_lockstep: two fresh children, the given rounds (their parity sets the order)."""
    import contextlib
    import tempfile

    procs: dict[str, Any] = {}
    logs: dict[str, Any] = {}

    def reply(side: str) -> str:
        line = procs[side].stdout.readline()
        if line:
            return line.strip()
        procs[side].wait()
        logs[side].seek(0)
        raise LenetEdgeError(child_error(logs[side].read()))

    def stop() -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    with contextlib.ExitStack() as stack:
        stack.callback(stop)  # runs before the logs close
        for side, (model, call, amx) in (("a", a), ("b", b)):
            logs[side] = stack.enter_context(tempfile.TemporaryFile("w+"))
            procs[side] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"{__package__}.bench",
                    "--serve",
                    json.dumps([str(model), call]),
                ]
                + ["--batch", str(batch), "--threads", str(threads), "--warmup", str(warmup)]
                + _amx_args(amx),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[side],
                text=True,
                env=child_env(),
            )
        for side in procs:
            if not reply(side).startswith("ready"):
                raise LenetEdgeError(f"{(a if side == 'a' else b)[0]}: its timing process did not start")
        for r in rounds:
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                procs[side].stdin.write("block\n")
                procs[side].stdin.flush()
                meds[side].append(int(reply(side)))


def paired_ratio(num: list[int], den: list[int]) -> dict[str, Any] | None:
    """Median over rounds of num/den (block medians of the same round) and its distribution-free
    95 % interval (order statistics of the binomial); None if any block is not a positive finite time."""
    if len(num) != len(den) or not num:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    n = q.size
    if not np.all(np.isfinite(q)) or not np.all(q > 0):
        return None
    q.sort()
    half = 0.98 * np.sqrt(n)  # 1.96 * sqrt(n) / 2
    lo, hi = max(0, int(np.floor(n / 2 - half)) - 1), min(n - 1, int(np.ceil(n / 2 + half)) - 1)
    return {
        "ratio": float(np.median(q)),
        "ci95": [float(q[lo]), float(q[hi])],
        "rounds": int(n),
        # the host's state while pairing (a shared host runs ~1.6x slower at times; ratios move with it)
        "p50_us": [float(np.median(num)) / 1e3, float(np.median(den)) / 1e3],
    }


def child_error(stderr: str) -> str:
    """A failed child's one-line reason: the last line of its stderr, without `error: `."""
    return (stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")


def child_env() -> dict[str, str]:
    """A timing child's environment: the user's, with this package's parent folder first on
    PYTHONPATH so `-m` finds the package (a bundle's `runtime`, or `lenet_edge`) from the user's
    folder, where every model path the user gave still names the same file."""
    env = dict(os.environ)
    parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([parent, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else parent
    env["PYTHONSAFEPATH"] = "1"  # Python >= 3.11: a `runtime/` in the user's folder does not shadow ours
    env.pop("LENET_EDGE_KILL_AT", None)  # a fault point names a moment of this process, not a child's
    return env


def _child(args: list[str]) -> Any:
    # this module's own name (runtime.bench in a bundle, lenet_edge.runtime.bench when installed)
    cmd = [sys.executable, "-m", f"{__package__}.bench", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise LenetEdgeError(child_error(proc.stderr))
    return json.loads(proc.stdout)


def summarize(samples_ns: np.ndarray, batch: int) -> dict[str, float]:
    ms = samples_ns / 1e6
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "latency_ms_min": float(ms.min()),
        "latency_ms_mean": float(ms.mean()),
        "throughput_images_per_s": float(batch / (ms.mean() / 1e3)),
    }


def _ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratio to the model's default FP32 session (exported file, plain run()); best artifact per setting."""

    def default_fp32(r: dict[str, Any]) -> dict[str, Any] | None:
        return next(
            (
                q
                for q in results
                if q["model"] == r["model"]
                and q["format"] == "fp32"
                and q["call"] == "run"
                and q["runtime"] == "onnxruntime"
                and q["batch"] == r["batch"]
                and q["threads"] == r["threads"]
            ),
            None,
        )

    for r in results:
        ref = default_fp32(r)
        r["ratio_p50_vs_fp32"] = r["latency_ms_p50"] / ref["latency_ms_p50"] if ref else None
    best = []
    keys = sorted(
        {(r["model"], r["batch"], r["threads"]) for r in results if r["ratio_p50_vs_fp32"] is not None}
    )
    for model, b, t in keys:
        rows = [r for r in results if (r["model"], r["batch"], r["threads"]) == (model, b, t)]
        top = min(rows, key=lambda r: r["latency_ms_p50"])
        int8 = [r for r in rows if r["format"].startswith("int8")]
        fp32 = [r for r in rows if r["format"].startswith("fp32")]  # ONNX and TFLite alike
        best.append(
            {
                "model": model,
                "batch": b,
                "threads": t,
                "format": top["format"],
                "call": top["call"],
                "latency_ms_p50": top["latency_ms_p50"],
                "ratio_p50_vs_fp32": top["ratio_p50_vs_fp32"],
                # the fastest INT8 against the fastest FP32 of the same model and setting
                "best_int8_over_best_fp32": (
                    min(r["latency_ms_p50"] for r in int8) / min(r["latency_ms_p50"] for r in fp32)
                )
                if int8 and fp32
                else None,
            }
        )
    return best


def run_bench(
    models: list[Path],
    batches: list[int],
    threads: list[int],
    calls: list[str],
    runs: int,
    warmup: int,
    rounds: int,
    progress: bool = True,
) -> dict[str, Any]:
    for m in models:
        problem = missing_file(m, "model file")
        if problem:
            raise ConfigError(f"{m}: {problem}")
    names = [m.name for m in models]
    dup = next((m for m in models if names.count(m.name) > 1), None)
    if dup:  # rows, pairs and `select` name a file by its name alone
        raise ConfigError(f"{dup}: another model given has the same file name; time one of them per run")

    from .cli import quiet
    from .progress import live

    redraw = live()
    progress = progress and not quiet()  # -q: errors and results only

    def say(msg: str) -> None:
        # a terminal redraws one line; a log gets only the per-setting lines, not every start-up
        if progress and redraw:
            print(f"\r{msg:<100}", end="", file=sys.stderr, flush=True)
        elif progress and ": start-up " not in msg:
            print(msg, file=sys.stderr, flush=True)

    paired_rounds = max(20, runs // 10)  # 200 with the default 2000 runs
    # each row names the bytes it timed: a file re-published under the same name later (a `make
    # search` with other flags) is then told apart by `select`; one changed during the run fails it
    hashes = {m: sha256_file(m) for m in models}
    try:
        results = _measure_all(models, batches, threads, calls, runs, warmup, rounds, say)
        by_name = {m.name: m for m in models}
        for r in results:
            r["file_sha256"] = hashes[by_name[r["file"]]]
        summary = summarize_goals(results)
        _confirm_sides(summary, by_name, paired_rounds, warmup, say)
        _pair_goals(summary, by_name, paired_rounds, warmup, say)
    finally:
        if progress and redraw:
            print(file=sys.stderr)  # end the progress line, also before an error message
    changed = [m for m in models if not m.is_file() or sha256_file(m) != hashes[m]]
    if changed:
        raise ConfigError(
            f"{changed[0]}: changed while it was timed (sha256 differs from the start of the run); "
            "nothing written: run the benchmark again when nothing else writes its models"
        )
    best = _ratios(results)
    import onnxruntime

    from .env import environment

    return {
        "schema": SCHEMA,
        "created_unix": int(time.time()),
        "environment": environment({"onnxruntime": onnxruntime.__version__}),
        "settings": {
            "batches": batches,
            "threads": threads,
            "calls": calls,
            "runs": runs,
            "warmup": warmup,
            "rounds": rounds,
            "input": "seeded uniform 0..255 pixels (runtime.bench.fixed_input)",
            "timing": "one process per (batch, threads) holding every session (two where some files' recipes "
            "refuse AMX, a process-wide setting: one per setting); each round times every (model, call) for "
            "runs/rounds calls after 10 untimed ones",
            "paired_rounds": paired_rounds,
            "paired_timing": f"each goal ratio again as a pair in one process (two driven in lockstep where "
            f"one side runs with AMX and the other without; `processes: 2`): {paired_rounds} rounds of one "
            f"block per side (order A B, then B A), untimed calls for >= 10 calls and "
            f"{PAIRED_WARM_NS / 1e6:.0f} ms, then {PAIRED_BLOCK} timed; the median of the per-round ratios of "
            "block medians, distribution-free 95 % interval",
            "paired_choice": f"before that, each goal side's rows within {CLOSE_TO_FASTEST:.2f}x of its round-robin "
            f"best p50 (at most {MAX_CLOSE}, nearest first) are paired with it the same way; one whose interval "
            f"lies wholly below {KEEP_IF_PAIRED_BELOW} replaces it (the lowest ratio wins)",
        },
        "results": results,
        "best": best,
        "summary": summary,
    }


def _sides(entry: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(holder, key) of every goal side of a summary entry that has a row."""
    out = [(v, k) for v in entry["per_runtime"].values() for k in ("best_int8", "best_fp32") if v[k]]
    return out + [(entry, k) for k in ("best_lenet_edge", "best_stock") if entry[k]]


def _goal_pairs(entry: dict[str, Any]) -> list[tuple[dict[str, Any], str, str, str]]:
    """(where the paired figure goes, key, numerator side, denominator side) for each ratio of a
    summary entry that has both sides."""
    out = [
        (v, "int8_over_fp32", "best_int8", "best_fp32")
        for v in entry["per_runtime"].values()
        if v["best_int8"] and v["best_fp32"]
    ]
    if entry["best_lenet_edge"] and entry["best_stock"]:
        out.append((entry, "lenet_edge_over_stock", "best_lenet_edge", "best_stock"))
    return out


Config = tuple[str, str]  # (file name, call)


def _run_pairs(
    pairs: list[tuple[Config, Config]], by_name: dict[str, Path], b: int, t: int, rounds: int, warmup: int
) -> dict[tuple[Config, Config], dict[str, Any] | None]:
    """Each distinct pair (A, B) timed in one child (measure_paired) -> paired_ratio of A / B."""
    todo = list(dict.fromkeys(pairs))
    amx = {f: effective_amx(by_name[f]) for pair in todo for f, _ in pair}
    out: dict[tuple[Config, Config], dict[str, Any] | None] = {}
    for state in ("on", "off"):  # pairs whose files share the AMX setting: one child for all
        same = [p for p in todo if amx[p[0][0]] == amx[p[1][0]] == state]
        if not same:
            continue
        spec = [[[str(by_name[f]), c] for f, c in pair] for pair in same]
        meds = _child(
            ["--paired", json.dumps(spec), "--batch", str(b), "--threads", str(t)]
            + ["--rounds", str(rounds), "--warmup", str(warmup)]
            + _amx_args(state)
        )
        out |= {pair: paired_ratio(m["a"], m["b"]) for pair, m in zip(same, meds, strict=True)}
    for pair in todo:  # one file with AMX, one without: two processes in lockstep
        if amx[pair[0][0]] != amx[pair[1][0]]:
            (fa, ca), (fb, cb) = pair
            m = pair_lockstep((by_name[fa], ca, amx[fa]), (by_name[fb], cb, amx[fb]), b, t, rounds, warmup)
            ratio = paired_ratio(m["a"], m["b"])
            out[pair] = ratio | {"processes": 2} if ratio else None
    return {pair: out[pair] for pair in todo}


def check_sides_by_pairs(
    sides: list[dict[str, Any]], by_name: dict[str, Path], b: int, t: int, rounds: int, warmup: int
) -> list[dict[str, Any]]:
    """Each side (a row from goal_side, with its `close` rows) checked by pairs, all in one child:
    every close row is timed as a pair with the side's round-robin best and gets
    `vs_round_robin_best` (paired_ratio). Returns the sides to keep, in order: the side itself, or
    the close row with the lowest ratio among those clearly faster (interval wholly below
    KEEP_IF_PAIRED_BELOW), which then records the row it replaced in `round_robin_best`."""
    pairs = [((c["file"], c["call"]), (s["file"], s["call"])) for s in sides for c in s["close"]]
    if not pairs:
        return sides
    vs = _run_pairs(pairs, by_name, b, t, rounds, warmup)
    out = []
    for side in sides:
        for c in side["close"]:
            c["vs_round_robin_best"] = vs[((c["file"], c["call"]), (side["file"], side["call"]))]
        faster = [
            c
            for c in side["close"]
            if c["vs_round_robin_best"] and c["vs_round_robin_best"]["ci95"][1] < KEEP_IF_PAIRED_BELOW
        ]
        if not faster:
            out.append(side)
            continue
        win = min(faster, key=lambda c: c["vs_round_robin_best"]["ratio"])
        first = {x: y for x, y in side.items() if x != "close"}
        out.append(
            {x: y for x, y in win.items() if x != "vs_round_robin_best"}
            | {
                "round_robin_best": first | {"vs_chosen": win["vs_round_robin_best"]},
                "close": [c for c in side["close"] if c is not win],
            }
        )
    return out


def _confirm_sides(
    summary: list[dict[str, Any]], by_name: dict[str, Path], rounds: int, warmup: int, say: Any
) -> None:
    """Every goal side of `summary` checked by pairs (check_sides_by_pairs), one child per
    (batch, threads); the p50 ratios follow the sides the pairs changed."""
    settings = sorted({(e["batch"], e["threads"]) for e in summary})
    for i, (b, t) in enumerate(settings):
        entries = [e for e in summary if (e["batch"], e["threads"]) == (b, t)]
        sides = [(h, k) for e in entries for h, k in _sides(e) if h[k]["close"]]
        if not sides:
            continue
        n = len({(c["file"], c["call"], h[k]["file"], h[k]["call"]) for h, k in sides for c in h[k]["close"]})
        say(f"pairs {i + 1}/{len(settings)} batch {b} threads {t}: {n} rows close to a side's best")
        kept = check_sides_by_pairs([h[k] for h, k in sides], by_name, b, t, rounds, warmup)
        for (h, k), side in zip(sides, kept, strict=True):
            h[k] = side
        for e in entries:
            _set_ratios(e)


def _pair_goals(
    summary: list[dict[str, Any]], by_name: dict[str, Path], rounds: int, warmup: int, say: Any
) -> None:
    """Measure every goal ratio of `summary` again as an interleaved pair (measure_paired), one child
    per (batch, threads); adds `<key>_paired` (paired_ratio: ratio, ci95, rounds, p50_us) beside each
    round-robin ratio (None if a block failed to give a positive finite time)."""
    settings = sorted({(e["batch"], e["threads"]) for e in summary})
    for i, (b, t) in enumerate(settings):
        jobs = [
            (holder, key, holder[num], holder[den])
            for e in summary
            if (e["batch"], e["threads"]) == (b, t)
            for holder, key, num, den in _goal_pairs(e)
        ]
        if not jobs:
            continue
        say(
            f"goals {i + 1}/{len(settings)} batch {b} threads {t}: {len(jobs)} goal ratios, {rounds} rounds each"
        )
        pairs = [((n["file"], n["call"]), (d["file"], d["call"])) for _, _, n, d in jobs]
        vs = _run_pairs(pairs, by_name, b, t, rounds, warmup)
        for (holder, key, _, _), pair in zip(jobs, pairs, strict=True):
            holder[f"{key}_paired"] = vs[pair]
            holder[f"{key}_settled"] = settled(holder[key], vs[pair])


def settled(round_robin: float | None, paired: dict[str, Any] | None) -> bool | None:
    """Whether a goal ratio measured two ways is a figure to quote (SETTLED_WITHIN): None if either
    measurement is missing; a NaN or infinite figure is never settled."""
    if round_robin is None or paired is None:
        return None
    ratio, (lo, hi) = paired["ratio"], paired["ci95"]
    if not all(math.isfinite(x) and x > 0 for x in (round_robin, ratio, lo, hi)):
        return False
    return abs(ratio / round_robin - 1) <= SETTLED_WITHIN and (hi - lo) / ratio <= SETTLED_WITHIN


def _measure_all(
    models: list[Path],
    batches: list[int],
    threads: list[int],
    calls: list[str],
    runs: int,
    warmup: int,
    rounds: int,
    say: Any,
) -> list[dict[str, Any]]:
    results = []
    settings = [(b, t) for b in batches for t in threads]
    amx = {m: effective_amx(m) for m in models}
    for i, (b, t) in enumerate(settings):
        startup = {}
        for m in models:
            for c in calls:
                say(f"bench {i + 1}/{len(settings)} batch {b} threads {t}: start-up {m.name} {c}")
                part = _child(
                    ["--startup", str(m), "--batch", str(b), "--threads", str(t), "--calls", c]
                    + _amx_args(amx[m])
                )
                if "skipped" not in part:
                    startup[(m, c)] = part
        if not startup:
            continue  # e.g. only static-batch-1 models at batch 64
        say(
            f"bench {i + 1}/{len(settings)} batch {b} threads {t}: {len(startup)} sessions, {rounds} interleaved rounds"
        )
        lat: dict[str, list[int]] = {}
        for state in ("on", "off"):  # AMX is a process-wide setting: one child per setting
            group = [[str(m), c] for m, c in startup if amx[m] == state]
            if group:
                lat |= _child(
                    ["--latency", json.dumps(group), "--batch", str(b), "--threads", str(t)]
                    + ["--runs", str(runs), "--warmup", str(warmup), "--rounds", str(rounds)]
                    + _amx_args(state)
                )
        for (m, c), st in startup.items():
            samples = np.asarray(lat[f"{m}|{c}"], dtype=np.int64)
            model, fmt = model_label(m)
            results.append(
                {
                    "model": model,
                    "format": fmt,
                    "file": m.name,
                    "stock": is_stock(m),
                    "file_bytes": m.stat().st_size,
                    "runtime": st["runner"]["backend"],
                    "runtime_version": st["runner"]["version"],
                    "call": c,
                    "amx": amx[m],
                    "batch": b,
                    "threads": t,
                    "runs": int(samples.size),
                    "warmup": warmup,
                    "rounds": rounds,
                    "session_init_ms": st["session_init_ms"],
                    "first_inference_ms": st["first_inference_ms"],
                    "peak_rss_mb": st["peak_rss_mb"],
                    **summarize(samples, b),
                    "session": st["runner"],
                }
            )
    if not results:
        raise ConfigError(
            f"nothing to time: every model was skipped at batches {batches} "
            f"(static batch, or a call path its runtime lacks); {', '.join(m.name for m in models)}"
        )
    return results


def to_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"CPU: {describe_cpu(env['cpu'])}"
        + (
            " [--amx off: AMX refused to the runtimes]"
            if report.get("settings", {}).get("amx") == "off"
            else ""
        )
        + f", {env['cpu']['logical_cpus']} logical "
        f"CPUs; {env['os']}; Python {env['python']}, numpy {env['numpy']}, onnxruntime {env.get('onnxruntime', '?')}.",
        *([provenance_text(report)] if provenance_text(report) else []),
        "",
        "| model | format | stock | runtime | call | batch | threads | p50 µs | p90 µs | p99 µs | min µs "
        "| × FP32 (p50) | images/s | init ms | first ms | peak RSS MB |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(
        report["results"], key=lambda r: (r["batch"], r["threads"], r["model"], r["format"], r["call"])
    ):
        ratio = f"{r['ratio_p50_vs_fp32']:.2f}" if r["ratio_p50_vs_fp32"] is not None else "–"
        lines.append(
            f"| {r['model']} | {r['format']}{' (AMX off)' if r.get('amx') == 'off' else ''} | {'stock' if r.get('stock') else 'lenet-edge'} | {r['runtime']} "
            f"| {r['call']} | {r['batch']} | {r['threads']} "
            f"| {1e3 * r['latency_ms_p50']:.1f} | {1e3 * r['latency_ms_p90']:.1f} | {1e3 * r['latency_ms_p99']:.1f} "
            f"| {1e3 * r['latency_ms_min']:.1f} | {ratio} | {r['throughput_images_per_s']:,.0f} "
            f"| {r['session_init_ms']:.1f} | {r['first_inference_ms']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    if report.get("best"):
        lines += [
            "",
            "Best artifact per model and setting, against the default FP32 session (exported file, `run()`):",
            "",
            "| model | batch | threads | best format | call | p50 µs | × default FP32 | best INT8 / best FP32 |",
            "|---|---:|---:|---|---|---:|---:|---:|",
        ]
        for b in report["best"]:
            i8 = f"{b['best_int8_over_best_fp32']:.2f}" if b["best_int8_over_best_fp32"] is not None else "–"
            lines.append(
                f"| {b['model']} | {b['batch']} | {b['threads']} | {b['format']} | {b['call']} "
                f"| {1e3 * b['latency_ms_p50']:.1f} | {b['ratio_p50_vs_fp32']:.2f} | {i8} |"
            )
    if report.get("summary"):
        lines += [
            "",
            "Goals, as ratios within this run: best INT8 / best FP32 per runtime, and the fastest lenet-edge "
            "artifact / the fastest stock artifact (any runtime). The p50 ratio is from the round-robin "
            "table above; *paired* times the same two files again alone, alternating short blocks, and gives "
            "the median of the per-round ratios with its 95 % interval (the figure to trust on a shared host)"
            + (
                ". *AMX off*: the file's recipe refuses AMX (a process-wide setting its search measured "
                "faster; runtime/amx.py), so it is timed in a process of its own, and a pair with a file run "
                "with AMX is timed in two processes driven in lockstep (*2 processes*; one file against "
                "itself that way, four launches: 0.998-1.008 on the Xeon, against 0.995-1.005 in one process):"
                if any(r.get("amx") == "off" for r in report["results"])
                and report.get("settings", {}).get("amx") != "off"
                else ":"
            ),
            "",
            "| model | batch | threads | runtime | best INT8 | best FP32 | INT8 / FP32 (p50) | paired [95 %] |",
            "|---|---:|---:|---|---|---|---:|---:|",
        ]
        for e in report["summary"]:
            for rt, v in e["per_runtime"].items():
                i8, fp = v["best_int8"], v["best_fp32"]
                lines.append(
                    f"| {e['model']} | {e['batch']} | {e['threads']} | {rt} "
                    f"| {_cell(i8)} | {_cell(fp)} | {_ratio(v['int8_over_fp32'])} "
                    f"| {_paired(v.get('int8_over_fp32_paired'), v.get('int8_over_fp32_settled'))} |"
                )
        lines += [
            "",
            "| model | batch | threads | fastest lenet-edge | fastest stock | lenet-edge / stock (p50) "
            "| paired [95 %] |",
            "|---|---:|---:|---|---|---:|---:|",
        ]
        for e in report["summary"]:
            lines.append(
                f"| {e['model']} | {e['batch']} | {e['threads']} | {_cell(e['best_lenet_edge'])} "
                f"| {_cell(e['best_stock'])} | {_ratio(e['lenet_edge_over_stock'])} "
                f"| {_paired(e.get('lenet_edge_over_stock_paired'), e.get('lenet_edge_over_stock_settled'))} |"
            )
        unsettled = sorted(
            {
                (e["batch"], e["threads"])
                for e in report["summary"]
                for h, key, _, _ in _goal_pairs(e)
                if h.get(f"{key}_settled") is False
            }
        )
        if unsettled:
            where = ", ".join(f"batch {b} threads {t}" for b, t in unsettled)
            lines += [
                "",
                f"‡ not settled: the pair and the round-robin disagree by more than {SETTLED_WITHIN * 100:.0f} %, "
                f"or the pair's interval is wider than {SETTLED_WITHIN * 100:.0f} % of it ({where}): the figure "
                "depends on how it was measured, so read the two as a range, not as one figure. Batch 1 with "
                "several threads on a host with few CPUs has no steady state (docs/performance.md, Traps).",
            ]
        swaps = [(e, h, k) for e in report["summary"] for h, k in _sides(e) if h[k].get("round_robin_best")]
        if swaps:
            lines += [
                "",
                "Sides the pairs changed (the round-robin's fastest, and what the pairs found faster):",
                "",
            ]
            for e, h, k in swaps:
                rr = h[k]["round_robin_best"]
                lines.append(
                    f"- {e['model']} batch {e['batch']} threads {e['threads']} {k}: {_cell(rr)} → "
                    f"{h[k]['file']} ({h[k]['call']}), paired {_paired(rr['vs_chosen'])}"
                )
    return "\n".join(lines) + "\n"


def _cell(b: dict[str, Any] | None) -> str:
    if not b:
        return "–"
    how = b["call"] + (", AMX off" if b.get("amx") == "off" else "")
    return f"{b['file']} ({how}) {1e3 * b['latency_ms_p50']:.1f} µs"


def _ratio(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "–"


def _paired(p: dict[str, Any] | None, settled: bool | None = None) -> str:
    if not p:
        return "–"
    lo, hi = p["ci95"]
    two = " (2 processes)" if p.get("processes") == 2 else ""
    mark = " ‡" if settled is False else ""
    return f"{p['ratio']:.3f} [{lo:.3f}, {hi:.3f}] at {_us(p['p50_us'][0])} / {_us(p['p50_us'][1])} µs{two}{mark}"


def _us(x: float) -> str:
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def _int_list(text: str, all_value: int, flag: str, limit: int) -> list[int]:
    try:
        vals = [all_value if v.strip() == "all" else int(v) for v in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"{flag} {text}: expected comma-separated integers (or 'all')") from e
    if not vals or min(vals) < 1 or max(vals) > limit:
        raise ConfigError(f"{flag} {text}: values must be 1..{limit}")
    return sorted(set(vals))


def build_parser() -> argparse.ArgumentParser:
    p = parser("runtime.bench", __doc__)
    p.add_argument("models", nargs="*", type=path_arg, help="model files (default: every model in --bundle)")
    p.add_argument(
        "--bundle",
        type=path_arg,
        default=None,
        help="a device bundle folder: self-check it, then benchmark it",
    )
    add_common(
        p,
        "batch",
        "threads",
        batch={"default": "1,64", "type": str, "help": "comma-separated batch sizes (default 1,64)"},
        threads={
            "default": "1,all",
            "type": str,
            "help": "comma-separated intra-op thread counts; 'all' = every core",
        },
    )
    p.add_argument("--calls", default="run,iobinding", help="call paths: run (session.run) and/or iobinding")
    p.add_argument("--runs", type=int, default=2000, help="timed runs per configuration (default 2000)")
    p.add_argument(
        "--warmup", type=int, default=200, help="untimed runs per session before timing (default 200)"
    )
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20; at most --runs)")
    p.add_argument(
        "--amx",
        choices=("on", "off"),
        default="on",
        help="off: refuse Intel AMX to the runtimes (seccomp; see runtime/amx.py), so they take their "
        "AVX-512 VNNI int8 kernels; on (default): as the runtimes choose",
    )
    add_common(
        p,
        "json",
        json={"default": Path("build/bench/bench.json"), "help": "result JSON; a .md table goes beside it"},
    )
    p.add_argument("--startup", type=path_arg, default=None, help=argparse.SUPPRESS)  # child modes
    p.add_argument("--latency", default=None, help=argparse.SUPPRESS)
    p.add_argument("--paired", default=None, help=argparse.SUPPRESS)
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    return p


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement settings of parsed flags, checked: batches, threads, calls, runs, warmup, rounds."""
    ncpu = os.cpu_count() or 1
    batches = _int_list(args.batch, ncpu, "--batch", MAX_BATCH)
    threads = _int_list(args.threads, ncpu, "--threads", MAX_THREADS)
    calls = [c.strip() for c in args.calls.split(",")]  # an empty item is refused, as in --batch
    if not calls or set(calls) - set(CALLS) or len(set(calls)) < len(calls):
        raise ConfigError(f"--calls must be a comma-separated subset of {CALLS}, got {args.calls!r}")
    if args.runs < 1 or args.warmup < 0 or args.rounds < 1:
        raise ConfigError("--runs and --rounds must be >= 1, --warmup >= 0")
    too_many = runs_problem({"--runs": args.runs, "--warmup": args.warmup, "--rounds": args.rounds})
    if too_many:
        raise ConfigError(too_many)
    # a round times >= 1 call of each configuration: at most --runs rounds (paired: its own rounds)
    rounds = args.rounds if args.paired is not None else min(args.rounds, args.runs)
    return {
        "batches": batches,
        "threads": threads,
        "calls": calls,
        "runs": args.runs,
        "warmup": args.warmup,
        "rounds": rounds,
        "amx": args.amx,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run_args(args)


def _child_sides(text: str, flag: str, depth: int) -> Any:
    """An internal flag's JSON (the parent process writes it): [model, call] pairs nested `depth`
    lists deep; typed by hand, a malformed one is one error naming the flag (was a traceback)."""

    def ok(v: Any, d: int) -> bool:
        if d == 0:
            return isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
        return isinstance(v, list) and bool(v) and all(ok(x, d - 1) for x in v)

    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not ok(value, depth):
        raise ConfigError(f"{flag}: an internal flag of the benchmark's child processes, not for hand use")
    return value


def run_args(args: argparse.Namespace) -> int:
    st = settings(args)
    if st["amx"] == "off":  # before any runtime starts; the measuring children inherit it
        deny_amx()
    batches, threads, calls = st["batches"], st["threads"], st["calls"]
    if args.startup is not None:
        print(json.dumps(measure_startup(args.startup, batches[0], threads[0], calls[0])))
        return 0
    if args.latency is not None:
        configs = [(Path(m), c) for m, c in _child_sides(args.latency, "--latency", 1)]
        print(
            json.dumps(
                measure_latency(configs, batches[0], threads[0], st["runs"], st["warmup"], st["rounds"])
            )
        )
        return 0
    if args.serve is not None:
        m, c = _child_sides(args.serve, "--serve", 0)
        return serve_blocks((Path(m), c), batches[0], threads[0], args.warmup)
    if args.paired is not None:
        pairs = [tuple((Path(m), c) for m, c in pair) for pair in _child_sides(args.paired, "--paired", 2)]
        print(json.dumps(measure_paired(pairs, batches[0], threads[0], st["rounds"], st["warmup"])))
        return 0
    models = list(args.models)
    check = None
    if args.bundle is not None:
        from .bundle import self_check

        check = self_check(args.bundle, writes=(args.json, args.json.with_suffix(".md")))
        print(check["summary"])
        models = models or [args.bundle / m["file"] for m in check["models"]]
    if not models:
        raise ConfigError("no models given (pass model files or --bundle DIR)")
    report = run_bench(models, batches, threads, calls, st["runs"], st["warmup"], st["rounds"])
    report = {
        "schema": report["schema"],
        "command": command_line("bench", getattr(args, "argv", None)),
        **report,
    }
    report["settings"]["amx"] = st["amx"]
    if check is not None:
        report["bundle_check"] = check
    publish(report, args.json)
    return 0


def publish(report: dict[str, Any], path: Path) -> None:
    md = to_markdown(report)
    twin = write_json_and_markdown(path, report, md)
    print(md)
    print(f"wrote {path} and {twin}")


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main))
