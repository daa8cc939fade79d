"""The search's choice as an artifact: <model>.int8.search[.<cpu>].onnx + its record, beside the others.

`make search` measures which INT8 candidate is fastest on this machine (quantize.search for ONNX
Runtime, quantize.litert_search for LiteRT: <model>.int8.search.tflite) and publishes it here, so
the benchmark times it next to the default recipe's files and `select` can deploy it. An ONNX
choice's record is the candidate's quantize record (checks, accuracy, size) plus a `search` entry:
the choice, its timing and CPU, and the sha256 of the FP32 file it was quantized from; a .tflite
choice's record (<file>.quantize.json) holds its checks and a `search` entry naming the
dynamic-range file it was edited from. A published file whose source has changed since
(retrained, re-exported, re-converted) is stale: the benchmark leaves it out and `select` never
picks it.

    python -m lenet_edge.quantize.published [--onnx-dir build/onnx] [--suffix .onnx] [--target host]

prints the fresh published files, one per line, and one note on stderr per stale one. `make
bench` adds `--target host`: this machine's choices only, since an Arm core's (chosen by its
instruction counts; on the cortex-a72 every layer in FP32 from int8 weights) timed on x86 would
stand as "best INT8" for a choice the host's own search did not make. The bundle takes every .onnx
choice (tflite-runtime 2.14 cannot load dynamic-range files; the Arm ones are for the boards).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import path_arg
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import quantize_record_path, read_json, sha256_bytes, sha256_file

PATTERNS = {".onnx": "*.int8.search*.onnx", ".tflite": "*.int8.search*.tflite"}


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
    tflite = path.suffix == ".tflite"
    if rec.get("sha256" if tflite else "onnx_sha256") != sha256_file(path):
        return f"{path.name}: does not match its record"
    key = "source" if tflite else "fp32_source"
    name = str(search.get(key, ""))
    src = path.parent / name
    if Path(name).name != name or name in ("", ".", "..") or not src.is_file():  # stays in the folder
        return f"{path.name}: its source {name!r} is missing"
    if search.get(f"{key}_sha256") != sha256_file(src):
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
        "amx": model_result.get("amx", "on"),  # as publish_tflite: bench and select time it so
    }
    write_bytes_atomic(out, data)
    write_json_atomic(quantize_record_path(out), rec)
    return out


def publish_tflite(onnx_dir: Path, name: str, work: Path, model_result: dict[str, Any], cpu: str) -> Path:
    """Copy the LiteRT search's choice (checked there) to <model>.int8.search.tflite and write its
    record: checks, the choice and its evidence, the dynamic-range file it was edited from. Model
    first, record last."""
    from lenet_edge.runtime.files import write_bytes_atomic, write_json_atomic

    choice = model_result["choice"]
    row = next(r for r in model_result["candidates"] if r["file"] == choice["file"])
    out = Path(onnx_dir) / f"{name}.int8.search.tflite"
    src = Path(onnx_dir) / model_result["source"]["file"]
    data = (work / choice["file"]).read_bytes()
    checks = (
        "test_top1",
        "accuracy_drop_pp",
        "agreement_with_fp32",
        "mcnemar",
        "size_ratio_vs_fp32",
        "bytes",
    )
    rec = {
        "model": name,
        "file": out.name,
        "sha256": sha256_bytes(data),
        "runtime": "ai-edge-litert",
        "checks": {k: row[k] for k in checks} | {"against": model_result["fp32"]["file"]},
        "int8_layers": choice["int8_layers"],
        "search": {
            "choice": choice["label"],
            "target": "host",
            "p50_us": choice["p50_us"],
            "fp32_p50_us": model_result["fp32_p50_us"],
            "method": model_result["method"],
            "cpu": cpu,
            "source": src.name,
            "source_sha256": sha256_file(src),
            # a process-wide runtime setting (runtime/amx.py) the choice was measured with: bench and
            # select time the file with it, a deployment must repeat it
            "amx": model_result.get("amx", "on"),
        },
    }
    if rec["search"]["source_sha256"] != model_result["source"]["sha256"]:
        raise LenetEdgeError(f"{src}: changed while the search ran; run `make search` again")
    write_bytes_atomic(out, data)
    write_json_atomic(quantize_record_path(out), rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lenet_edge.quantize.published",
        description="List the fresh published search choices (<model>.int8.search.onnx) in a folder.",
    )
    p.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"), help="default build/onnx")
    p.add_argument(
        "--suffix",
        choices=sorted(PATTERNS),
        default=None,
        help="only .onnx or .tflite choices (default: both)",
    )
    p.add_argument(
        "--target",
        default=None,
        help="only the choices made for this target: host (this machine's, by timing) or an Arm core "
        "(cortex-a72, cortex-a76: by instruction counts); default every target",
    )
    args = p.parse_args(argv)
    pats = [PATTERNS[args.suffix]] if args.suffix else list(PATTERNS.values())
    for path in sorted(f for pat in pats for f in args.onnx_dir.glob(pat)):
        why = stale_reason(path)
        if why:
            print(f"note: left out: {why}", file=sys.stderr)
        elif args.target is None or target_of(path) == args.target:
            print(path)
    return 0


def target_of(path: Path) -> str:
    """The target a fresh published choice was made for (its record's `search.target`; records
    from before targets were recorded, and every LiteRT choice, are the host's)."""
    target = read_json(quantize_record_path(path))["search"].get("target", "host")
    return str(target)


if __name__ == "__main__":
    sys.exit(main())
