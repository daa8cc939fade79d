"""Host side: adds a device's benchmark JSON to results/devices/ and rebuilds results/devices/README.md."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from runtime.bench import SCHEMA
from runtime.errors import LenetEdgeError
from runtime.files import read_json, write_bytes_atomic, write_json_atomic

DEVICES = Path(__file__).resolve().parent.parent / "results" / "devices"
REQUIRED = ("model", "format", "runtime", "call", "batch", "threads", "latency_ms_p50", "ratio_p50_vs_fp32")


def validate(report: Any, source: Path) -> None:
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise LenetEdgeError(f"{source}: not a lenet-edge benchmark result (schema must be {SCHEMA!r})")
    for key in ("environment", "results", "created_unix"):
        if key not in report:
            raise LenetEdgeError(f"{source}: missing {key!r}")
    for i, r in enumerate(report["results"]):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise LenetEdgeError(f"{source}: result {i} lacks {', '.join(missing)}")


def ingest(result: Path, devices: Path = DEVICES) -> Path:
    report = read_json(result)
    validate(report, result)
    env = report["environment"]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{env['machine']}-{env['cpu']['model']}".lower()).strip("-")
    dest = devices / f"{slug}-{report['created_unix']}.json"
    write_json_atomic(dest, report)
    write_bytes_atomic(devices / "README.md", render(devices).encode())
    return dest


def render(devices: Path) -> str:
    lines = [
        "# Device benchmark results",
        "",
        "Added with `make ingest RESULT=...`; batch 1, one thread, p50.",
        "",
        "| device | ISA | model | format | runtime | call | p50 µs | × FP32 | bundle check |",
        "|---|---|---|---|---|---|---:|---:|---|",
    ]
    for f in sorted(devices.glob("*.json")):
        rep: dict[str, Any] = read_json(f)
        env = rep["environment"]
        check = rep.get("bundle_check", {}).get("summary", "–").split(": ", 1)[-1]
        for r in rep["results"]:
            if r["batch"] == 1 and r["threads"] == 1:
                ratio = f"{r['ratio_p50_vs_fp32']:.2f}" if r["ratio_p50_vs_fp32"] is not None else "–"
                lines.append(
                    f"| {env['machine']} {env['cpu']['model']} | {' '.join(env['cpu']['isa_flags'])} "
                    f"| {r['model']} | {r['format']} | {r['runtime']} | {r['call']} "
                    f"| {1e3 * r['latency_ms_p50']:.1f} | {ratio} | {check} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.ingest", description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path, help="result JSON written by `python -m runtime.bench` on a device")
    args = p.parse_args(argv)
    dest = ingest(args.result)
    print(f"added {dest}; table in {dest.parent / 'README.md'}")
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
