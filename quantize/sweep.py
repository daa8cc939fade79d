"""Every recipe combination for both models -> results/quantize_sweep.json and .md.

Reads build/onnx/<model>.fp32.onnx. One job per (model, recipe), in this process or as Ray tasks
(`--backend`); each job's record is cached in build/quantize-sweep/ under the hash of its key, so
an interrupted sweep resumes. The INT8 files themselves are temporary: the rows are the result.
"""

from __future__ import annotations

import atexit
import itertools
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lenet_edge.jobs import Job, add_backend_flags, check_jobs, data_arg, data_inputs, describe, run_jobs
from lenet_edge.quantize.recipe import DEFAULT_RECIPES, QuantRecipe
from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import sha256_file, write_json_and_markdown
from lenet_edge.runtime.progress import Progress
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


def sweep_jobs(
    onnx_dir: Path, models: list[str], data_dir: Path | None, only: str | None = None
) -> list[Job]:
    """One job per (model, recipe); inputs: the FP32 export with its record, the calibration
    subset and the data set (the engine adds their hashes and the code's to each key).
    `only`: comma-separated words, keep the recipes whose name contains one of them."""
    from lenet_edge.export.onnx_export import export_record_path
    from lenet_edge.quantize.calibration import CALIBRATION_FILE

    recipes = all_recipes()
    if only is not None:
        words = [w for w in only.split(",") if w]
        recipes = [r for r in recipes if any(w in r.name for w in words)]
        if not recipes:
            raise LenetEdgeError(f"--recipes {only}: no recipe name contains any of these words")
    jobs = []
    for name in models:
        fp32 = onnx_dir / f"{name}.fp32.onnx"
        if not fp32.is_file():
            raise LenetEdgeError(f"{fp32}: FP32 model not found (run `make export`)")
        inputs = {
            "fp32": str(fp32),
            "fp32_record": str(export_record_path(fp32)),
            "calibration": str(CALIBRATION_FILE),
            **data_inputs(data_dir),
        }
        for recipe in recipes:
            payload = {"model": name, "recipe": recipe.to_dict(), "default": recipe == DEFAULT_RECIPES[name]}
            jobs.append(
                Job(
                    "sweep",
                    {"model": name, "recipe": recipe.name},
                    "lenet_edge.quantize.sweep:sweep_job",
                    payload,
                    inputs,
                    label=f"{name} {recipe.name}",
                )
            )
    return jobs


_prepared: dict[tuple[str, str], Any] = {}
_prepared_lock = threading.Lock()
_prepared_stack = ExitStack()
atexit.register(_prepared_stack.close)


def _prepared_for(fp32: Path, calibration_file: Path, data: Path) -> Any:
    """The recipe-independent part (graph clean-up, pre-processing, FP32 logits), once per model,
    data set and thread: a worker that runs many recipes of one model prepares it once, and two
    threads of the local backend never share one (ORT's quantizer may touch what it is given)."""
    from lenet_edge.quantize.calibration import load_calibration
    from lenet_edge.quantize.ort_quant import prepared

    key = (str(fp32), sha256_file(fp32), sha256_file(calibration_file), str(data), threading.get_ident())
    with _prepared_lock:
        if key not in _prepared:
            calibration = load_calibration(calibration_file)
            _prepared[key] = (calibration, _prepared_stack.enter_context(prepared(fp32, calibration, data)))
        return _prepared[key]


def sweep_job(payload: dict[str, Any], inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    """Quantize one model with one recipe and check it; a recipe that fails is a row saying why."""
    from lenet_edge.quantize.ort_quant import quantize_model

    recipe = QuantRecipe.from_dict(payload["recipe"])
    name = payload["model"]
    row: dict[str, Any] = {
        "model": name,
        "recipe": recipe.name,
        **recipe.to_dict(),
        "default": payload["default"],
    }
    calibration, prep = _prepared_for(inputs["fp32"], inputs["calibration"], data_arg(inputs))
    try:
        rec = quantize_model(
            prep.fp32_path,
            work / f"{recipe.name}.onnx",
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
            mcnemar_p_int8_worse=rec["mcnemar"]["p_new_worse"],
        )
    except LenetEdgeError as e:
        row.update(status=f"fails: {str(e)[:160]}")
    except Exception as e:  # ORT rejects some type combinations with its own exceptions
        row.update(status=f"fails: {type(e).__name__}: {str(e)[:160]}")
    return row


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | recipe | top-1 % | drop pp | agreement % | bytes | B/param | × FP32 | status |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        star = " **(default)**" if r["default"] else ""
        if r["status"] == "ok":
            lines.append(
                f"| {r['model']} | `{r['recipe']}`{star} | {100 * r['test_top1']:.2f} | "
                f"{r['accuracy_drop_pp']:+.2f} | {100 * r['agreement_with_fp32']:.2f} | "
                f"{r['onnx_bytes']:,} | {r['bytes_per_param']:.3f} | {r['size_ratio_vs_fp32']:.3f} | ok |"
            )
        else:
            lines.append(
                f"| {r['model']} | `{r['recipe']}`{star} | | | | | | | {r['status'].replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.sweep", __doc__)
    add_model_flags(p)
    p.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"))
    p.add_argument(
        "--recipes", default=None, help="only recipes whose name contains one of these comma-separated words"
    )
    add_backend_flags(p)
    add_common(
        p,
        "out_dir",
        "json",
        out_dir={
            "default": Path("build/quantize-sweep"),
            "help": "the jobs' records, the cache (default build/quantize-sweep)",
        },
        json={
            "default": ROOT / "results" / "quantize_sweep.json",
            "help": "writes PATH and PATH.md (default results/quantize_sweep.json)",
        },
    )
    p.add_argument("--data-dir", type=path_arg, default=None)
    args = p.parse_args(argv)
    models = selected(args.model, args.workflow)
    jobs = sweep_jobs(args.onnx_dir, models, args.data_dir, args.recipes)
    check_jobs(jobs, args.backend)  # one line before the progress bar
    with Progress(len(jobs), "quantize sweep", "recipe", every=0.1) as bar:
        rows, stats = run_jobs(jobs, args.out_dir, args.backend, args.jobs, progress=bar)
    # both files or neither (the JSON was written, then a folder named like the .md stopped the
    # table); at the path given (`--json x.txt` wrote x.json)
    md = write_json_and_markdown(
        args.json, {"command": "make quantize-sweep", "rows": rows}, to_markdown(rows)
    )
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} recipes quantized ({describe(stats)}); table in {md}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
