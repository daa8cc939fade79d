"""CLI: python -m quantize --model lenet_pool|lenet_stride|all [recipe flags]."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

from lenet_edge.runtime.cli import add_common, finite_float, name_part, parser, path_arg, run
from lenet_edge.runtime.errors import ConfigError
from lenet_edge.workflow import add_model_flags, selected

RECIPE_HELP = {
    "mode": "static (calibrated) or dynamic",
    "quant_format": "qdq or qoperator",
    "activation_type": "u8 or s8",
    "weight_type": "s8 or u8",
    "per_channel": "per-channel weight scales",
    "reduce_range": "7-bit weights (no u8*s8 saturation on AVX2)",
    "calibration": "minmax, entropy or percentile",
    "calibration_bins": "histogram bins for entropy/percentile",
    "percentile": "percentile for percentile calibration",
    "symmetric_activation": "symmetric activation ranges",
    "symmetric_weight": "symmetric weight ranges",
    "fp32_layers": "comma-separated weighted layers kept in FP32, by type and order (e.g. Conv:0,Gemm:2)",
    "weight_only": "the --fp32-layers keep int8 weights (FP32 compute, INT8 size; dequantized once at load)",
}


# Tried in order when the default recipe fails its checks (no recipe flags given): per-tensor
# weight scales keep reduce-range (no AVX2 saturation, x86 == ARM) and measured within the
# tolerances where per-channel missed them (Xeon-trained lenet_pool, space-to-depth graph:
# drop 0.12 pp, McNemar p 0.0009 per-channel; +0.04 pp, p 0.19 per-tensor).
FALLBACKS = (lambda r: replace(r, per_channel=False),)


def main(argv: list[str] | None = None) -> int:
    from lenet_edge.quantize.recipe import QuantRecipe

    p = parser(
        "quantize",
        description="Quantize exported FP32 ONNX models to INT8 with ONNX Runtime (calibrated on the "
        "committed subset), check them against FP32 and write <model>.int8.<format>.onnx + a record. "
        "Recipe flags override the per-model default recipe.",
    )
    add_model_flags(p)
    p.add_argument(
        "--onnx-dir", type=path_arg, default=Path("build/onnx"), help="FP32 models (default build/onnx)"
    )
    add_common(p, "out_dir", out_dir={"help": "default: same as --onnx-dir"})
    p.add_argument(
        "--stock",
        action="store_true",
        help="instead, write <model>.stock.int8.qdq.onnx: ORT's quantize_static with every option at its "
        "default (the benchmark's stock INT8; recorded, not checked)",
    )
    p.add_argument(
        "--variant",
        type=name_part,
        default=None,
        help="quantize <model>.fp32.<variant>.onnx from `make optimize` (e.g. s2d) instead of the export; "
        "writes <model>.int8.<variant>.qdq.onnx",
    )
    g = p.add_argument_group("recipe (default: the model's default recipe)")
    for f in fields(QuantRecipe):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            g.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=RECIPE_HELP[f.name]
            )
        elif f.name == "fp32_layers":
            g.add_argument(
                flag,
                type=lambda v: tuple(x.strip() for x in v.split(",") if x.strip()),
                default=None,
                help=RECIPE_HELP[f.name],
            )
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            g.add_argument(flag, type=typ, default=None, help=RECIPE_HELP[f.name])
    p.add_argument(
        "--calibration-file",
        type=path_arg,
        default=None,
        help="calibration subset JSON (default: the committed results/calibration.json)",
    )
    p.add_argument(
        "--max-drop-pp",
        type=finite_float,
        default=None,
        help="if the top-1 drop exceeds this, keep the most sensitive layers in FP32 until it does not",
    )
    p.add_argument("--sqnr", action=argparse.BooleanOptionalAction, default=True, help="per-layer SQNR (QDQ)")
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fail if the INT8 model breaks results/tolerances.json (default on)",
    )
    p.add_argument("--data-dir", type=path_arg, default=None)
    p.add_argument("--force", action="store_true", help="re-quantize even if the INT8 model is up to date")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    if args.max_drop_pp is not None and args.max_drop_pp < 0:
        raise ConfigError(
            f"--max-drop-pp {args.max_drop_pp}: must be >= 0 (a top-1 drop in percentage points)"
        )

    from lenet_edge.quantize.calibration import calibration_of
    from lenet_edge.quantize.checks import int8_failures, tolerances_for
    from lenet_edge.quantize.ort_quant import (
        QuantizeError,
        fp32_source,
        int8_path,
        is_up_to_date,
        quantize_model,
        quantize_record_path,
    )
    from lenet_edge.quantize.recipe import DEFAULT_RECIPES
    from lenet_edge.runtime.files import read_json
    from lenet_edge.workflow import data_source

    overrides = {
        f.name: getattr(args, f.name) for f in fields(QuantRecipe) if getattr(args, f.name) is not None
    }
    out_dir = args.out_dir or args.onnx_dir
    names = selected(args.model, args.workflow)
    if args.stock:
        from lenet_edge.quantize.ort_quant import quantize_stock

        for name in names:
            data = args.data_dir or data_source(name)
            r = quantize_stock(
                args.onnx_dir / f"{name}.fp32.onnx",
                out_dir / f"{name}.stock.int8.qdq.onnx",
                calibration_of(name, data, args.calibration_file),
                data,
            )
            print(
                f"{name}: {r['onnx']} (stock quantize_static) {r['onnx_bytes']:,} bytes, top-1 "
                f"{100 * r['test_top1']:.2f} % (drop {r['accuracy_drop_pp']:+.2f} pp), agreement {100 * r['agreement_with_fp32']:.2f} %"
            )
        return 0
    failures = []
    for name in names:
        # the model's own data, calibration subset and tolerances (its workflow's)
        data = args.data_dir or data_source(name)
        calibration = calibration_of(name, data, args.calibration_file)
        tol = tolerances_for(name)
        try:
            recipe = replace(DEFAULT_RECIPES[name], **overrides)
        except ConfigError as e:  # "percentile must be 90..100": name the flag the user typed
            field = next((k for k in sorted(overrides, key=len, reverse=True) if str(e).startswith(k)), None)
            raise ConfigError(
                f"--{field.replace('_', '-')}{str(e)[len(field) :]}" if field else str(e)
            ) from None
        out = int8_path(out_dir, name, recipe, args.variant)
        fp32 = fp32_source(args.onnx_dir, name, args.variant)
        # Without recipe flags, a default that fails its checks on these weights falls back, in
        # order, to the recipes in FALLBACKS (checked the same way; the record says so).
        chain = [recipe] + ([fb(recipe) for fb in FALLBACKS] if not overrides and args.check else [])
        fresh = [r for r in chain if is_up_to_date(out, fp32, r, calibration)]
        if not args.force and args.max_drop_pp is None and fresh:
            recipe = fresh[0]
            print(f"{out}: up to date (same FP32 model, recipe, calibration, code); --force re-quantizes")
            rec = read_json(quantize_record_path(out))
        else:
            why = []
            for recipe in chain:
                try:
                    rec = quantize_model(
                        fp32,
                        out,
                        recipe,
                        calibration,
                        data,
                        sqnr=args.sqnr,
                        max_drop_pp=args.max_drop_pp,
                        progress=args.progress,
                        # checked before publishing: a recipe that fails leaves the previous model in place
                        check=(lambda r, tol=tol: int8_failures(r, tol)) if args.check else None,
                    )
                    break
                except QuantizeError as e:
                    why.append(str(e))
            else:
                failures.append(" / then ".join(why))
                continue
            if why:
                print(f"{name}: default recipe failed its checks ({why[0]}); fell back to {recipe.name}")
        mc = rec["mcnemar"]
        print(
            f"{name}: {out}  {recipe.name}  {rec['onnx_bytes']:,} bytes ({rec['bytes_per_param']:.3f} B/param, "
            f"{rec['size_ratio_vs_fp32']:.3f} x FP32)  top-1 {100 * rec['test_top1']:.2f} % "
            f"(drop {rec['accuracy_drop_pp']:+.2f} pp)  agreement {100 * rec['agreement_with_fp32']:.2f} %  "
            f"McNemar {mc['ref_only_correct']}/{mc['new_only_correct']} p={mc['p_new_worse']:.3g}  "
            f"nodes {rec['nodes']['exported_total']} -> {rec['nodes']['clean_total']} (clean) -> "
            f"{rec['nodes']['int8_total']} (int8)"
        )
        if rec["nodes_excluded"]:
            r = rec["recipe"]
            why = (
                "by the recipe's fp32_layers" + (", weights int8" if r.get("weight_only") else "")
                if r.get("fp32_layers")
                else "to meet --max-drop-pp"
            )
            print(f"{name}: kept in FP32 {why}: {', '.join(rec['nodes_excluded'])}")
        failures += int8_failures(rec, tol) if args.check else []
    if failures:
        raise QuantizeError("; ".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
