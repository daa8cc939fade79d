"""Per-operator time of a model from onnxruntime's own profiler (kernel µs per inference)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .cli import add_common, parser, path_arg
from .contract import INPUT_NAME, MAX_BATCH, MAX_THREADS
from .errors import ConfigError
from .files import owned_temp_dir


def profile_ops(model: Path, batch: int = 1, runs: int = 2000, threads: int = 1) -> dict[str, Any]:
    import onnxruntime as ort

    from .bench import native_input
    from .runner import OnnxRunner, SessionConfig

    # a readable model that honours the contract, or one clear ContractError; and the runner's
    # warning if the file was tuned for fewer threads than asked
    runner = OnnxRunner(model, SessionConfig(threads=threads))
    if not runner.accepts_batch(batch):
        raise ConfigError(
            f"{model}: the model has a static batch of {runner.static_batch}; --batch {batch} cannot run it"
        )
    with owned_temp_dir("prof") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        x = native_input(runner, batch)  # the model's own input dtype (float32 or uint8 pixels)
        for _ in range(runs):
            sess.run(None, {INPUT_NAME: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    model_us = 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            per_op[op] += e["dur"]
            nodes[op] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            model_us += e["dur"]
    total_kernel = sum(per_op.values())
    return {
        "model": model.name,
        "batch": batch,
        "threads": threads,
        "runs": runs,
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
    p.add_argument("--runs", type=int, default=2000)
    args = p.parse_args(argv)
    for flag, value, most in (("--batch", args.batch, MAX_BATCH), ("--threads", args.threads, MAX_THREADS)):
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
