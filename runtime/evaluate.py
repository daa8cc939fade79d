"""Accuracy (top-1/top-2) of an ONNX model on the MNIST test set through onnxruntime."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.contract import to_pixels
from runtime.mnist import load_split
from runtime.runner import OnnxRunner


@dataclass(frozen=True)
class Accuracy:
    top1: float  # fraction in [0, 1]
    top2: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 and top-2 accuracy; ties broken by argmax order (lowest index first)."""
    top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    hit1 = top2[:, 0] == labels
    hit2 = hit1 | (top2[:, 1] == labels)
    return Accuracy(top1=float(hit1.mean()), top2=float(hit2.mean()), n=int(labels.size))


def evaluate_onnx(
    model: str | Path | bytes, data_dir: str | Path | None = None, batch_size: int = 1000
) -> tuple[Accuracy, np.ndarray]:
    """Top-1/top-2 on all 10,000 test images, fed as raw pixels; also returns the logits."""
    test = load_split("test", data_dir)
    logits = OnnxRunner(model).predict_batched(to_pixels(test.images), batch_size)
    return topk_accuracy(logits, test.labels), logits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runtime.evaluate",
        description="Top-1/top-2 accuracy of ONNX models on the MNIST test set (raw-pixel input).",
    )
    p.add_argument("models", nargs="+", type=Path, help="ONNX files")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="MNIST IDX folder (default: cache or $MNIST_DIR)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    rows = {}
    for m in args.models:
        acc, _ = evaluate_onnx(m, args.data_dir)
        rows[str(m)] = acc.as_dict()
        if not args.json:
            print(f"{m}: top-1 {100 * acc.top1:.2f} %  top-2 {100 * acc.top2:.2f} %  (n={acc.n})")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
