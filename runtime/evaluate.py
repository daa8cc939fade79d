"""Accuracy (top-1/top-2) of an ONNX model on the MNIST test set through onnxruntime."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cli import add_common, parser, path_arg, text_arg
from .contract import to_pixels
from .errors import ContractError
from .files import write_json_atomic
from .mnist import load_split
from .numeric import max_abs_diff
from .runner import load_runner


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
    """Top-1/top-2 on every test image, fed as raw pixels; also returns the logits."""
    test = load_split("test", data_dir)
    runner = load_runner(model)
    logits = runner.predict_batched(to_pixels(test.images), batch_size)
    if test.labels.size and int(test.labels.max()) >= logits.shape[1]:
        raise ContractError(
            f"{runner.name}: the model gives {logits.shape[1]} scores per image, but the test data has "
            f"label {int(test.labels.max())}: not this model's data set"
        )
    return topk_accuracy(logits, test.labels), logits


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "runtime.evaluate",
        description="Top-1/top-2 accuracy of ONNX or TFLite models on the MNIST test set (raw-pixel input).",
    )
    p.add_argument("models", nargs="+", type=path_arg, help="model files (.onnx or .tflite)")
    p.add_argument(
        "--against",
        type=path_arg,
        default=None,
        help="also report prediction agreement and max |Δ| of each model against this one",
    )
    p.add_argument(
        "--data-dir", type=path_arg, default=None, help="MNIST IDX folder (default: cache or $MNIST_DIR)"
    )
    add_common(
        p,
        "json",
        json={
            "help": "also write the results as JSON to PATH ('-': print JSON instead of the table)",
            "type": text_arg,
        },
    )
    args = p.parse_args(argv)
    ref = evaluate_onnx(args.against, args.data_dir) if args.against else None
    rows = {}
    for m in args.models:
        acc, logits = evaluate_onnx(m, args.data_dir)
        row: dict[str, object] = acc.as_dict()
        text = f"{m}: top-1 {100 * acc.top1:.2f} %  top-2 {100 * acc.top2:.2f} %  (n={acc.n})"
        if ref is not None:
            row["against"] = str(args.against)
            row["agreement"] = float((logits.argmax(1) == ref[1].argmax(1)).mean())
            row["max_abs_diff"] = max_abs_diff(logits, ref[1])
            row["correct"] = (logits.argmax(1) == load_split("test", args.data_dir).labels).tolist()
            text += f"  agreement with {args.against.name} {100 * row['agreement']:.2f} %  max |Δ| {row['max_abs_diff']:.2e}"
        rows[str(m)] = row
        if args.json != "-":
            print(text)
    if args.json == "-":
        print(json.dumps(rows))
    elif args.json:
        write_json_atomic(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main))
