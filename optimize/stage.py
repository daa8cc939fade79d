"""Reads <model>.fp32.onnx (+ its export record); writes <model>.fp32.<variant>.onnx and a
.optimize.json record: the passes asked for, what each did (matches, or why it refused), node
counts, and the equivalence check against the export on all test images.

Flow: verify the export -> onnxslim clean-up -> each pass in order (onnxscript rewrite rules,
shape inference after each) -> clean-up -> compare with the export -> atomic write.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.cli import name_part_problem
from lenet_edge.runtime.contract import to_pixels
from lenet_edge.runtime.errors import ConfigError, ConversionError
from lenet_edge.runtime.files import (
    read_json,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from lenet_edge.runtime.mnist import load_split
from lenet_edge.runtime.numeric import max_abs_diff

DEFAULT_PASSES = ("fold-normalisation", "drop-redundant-relu")
S2D_PASSES = (*DEFAULT_PASSES, "s2d-conv-pool", "s2d-conv-stride2")
# s2d4: a conv-pool-conv-pool stack as one 4x4 space-to-depth block (where it matches), else s2d's
S2D4_PASSES = (
    *DEFAULT_PASSES,
    "s2d4-conv-pool-conv-pool",
    "s2d4-conv-pool-conv-relu-pool",
    "s2d-conv-pool",
    "s2d-conv-stride2",
)
VARIANTS = {"fold": DEFAULT_PASSES, "s2d": S2D_PASSES, "s2d4": S2D4_PASSES}


@dataclass(frozen=True)
class OptimizeConfig:
    """Which passes, in order, and how close the result must stay to the export.

    `passes` defaults to the variant's list (VARIANTS); naming passes makes a variant of your own."""

    variant: str = "s2d"
    passes: tuple[str, ...] | None = None
    # FP32 rewrites reorder float sums: allowed |Δlogit| <= atol + rtol * max |logit| on every test
    # image (3.4e-5 for logits up to ~48: a few float32 ulps), and identical top-1 everywhere.
    atol: float = 1e-5
    rtol: float = 5e-7

    def __post_init__(self) -> None:
        from lenet_edge.optimize.passes import RULES

        if name_part_problem(self.variant):
            raise ConfigError(f"variant name {self.variant!r}: {name_part_problem(self.variant)}")
        if self.passes is None:
            if self.variant not in VARIANTS:
                raise ConfigError(f"variant {self.variant!r} has no default passes; name them with --passes")
            object.__setattr__(self, "passes", VARIANTS[self.variant])
        elif self.variant in VARIANTS and tuple(self.passes) != tuple(VARIANTS[self.variant]):
            raise ConfigError(  # `--passes fold-normalisation` rewrote the s2d file the INT8 stages read
                f"--passes with variant {self.variant!r}: that name is the standard "
                f"{', '.join(VARIANTS[self.variant])}; name your own variant (--variant mine)"
            )
        object.__setattr__(self, "passes", tuple(self.passes))
        unknown = [p for p in self.passes if p not in RULES]
        if unknown or not self.passes:
            raise ConfigError(f"unknown or no pass(es) {unknown}; known: {', '.join(RULES)}")
        twice = sorted({p for p in self.passes if self.passes.count(p) > 1})
        if twice:
            raise ConfigError(f"--passes names {', '.join(twice)} twice")
        if not (self.rtol > 0 and self.atol > 0):
            raise ConfigError(f"atol and rtol must be positive, got {self.atol}, {self.rtol}")


def optimized_path(out_dir: Path, model: str, variant: str) -> Path:
    return Path(out_dir) / f"{model}.fp32.{variant}.onnx"


def record_path(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name.removesuffix(".onnx") + ".optimize.json")


def source_sha256() -> str:
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("optimize.stage")


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def apply_passes(model: Any, passes: tuple[str, ...]) -> tuple[Any, list[dict[str, Any]]]:
    """Apply each named rule in order to an ONNX ModelProto; return the new model and, per pass,
    the number of rewrites and (when it made none) the reasons it refused each candidate."""
    import onnx
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

    from lenet_edge.optimize.passes import RULES

    m = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
    report = []
    for name in passes:
        rule = RULES[name]()
        count = rule.as_rule().apply_to_model(m)
        RemoveUnusedNodesPass()(m)
        ShapeInferencePass()(m)  # later rules check static shapes of the new values
        entry: dict[str, Any] = {"pass": name, "rewrites": int(count)}
        if not count:
            entry["not_applied"] = sorted(set(rule.refusals)) or ["the pattern does not occur in this graph"]
        report.append(entry)
    return ir.serde.serialize_model(m), report


def optimize_model(
    fp32_path: str | Path,
    out_dir: str | Path,
    config: OptimizeConfig = OptimizeConfig(),
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Optimize one exported FP32 model; return (and write beside the output) its record."""
    import onnx
    import onnxslim

    from lenet_edge.export.onnx_export import set_metadata
    from lenet_edge.quantize.ort_quant import load_fp32
    from lenet_edge.runtime.runner import OnnxRunner

    t0 = time.perf_counter()
    fp32_path = Path(fp32_path)
    model, exp_rec = load_fp32(fp32_path)  # our export, unchanged since, honouring the contract
    name = exp_rec["model"]
    out = optimized_path(Path(out_dir), name, config.variant)

    clean = onnxslim.slim(model)
    rewritten, passes = apply_passes(clean, config.passes)
    final = onnxslim.slim(rewritten)
    for p in model.metadata_props:  # keep the provenance the rewrites and onnxslim drop
        if p.key not in {q.key for q in final.metadata_props}:
            final.metadata_props.add(key=p.key, value=p.value)
    set_metadata(
        final,
        {
            "variant": f"{config.variant}: {', '.join(e['pass'] for e in passes if e['rewrites'])}",
            "fp32_sha256": exp_rec["onnx_sha256"],
        },
    )
    try:
        onnx.checker.check_model(final, full_check=True)
    except Exception as e:
        raise ConversionError(f"{name}: optimized graph fails onnx.checker: {e}") from e

    pixels = to_pixels(load_split("test", data_dir).images)
    ref = OnnxRunner(fp32_path).predict(pixels)
    got = OnnxRunner(final.SerializeToString()).predict(pixels)
    diff = max_abs_diff(ref, got)
    limit = config.atol + config.rtol * float(np.abs(ref).max())
    same = int((ref.argmax(1) == got.argmax(1)).sum())
    if not diff <= limit or same != len(ref):
        raise ConversionError(
            f"{name} {config.variant}: optimized graph differs from the export on {len(ref)} test images: "
            f"max |Δlogit| {diff:.3g} (limit {limit:.3g}), top-1 differs on {len(ref) - same}"
        )
    data = final.SerializeToString()
    record = {
        "model": name,
        "variant": config.variant,
        "onnx": out.name,
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "fp32": {"onnx": fp32_path.name, "onnx_sha256": exp_rec["onnx_sha256"]},
        "config": {**asdict(config), "passes": list(config.passes)},
        "passes": passes,
        "nodes": {"exported": op_counts(model), "clean": op_counts(clean), "optimized": op_counts(final)},
        "check": {
            "images": len(ref),
            "max_abs_logit_diff": diff,
            "limit": limit,
            "top1_identical": same,
            "passed": True,
        },
        "versions": {
            "onnx": onnx.__version__,
            "onnxslim": onnxslim.__version__,
            "onnxscript": __import__("onnxscript").__version__,
            "onnx_ir": __import__("onnx_ir").__version__,
        },
        "source_sha256": source_sha256(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_bytes_atomic(out, data)
    write_json_atomic(record_path(out), record)
    return record


def is_up_to_date(fp32_path: Path, out_dir: Path, name: str, config: OptimizeConfig) -> bool:
    out = optimized_path(out_dir, name, config.variant)
    rec = record_path(out)
    if not (out.is_file() and rec.is_file() and fp32_path.is_file()):
        return False
    try:
        r = read_json(rec)
    except Exception:
        return False
    return (
        r.get("config") == {**asdict(config), "passes": list(config.passes)}
        and r.get("fp32", {}).get("onnx_sha256") == sha256_file(fp32_path)
        and r.get("source_sha256") == source_sha256()
        and r.get("onnx_sha256") == sha256_file(out)
    )
