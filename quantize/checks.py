"""Checks an INT8 quantize record against results/tolerances.json; returns the failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lenet_edge.runtime.files import read_json
from lenet_edge.runtime.numeric import exceeds, falls_below

TOLERANCES = Path(__file__).resolve().parent.parent / "results" / "tolerances.json"


def load_tolerances(path: str | Path = TOLERANCES) -> dict[str, Any]:
    return {k: v["value"] for k, v in read_json(path).items() if isinstance(v, dict)}


def tolerances_for(model: str, path: str | Path = TOLERANCES) -> dict[str, Any]:
    """The tolerances a model is checked against: results/tolerances.json, with the overrides its
    workflow states ([tolerances], each with its reason)."""
    from lenet_edge.workflow import get

    return {**load_tolerances(path), **get(model).tolerances}


def int8_failures(record: dict[str, Any], tol: dict[str, Any]) -> list[str]:
    """Every tolerance the INT8 model breaks, each as a sentence with the numbers."""
    fails = []
    m = record["model"]
    if exceeds(record["accuracy_drop_pp"], tol["int8_top1_drop_pp_max"]):
        fails.append(
            f"{m}: INT8 top-1 drop {record['accuracy_drop_pp']:.2f} pp > {tol['int8_top1_drop_pp_max']} pp"
        )
    if falls_below(record["agreement_with_fp32"], tol["int8_agreement_min"]):
        fails.append(
            f"{m}: INT8/FP32 agreement {100 * record['agreement_with_fp32']:.2f} % < {100 * tol['int8_agreement_min']:.1f} %"
        )
    p = record["mcnemar"]["p_new_worse"]
    if falls_below(p, tol["mcnemar_p_int8_worse_min"]):
        fails.append(f"{m}: INT8 significantly worse than FP32 (McNemar one-sided p = {p:.2g})")
    if exceeds(record["size_ratio_vs_fp32"], tol["int8_size_ratio_max"]):
        fails.append(
            f"{m}: INT8 file is {record['size_ratio_vs_fp32']:.3f} x FP32 > {tol['int8_size_ratio_max']}"
        )
    return fails
