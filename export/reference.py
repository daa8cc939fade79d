"""Committed reference results: adopts trained checkpoints, checks exports, renders the README table.

Reads build/train/*.train.json and build/onnx/*.export.json; writes results/checkpoints/* and
results/reference.json (`write`), compares exports with it (`check`), fills README.md (`readme`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from runtime.cli import run
from runtime.errors import LenetEdgeError
from runtime.files import read_json, sha256_file, write_bytes_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference.json"
REF_CKPT_DIR = ROOT / "results" / "checkpoints"
README = ROOT / "README.md"
MODELS = ("lenet_pool", "lenet_stride")
BLOG = {
    "lenet_pool": {"params": 61_706, "test_top1": 0.9810},
    "lenet_stride": {"params": 66_346, "test_top1": 0.9837},
}
TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"


def write_reference(train_dir: Path, onnx_dir: Path) -> dict[str, Any]:
    """Copy the trained checkpoints into results/ and record what their exports measured."""
    models: dict[str, Any] = {}
    for name in MODELS:
        ckpt, rec_file = train_dir / f"{name}.npz", train_dir / f"{name}.train.json"
        train_rec = read_json(rec_file)
        exp = read_json(onnx_dir / f"{name}.fp32.export.json")
        if (
            exp["checkpoint_sha256"] != sha256_file(ckpt)
            or train_rec["checkpoint_sha256"] != exp["checkpoint_sha256"]
        ):
            raise LenetEdgeError(
                f"{onnx_dir}/{name}.fp32.onnx was not exported from {ckpt}; run "
                f"`make export CKPT_DIR={train_dir}` first"
            )
        REF_CKPT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, REF_CKPT_DIR / ckpt.name)
        write_bytes_atomic(REF_CKPT_DIR / rec_file.name, rec_file.read_bytes())
        models[name] = {
            "params": exp["params"],
            "checkpoint": f"results/checkpoints/{ckpt.name}",
            "checkpoint_sha256": exp["checkpoint_sha256"],
            "training": {
                "config": train_rec["config"],
                "seconds_per_epoch": round(train_rec["seconds_per_epoch"], 2),
                "paddle_test_top1": train_rec["test_top1"],
                "paddle_test_top2": train_rec["test_top2"],
            },
            "fp32": {
                "test_top1": exp["test_top1"],
                "test_top2": exp["test_top2"],
                "onnx_bytes": exp["onnx_bytes"],
                "parity_max_abs_logit_diff": exp["parity"]["max_abs_logit_diff"],
            },
        }
    ref = {
        "about": "Accuracy regression baseline: the committed checkpoints, exported, on the 10,000 "
        "MNIST test images. Produced by `make train && make export CKPT_DIR=build/train && make reference`.",
        "data_sha256": exp["data_sha256"],
        "versions": exp["versions"],
        "blog": BLOG,
        "models": models,
    }
    write_json_atomic(REFERENCE, ref)
    return ref


def check_exports(onnx_dir: Path, strict: bool) -> int:
    """Compare exported models with the reference; exact equality expected from the same weights."""
    ref = read_json(REFERENCE)["models"]
    worst = 0
    for name in MODELS:
        exp = read_json(onnx_dir / f"{name}.fp32.export.json")
        r = ref[name]
        same_weights = exp["checkpoint_sha256"] == r["checkpoint_sha256"]
        d1 = 100 * (exp["test_top1"] - r["fp32"]["test_top1"])
        d2 = 100 * (exp["test_top2"] - r["fp32"]["test_top2"])
        status = (
            "matches the reference"
            if d1 == 0 and d2 == 0
            else f"differs: Δtop-1 {d1:+.2f} pp, Δtop-2 {d2:+.2f} pp"
        )
        print(
            f"{name}: top-1 {100 * exp['test_top1']:.2f} %  top-2 {100 * exp['test_top2']:.2f} %  "
            f"{status}; weights {'bitwise identical to' if same_weights else 'differ from'} "
            f"results/checkpoints/{name}.npz"
        )
        if d1 != 0 or d2 != 0:
            worst = 1
    if worst and strict:
        raise LenetEdgeError(f"{onnx_dir}: exported accuracy differs from {REFERENCE.relative_to(ROOT)}")
    return 0


def render_table(ref: dict[str, Any]) -> str:
    rows = [
        "| model | params | FP32 top-1 | FP32 top-2 | blog top-1 | ONNX bytes | parity max \\|Δlogit\\| | s/epoch (train) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in MODELS:
        m = ref["models"][name]
        rows.append(
            f"| `{name}` | {m['params']:,} | {100 * m['fp32']['test_top1']:.2f} % | {100 * m['fp32']['test_top2']:.2f} % "
            f"| {100 * ref['blog'][name]['test_top1']:.2f} % | {m['fp32']['onnx_bytes']:,} "
            f"| {m['fp32']['parity_max_abs_logit_diff']:.1e} | {m['training']['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(rows)


def update_readme(ref: dict[str, Any], readme: Path = README) -> bool:
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise LenetEdgeError(f"{readme}: results table markers {TABLE_START} / {TABLE_END} missing")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_START}\n{render_table(ref)}\n{TABLE_END}{tail}"
    if new != text:
        write_bytes_atomic(readme, new.encode())
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.reference", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="adopt trained checkpoints + exports as results/reference.json")
    w.add_argument("--train-dir", type=Path, default=Path("build/train"))
    w.add_argument("--onnx-dir", type=Path, default=Path("build/onnx"))
    c = sub.add_parser("check", help="compare exported models with results/reference.json")
    c.add_argument("--onnx-dir", type=Path, default=Path("build/onnx"))
    c.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="exit non-zero if the accuracy differs (default: report only)",
    )
    sub.add_parser("readme", help="refresh the README results table from results/reference.json")
    args = p.parse_args(argv)
    if args.cmd == "write":
        ref = write_reference(args.train_dir, args.onnx_dir)
        update_readme(ref)
        print(f"wrote {REFERENCE.relative_to(ROOT)} and the README table")
    elif args.cmd == "check":
        return check_exports(args.onnx_dir, args.strict)
    else:
        changed = update_readme(read_json(REFERENCE))
        print("README table " + ("updated" if changed else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
