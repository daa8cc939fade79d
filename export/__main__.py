"""CLI: python -m export --model lenet_pool|lenet_stride|all --checkpoint-dir DIR --out-dir DIR."""

from __future__ import annotations

import sys
from pathlib import Path

from lenet_edge.runtime.cli import add_common, finite_float, parser, path_arg, run
from lenet_edge.workflow import add_model_flags, selected


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "export",
        description="Export trained checkpoints to ONNX (raw-pixel input, opset 13+) and check "
        "them against Paddle on all 10,000 test images.",
    )
    add_model_flags(p)
    p.add_argument(
        "--checkpoint-dir",
        type=path_arg,
        default=None,
        help="folder with <model>.npz + <model>.train.json (default: the workflow's [model] checkpoint, "
        "the committed reference)",
    )
    add_common(p, "out_dir", out_dir={"default": Path("build/onnx"), "help": "default build/onnx"})
    p.add_argument("--opset", type=int, default=13, help="ONNX opset, 13..21 (default 13)")
    p.add_argument("--atol", type=finite_float, default=1e-4, help="max |Δlogit| vs Paddle (default 1e-4)")
    p.add_argument(
        "--data-dir", type=path_arg, default=None, help="MNIST folder (default: cache or $MNIST_DIR)"
    )
    p.add_argument("--force", action="store_true", help="re-export even if up to date")
    args = p.parse_args(argv)

    from lenet_edge.export.onnx_export import ExportConfig, export_model
    from lenet_edge.workflow import data_source, get

    config = ExportConfig(opset=args.opset, atol=args.atol)
    names = selected(args.model, args.workflow)
    for name in names:
        wf, data = get(name), args.data_dir or data_source(name)
        if wf.source != "paddle":  # a model file: normalisation in front, parity vs the source
            from lenet_edge.export.onnx_source import export_onnx_source

            rec = export_onnx_source(wf, args.out_dir, config, data, args.force)
        else:
            ckpt = args.checkpoint_dir / f"{name}.npz" if args.checkpoint_dir else wf.checkpoint
            rec = export_model(ckpt, args.out_dir, config, data, args.force)
        par = rec["parity"]
        print(
            f"{name}: {args.out_dir / rec['onnx']}  {rec['onnx_bytes']:,} bytes  "
            f"parity max |Δlogit| {par['max_abs_logit_diff']:.2e} (≤ {par['atol']:g}), "
            f"top-1 identical {par['top1_identical']}/{par['images']}  "
            f"test top-1 {100 * rec['test_top1']:.2f} %  top-2 {100 * rec['test_top2']:.2f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
