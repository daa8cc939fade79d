"""The search's choice as an artifact: <model>.int8.search[.<cpu>].onnx + its record, beside the others.

`make search` measures which INT8 candidate is fastest on this machine (quantize.search) and
publishes it here, so the benchmark times it next to the default recipe's files and `select` can
deploy it. Its record is the candidate's quantize record (checks, accuracy, size) plus a `search`
entry: the choice, its timing and CPU, and the sha256 of the FP32 file it was quantized from. A
published file whose FP32 source has changed since (retrained, re-exported) is stale: the
benchmark leaves it out and `select` never picks it.

    python -m lenet_edge.quantize.published [--onnx-dir build/onnx]

prints the fresh published files, one per line (what `make bench` adds to its list), and one note
on stderr per stale one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lenet_edge.runtime.files import quantize_record_path, read_json, sha256_file

PATTERN = "*.int8.search*.onnx"


def published_path(onnx_dir: Path, model: str, target: str = "host") -> Path:
    """<model>.int8.search.onnx (this machine's choice) or <model>.int8.search.<cpu>.onnx (an Arm
    core's, by instruction counts)."""
    return Path(onnx_dir) / (
        f"{model}.int8.search.onnx" if target == "host" else f"{model}.int8.search.{target}.onnx"
    )


def stale_reason(path: Path) -> str:
    """'' if `path` is a published search choice that still matches its FP32 source, else why not."""
    rec_path = quantize_record_path(path)
    if not path.is_file() or not rec_path.is_file():
        return f"{path.name}: missing, or its record is"
    try:
        rec = read_json(rec_path)
    except Exception as e:  # a corrupt record is a stale artifact, not a crash
        return f"{rec_path.name}: unreadable ({e})"
    search = rec.get("search") if isinstance(rec, dict) else None
    if not isinstance(search, dict):
        return f"{rec_path.name}: not a published search choice"
    if rec.get("onnx_sha256") != sha256_file(path):
        return f"{path.name}: does not match its record"
    name = str(search.get("fp32_source", ""))
    src = path.parent / name
    if Path(name).name != name or name in ("", ".", "..") or not src.is_file():  # stays in the folder
        return f"{path.name}: its FP32 source {name!r} is missing"
    if search.get("fp32_source_sha256") != sha256_file(src):
        return f"{path.name}: {src.name} changed since the search (run `make search`)"
    return ""


def publish(
    onnx_dir: Path,
    name: str,
    work: Path,
    model_result: dict[str, Any],
    fp32_source: Path,
    cpu: str,
    target: str = "host",
) -> Path:
    """Copy the chosen candidate (checked by the search) and its record to <model>.int8.search.onnx;
    the record gains the `search` entry. Model first, record last (a model without a matching record
    is stale to every reader)."""
    from lenet_edge.runtime.files import write_bytes_atomic, write_json_atomic

    choice = model_result["choice"]
    src = work / choice["file"]
    rec = read_json(quantize_record_path(src))
    out = published_path(onnx_dir, name, target)
    data = src.read_bytes()
    rec["onnx"] = out.name
    rec["search"] = {
        "choice": choice["label"],
        "target": target,
        **{k: choice[k] for k in ("p50_us", "instructions") if k in choice},
        **{k: model_result[k] for k in ("fp32_p50_us", "fp32_instructions") if k in model_result},
        "method": model_result.get("method"),
        "cpu": cpu,
        "fp32_source": fp32_source.name,
        "fp32_source_sha256": sha256_file(fp32_source),
    }
    write_bytes_atomic(out, data)
    write_json_atomic(quantize_record_path(out), rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lenet_edge.quantize.published",
        description="List the fresh published search choices (<model>.int8.search.onnx) in a folder.",
    )
    p.add_argument("--onnx-dir", type=Path, default=Path("build/onnx"), help="default build/onnx")
    args = p.parse_args(argv)
    for path in sorted(args.onnx_dir.glob(PATTERN)):
        why = stale_reason(path)
        if why:
            print(f"note: left out: {why}", file=sys.stderr)
        else:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
