"""Per-operator time of a model from onnxruntime's own profiler (kernel µs per inference)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .cli import add_common, parser, path_arg
from .contract import INPUT_NAME, MAX_BATCH, MAX_RUNS, MAX_THREADS
from .errors import ConfigError
from .files import owned_temp_dir

# onnxruntime's profiler keeps at most this many events per session (`global_max_num_events_`,
# profiler.cc) and drops the rest with one logged error; averaged over the runs asked, the
# per-op times would then come out too low. A long profile runs in several sessions instead.
EVENT_CAP = 1_000_000
FIRST_CHUNK = 200  # runs of the first session, which measures the events one run records


def _steady_events(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model_run and node kernel events of a session's profile without its first run (the
    warm-up: allocations and first-touch, ~2x a steady run)."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    if not runs:
        return [], []
    first_end = runs[0]["ts"] + runs[0]["dur"]
    kernels = [
        e
        for e in events
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e["ts"] >= first_end
    ]
    return runs[1:], kernels


def profile_ops(
    model: Path,
    batch: int = 1,
    runs: int = 2000,
    threads: int = 1,
    chunk: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Kernel µs per inference by op type, averaged over `runs` steady runs (each session's first
    run is a warm-up, left out). `chunk`: runs per session (default: as many as the profiler's
    event limit holds, measured on the first session)."""
    import onnxruntime as ort

    from .bench import native_input
    from .progress import Progress
    from .runner import OnnxRunner, SessionConfig

    # a readable model that honours the contract, or one clear ContractError; and the runner's
    # warning if the file was tuned for fewer threads than asked
    runner = OnnxRunner(model, SessionConfig(threads=threads))
    if not runner.accepts_batch(batch):
        raise ConfigError(
            f"{model}: the model has a static batch of {runner.static_batch}; --batch {batch} cannot run it"
        )
    x = native_input(runner, batch)  # the model's own input dtype (float32 or uint8 pixels)
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    model_us, done, sessions = 0.0, 0, 0
    size = chunk or min(runs, FIRST_CHUNK)
    with (
        owned_temp_dir("prof") as tmp,
        Progress(runs, f"profile {model.name}", "runs", enabled=progress, every=None, leave=False) as bar,
    ):
        while done < runs:
            n = min(size, runs - done)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / f"prof{sessions}")
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            for _ in range(n + 1):
                sess.run(None, {INPUT_NAME: x})
            events = json.loads(Path(sess.end_profiling()).read_text())
            kept, kernels = _steady_events(events)
            if len(kept) != n:  # the cap reached: a run's events are missing
                raise ConfigError(
                    f"{model}: onnxruntime's profiler kept {len(kept)} of {n} runs of one session "
                    f"({len(events):,} events; its limit is {EVENT_CAP:,}); use fewer --runs"
                )
            model_us += sum(e["dur"] for e in kept)
            for e in kernels:
                op = e.get("args", {}).get("op_name", "?")
                per_op[op] += e["dur"]
                nodes[op] += 1
            if chunk is None and sessions == 0:  # as many runs per session as the limit holds, with room
                size = max(1, int(0.8 * EVENT_CAP * (n + 1) / max(len(events), 1)))
            done, sessions = done + n, sessions + 1
            bar.update(n)
    total_kernel = sum(per_op.values())
    return {
        "model": model.name,
        "batch": batch,
        "threads": threads,
        "runs": runs,
        "sessions": sessions,
        "model_run_us": model_us / runs,
        "kernel_us": total_kernel / runs,
        "ops": {
            op: {"us": per_op[op] / runs, "share": per_op[op] / total_kernel, "nodes": nodes[op] // runs}
            for op in sorted(per_op, key=per_op.get, reverse=True)
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("runtime.profile", __doc__)
    p.add_argument("models", nargs="+", type=path_arg)
    add_common(p, "batch", "threads")
    p.add_argument(
        "--runs",
        type=int,
        default=2000,
        help="runs to average (default 2000); each profiler session's first run is a warm-up, left out",
    )
    args = p.parse_args(argv)
    for flag, value, most in (
        ("--batch", args.batch, MAX_BATCH),
        ("--threads", args.threads, MAX_THREADS),
        ("--runs", args.runs, MAX_RUNS),
    ):
        if value > most:
            raise ConfigError(f"{flag} {value}: must be <= {most}")
    if min(args.batch, args.threads, args.runs) < 1:
        raise ConfigError("--batch, --threads and --runs must be >= 1")
    for m in args.models:
        r = profile_ops(m, args.batch, args.runs, args.threads)
        ops = ", ".join(f"{op} {v['us']:.1f} ({v['nodes']})" for op, v in r["ops"].items())
        print(f"{m.name}: session run {r['model_run_us']:.1f} µs, kernels {r['kernel_us']:.1f} µs: {ops}")
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main))
