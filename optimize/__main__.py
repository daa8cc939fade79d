"""CLI: python -m optimize --model lenet_pool|lenet_stride|all [--variant s2d|opt] [--passes a,b]."""

from __future__ import annotations

import sys
from pathlib import Path

from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.workflow import add_model_flags, data_source, selected


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "optimize",
        description="Rewrite exported FP32 ONNX models with pattern-based graph passes (onnxscript "
        "rewriter), check each against the export on all test images, and write "
        "<model>.fp32.<variant>.onnx + a record of what every pass did.",
    )
    add_model_flags(p)
    p.add_argument(
        "--onnx-dir", type=path_arg, default=Path("build/onnx"), help="exported models (default build/onnx)"
    )
    add_common(p, "out_dir", out_dir={"help": "default: same as --onnx-dir"})
    p.add_argument(
        "--variant",
        default="s2d",
        help="s2d (default: normalisation folded, space-to-depth "
        "first conv), s2d4 (a conv-pool-conv-pool stack as one 4x4 space-to-depth block where it "
        "matches, else as s2d) or fold (normalisation folded, no-op ReLU dropped); any name with --passes",
    )
    p.add_argument(
        "--passes", default=None, help="comma-separated pass names, in order (default: the variant's)"
    )
    p.add_argument("--data-dir", type=path_arg, default=None)
    p.add_argument("--force", action="store_true", help="rewrite even if the output is up to date")
    args = p.parse_args(argv)

    from lenet_edge.optimize.stage import OptimizeConfig, is_up_to_date, optimize_model, optimized_path

    passes = tuple(x.strip() for x in args.passes.split(",") if x.strip()) if args.passes else None
    config = OptimizeConfig(variant=args.variant, passes=passes)
    out_dir = args.out_dir or args.onnx_dir
    names = selected(args.model, args.workflow)
    for name in names:
        fp32 = args.onnx_dir / f"{name}.fp32.onnx"
        if not args.force and is_up_to_date(fp32, out_dir, name, config):
            print(f"{optimized_path(out_dir, name, config.variant)}: up to date (--force rewrites)")
            continue
        rec = optimize_model(fp32, out_dir, config, args.data_dir or data_source(name))
        did = ", ".join(f"{e['pass']} x{e['rewrites']}" for e in rec["passes"] if e["rewrites"]) or "nothing"
        skipped = "; ".join(f"{e['pass']}: {e['not_applied'][0]}" for e in rec["passes"] if not e["rewrites"])
        print(
            f"{name}: {rec['onnx']} ({sum(rec['nodes']['exported'].values())} -> "
            f"{sum(rec['nodes']['optimized'].values())} nodes) applied {did}"
            + (f"; not applied: {skipped}" if skipped else "")
            + f"; max |Δlogit| vs export {rec['check']['max_abs_logit_diff']:.1e}, "
            f"top-1 identical {rec['check']['top1_identical']}/{rec['check']['images']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
