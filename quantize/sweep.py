"""Every recipe combination for both models -> results/quantize_sweep.json and .md.

Reads build/onnx/<model>.fp32.onnx; INT8 files of the sweep go to build/quantize-sweep/.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from lenet_edge.quantize.recipe import DEFAULT_RECIPES, QuantRecipe
from lenet_edge.runtime.cli import add_common, parser, run
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import owned_temp_dir, write_bytes_atomic, write_json_atomic
from lenet_edge.workflow import add_model_flags, selected

ROOT = Path(__file__).resolve().parent.parent


def all_recipes() -> list[QuantRecipe]:
    """Full factorial of the static options, the dynamic variants, and the symmetry flags."""
    cal = [("minmax", 2048), ("entropy", 128), ("entropy", 2048), ("percentile", 2048)]
    out = [
        QuantRecipe(
            mode="static",
            quant_format=f,
            activation_type=a,
            weight_type=w,
            per_channel=pc,
            reduce_range=rr,
            calibration=c,
            calibration_bins=bins,
        )
        for f, a, w, pc, rr, (c, bins) in itertools.product(
            ["qdq", "qoperator"], ["u8", "s8"], ["s8", "u8"], [True, False], [True, False], cal
        )
    ]
    out += [
        QuantRecipe(
            mode="dynamic",
            quant_format="qoperator",
            activation_type="u8",
            weight_type=w,
            per_channel=pc,
            reduce_range=rr,
        )
        for w, pc, rr in itertools.product(["s8", "u8"], [True, False], [True, False])
    ]
    base = QuantRecipe()
    out += [
        QuantRecipe(**{**base.to_dict(), "symmetric_activation": True}),
        QuantRecipe(**{**base.to_dict(), "symmetric_weight": False}),
    ]
    return out


def sweep(onnx_dir: Path, work_dir: Path, models: list[str], data_dir: Path | None) -> list[dict[str, Any]]:
    from lenet_edge.quantize.calibration import load_calibration
    from lenet_edge.quantize.ort_quant import prepared

    calibration = load_calibration()
    recipes = all_recipes()
    rows = []
    from lenet_edge.runtime.progress import Progress

    with Progress(len(models) * len(recipes), "quantize sweep", "model", every=0.1) as bar:
        for name in models:
            with prepared(onnx_dir / f"{name}.fp32.onnx", calibration, data_dir) as prep:
                rows += _sweep_model(name, prep, recipes, calibration, work_dir, bar)
    return rows


def _sweep_model(
    name: str, prep: Any, recipes: list[QuantRecipe], calibration: Any, work_dir: Path, bar: Any
) -> list[dict[str, Any]]:
    from lenet_edge.quantize.ort_quant import quantize_model

    rows = []
    for recipe in recipes:
        bar.set_postfix_str(f"{name} {recipe.name}")
        row: dict[str, Any] = {
            "model": name,
            "recipe": recipe.name,
            **recipe.to_dict(),
            "default": recipe == DEFAULT_RECIPES[name],
        }
        try:
            rec = quantize_model(
                prep.fp32_path,
                work_dir / name / f"{recipe.name}.onnx",
                recipe,
                calibration,
                sqnr=False,
                progress=False,
                prep=prep,
            )
            row.update(
                status="ok",
                test_top1=rec["test_top1"],
                accuracy_drop_pp=rec["accuracy_drop_pp"],
                agreement_with_fp32=rec["agreement_with_fp32"],
                onnx_bytes=rec["onnx_bytes"],
                bytes_per_param=rec["bytes_per_param"],
                size_ratio_vs_fp32=rec["size_ratio_vs_fp32"],
                quantize_seconds=rec["seconds"],
                mcnemar_p_int8_worse=rec["mcnemar"]["p_new_worse"],
            )
        except LenetEdgeError as e:
            row.update(status=f"fails: {str(e)[:160]}")
        except Exception as e:  # ORT rejects some type combinations with its own exceptions
            row.update(status=f"fails: {type(e).__name__}: {str(e)[:160]}")
        rows.append(row)
        bar.update(1)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | recipe | top-1 % | drop pp | agreement % | bytes | B/param | × FP32 | quantize s | status |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        star = " **(default)**" if r["default"] else ""
        if r["status"] == "ok":
            lines.append(
                f"| {r['model']} | `{r['recipe']}`{star} | {100 * r['test_top1']:.2f} | "
                f"{r['accuracy_drop_pp']:+.2f} | {100 * r['agreement_with_fp32']:.2f} | "
                f"{r['onnx_bytes']:,} | {r['bytes_per_param']:.3f} | {r['size_ratio_vs_fp32']:.3f} | "
                f"{r['quantize_seconds']:.1f} | ok |"
            )
        else:
            lines.append(
                f"| {r['model']} | `{r['recipe']}`{star} | | | | | | | | {r['status'].replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.sweep", __doc__)
    add_model_flags(p)
    p.add_argument("--onnx-dir", type=Path, default=Path("build/onnx"))
    p.add_argument("--work-dir", type=Path, default=None, help="where sweep models go (default: a temp dir)")
    add_common(
        p,
        "json",
        json={
            "default": ROOT / "results" / "quantize_sweep.json",
            "help": "writes PATH and PATH.md (default results/quantize_sweep.json)",
        },
    )
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args(argv)
    models = selected(args.model, args.workflow)
    with owned_temp_dir("sweep") as tmp:
        rows = sweep(args.onnx_dir, args.work_dir or Path(tmp), models, args.data_dir)
    write_json_atomic(args.json.with_suffix(".json"), {"command": "make quantize-sweep", "rows": rows})
    write_bytes_atomic(args.json.with_suffix(".md"), to_markdown(rows).encode())
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} recipes quantized; table in {args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
