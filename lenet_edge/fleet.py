"""`lenet-edge bench`: the latency benchmark here (`--backend local`) or on a fleet of devices
registered as Ray nodes (`--backend ray --on KIND`).

A board joins the cluster with a custom resource naming its kind, for example
`ray start --address=HEAD:6379 --resources='{"rpi4": 1}'` on a Raspberry Pi 4 with lenet-edge
and its device runtime installed. `lenet-edge bench --backend ray --on rpi4 --on rpi5 MODEL...`
then runs one benchmark job per kind, each on a node that has that resource (one at a time per
board: the resource is 1), with the model files sent through the object store and checked by
sha256 on the board. Each kind's result, measured and described (CPU, ISA, versions) by the board
itself, goes to <json stem>.<kind>.json and .md beside --json; `lenet-edge ingest` takes it from
there like any device result. Without --on, the job runs on any node of the cluster.

The local backend is runtime/bench.py unchanged (what `python -m runtime.bench` runs on a board).
"""

from __future__ import annotations

import platform
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from lenet_edge.jobs import Job, add_backend_flags, describe, run_jobs
from lenet_edge.runtime import bench
from lenet_edge.runtime.cli import add_common
from lenet_edge.runtime.errors import ConfigError
from lenet_edge.runtime.files import missing_file

KIND = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,40}$")


def build_parser() -> Any:
    p = bench.build_parser()
    p.description = (p.description or "") + "\n\n" + __doc__.split("\n\n")[1]
    add_backend_flags(
        p,
        None,
        "local: measure on this machine (default); ray: one job per --on device kind on the Ray "
        "cluster of RAY_ADDRESS (make setup-cluster)",
    )
    p.add_argument(
        "--on",
        action="append",
        default=[],
        metavar="KIND",
        help="a device kind: a custom Ray resource its nodes have (repeatable; --backend ray)",
    )
    add_common(
        p,
        "out_dir",
        out_dir={
            "help": "with --backend ray: keep each kind's result here and skip kinds already measured "
            "with the same models, code and settings (default: measure every kind again)"
        },
    )
    return p


def bench_job(payload: dict[str, Any], inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    """On the device's node: the benchmark of the job's model files, measured there."""
    models = [inputs[f"model{i}"] for i in range(payload["models"])]
    st = payload["settings"]
    report = bench.run_bench(
        models,
        st["batches"],
        st["threads"],
        st["calls"],
        st["runs"],
        st["warmup"],
        st["rounds"],
        progress=False,
    )
    report["fleet"] = {"kind": payload["kind"], "hostname": platform.node()}
    return report


def fleet_jobs(models: list[Path], kinds: list[str], st: dict[str, Any]) -> list[Job]:
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError("two model files have the same name: the benchmark labels rows by file name")
    for m in models:
        problem = missing_file(m, "model file")
        if problem:
            raise ConfigError(f"{m}: {problem}")
    inputs = {f"model{i}": str(m) for i, m in enumerate(models)}
    return [
        Job(
            "bench",
            {"kind": kind, "settings": st, "models": names},
            "lenet_edge.fleet:bench_job",
            {"kind": kind, "settings": st, "models": len(models)},
            inputs,
            resources={kind: 1} if kind != "any" else {},
            label=f"bench on {kind}",
        )
        for kind in kinds
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.backend == "local":
        if args.on:
            raise ConfigError("--on names device kinds of a Ray cluster: use it with --backend ray")
        return bench.run_args(args)
    if args.bundle is not None or args.startup is not None or args.latency is not None:
        raise ConfigError("--backend ray benchmarks model files: pass them, not --bundle")
    if not args.models:
        raise ConfigError("no models given (pass model files)")
    if args.amx == "off":  # a Ray worker lives on: refusing AMX there would outlast the job
        raise ConfigError("--amx off measures in this process tree: use it with --backend local")
    kinds = args.on or ["any"]
    bad = [k for k in kinds if not KIND.match(k)]
    if bad:
        raise ConfigError(f"--on {bad[0]}: a device kind is a Ray resource name (letters, digits, - and _)")
    jobs = fleet_jobs(list(args.models), kinds, bench.settings(args))
    with tempfile.TemporaryDirectory(prefix="lenet-edge-fleet-") as tmp:
        reports, stats = run_jobs(jobs, args.out_dir or Path(tmp), "ray", len(jobs))
    for kind, report in zip(kinds, reports, strict=True):
        bench.publish(report, args.json.with_name(f"{args.json.stem}.{kind}.json"))
    print(f"fleet benchmark: {len(kinds)} device kind(s), {describe(stats)}")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
