"""Reads <model>.fp32.onnx (+ its export record); writes <model>.int8.<fmt>.onnx and a
.quantize.json record: recipe, calibration hash, node counts, accuracy, agreement, McNemar, SQNR.

Flow: verify input -> onnxslim clean-up -> quant_pre_process -> calibrate (our calibrator call,
so every option incl. histogram bins is explicit) -> quantize_static/dynamic with every option
spelled out -> evaluate against FP32 on all test images -> per-layer SQNR -> atomic write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.export.onnx_export import read_export_record, set_metadata
from lenet_edge.quantize.calibration import Calibration, PixelReader, calibration_label
from lenet_edge.quantize.cleanup import clean_graph, compact_names, op_counts
from lenet_edge.quantize.recipe import DEFAULT_RECIPES, QuantRecipe
from lenet_edge.quantize.stats import mcnemar_exact
from lenet_edge.runtime.contract import (
    CONTRACT_TEXT,
    INPUT_NAME,
    OUTPUT_NAME,
    to_pixels,
)
from lenet_edge.runtime.errors import ContractError, ConversionError, LenetEdgeError
from lenet_edge.runtime.evaluate import topk_accuracy
from lenet_edge.runtime.files import (
    owned_temp_dir,
    quantize_record_path,  # noqa: F401  (re-exported: __main__, tests)
    read_json,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from lenet_edge.runtime.mnist import load_split
from lenet_edge.runtime.runner import OnnxRunner


class QuantizeError(ConversionError):
    """Quantization failed or its result did not pass a check."""


def int8_path(out_dir: Path, model: str, recipe: QuantRecipe, variant: str | None = None) -> Path:
    """<model>.int8.<fmt>.onnx from the export; <model>.int8.<variant>.<fmt>.onnx from an
    optimize variant (<model>.fp32.<variant>.onnx)."""
    fmt = "qdq" if recipe.mode == "static" and recipe.quant_format == "qdq" else recipe.quant_format
    tag = fmt if recipe.mode == "static" else "dynamic"
    return Path(out_dir) / f"{model}.int8.{variant + '.' if variant else ''}{tag}.onnx"


def fp32_source(onnx_dir: Path, model: str, variant: str | None = None) -> Path:
    return Path(onnx_dir) / f"{model}.fp32.{variant + '.' if variant else ''}onnx"


def source_sha256() -> str:
    """Hash of the quantizer and everything it imports."""
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("quantize.ort_quant")


def is_up_to_date(out_path: Path, fp32_path: Path, recipe: QuantRecipe, calibration: Calibration) -> bool:
    """Same FP32 bytes, recipe, calibration subset and quantizer code as the existing record."""
    rec_path = quantize_record_path(out_path)
    if not (out_path.is_file() and rec_path.is_file() and fp32_path.is_file()):
        return False
    try:
        r = read_json(rec_path)
    except LenetEdgeError:
        return False
    return (
        r.get("recipe") == recipe.to_dict()
        and r.get("fp32", {}).get("onnx_sha256") == sha256_file(fp32_path)
        and r.get("calibration", {}).get("sha256") == calibration.sha256
        and r.get("source_sha256") == source_sha256()
        and r.get("onnx_sha256") == sha256_file(out_path)
    )


def load_fp32(path: Path) -> tuple[Any, dict[str, Any]]:
    """Load an FP32 model made by our export, refusing foreign, stale or contract-breaking files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise LenetEdgeError(f"{path}: FP32 model not found (run `make export`)")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ContractError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
    graph = model.graph
    dims = []
    if len(graph.input) == 1:
        t = graph.input[0].type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    out_dims = []
    if len(graph.output) == 1:
        out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    if (
        len(graph.input) != 1
        or graph.input[0].name != INPUT_NAME
        or graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT
        or len(dims) != 4
        or not all(isinstance(d, int) and d > 0 for d in dims[1:])
        or len(graph.output) != 1
        or graph.output[0].name != OUTPUT_NAME
        or graph.output[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT
        or len(out_dims) != 2
        or not (isinstance(out_dims[1], int) and out_dims[1] >= 2)
    ):
        raise ContractError(
            f"{path}: input/output do not match the contract (input 'pixels' float32 [N,C,H,W] raw pixels, "
            f"output 'scores' float32 [N,K] logits); got inputs "
            f"{[i.name for i in graph.input]} {dims}, outputs {[o.name for o in graph.output]} {out_dims}"
        )
    opt_rec = path.with_name(path.name.removesuffix(".onnx") + ".optimize.json")
    if opt_rec.is_file():
        return model, _optimized_record(path, opt_rec)
    return model, read_export_record(path)


def _optimized_record(path: Path, opt_rec_path: Path) -> dict[str, Any]:
    """An optimize variant stands in for the export it was made from: its own record must vouch
    for this file, and that export must be ours and unchanged. Returns the export record with the
    variant's file and sha256 (what the INT8 record then names as its FP32 source)."""
    r = read_json(opt_rec_path)
    src = r.get("fp32", {}).get("onnx") if isinstance(r, dict) else None
    if not isinstance(src, str) or "/" in src or not isinstance(r.get("onnx_sha256"), str):
        raise LenetEdgeError(f"{opt_rec_path}: not an optimize record (run `make optimize`)")
    if r["onnx_sha256"] != sha256_file(path):
        raise LenetEdgeError(
            f"{path}: changed since `make optimize` (sha256 differs from {opt_rec_path.name})"
        )
    exp = read_export_record(path.with_name(src))
    if exp["onnx_sha256"] != r["fp32"].get("onnx_sha256"):
        raise LenetEdgeError(f"{path}: made from another export than {src}; run `make optimize` again")
    return {**exp, "onnx": path.name, "onnx_sha256": r["onnx_sha256"], "optimize_variant": r.get("variant")}


def _ort_enums(recipe: QuantRecipe) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    qt = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    return {
        "format": QuantFormat.QDQ if recipe.quant_format == "qdq" else QuantFormat.QOperator,
        "activation_type": qt[recipe.activation_type],
        "weight_type": qt[recipe.weight_type],
        "method": {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[recipe.calibration],
    }


def _calibrate(
    pre_path: Path, recipe: QuantRecipe, pixels: np.ndarray, tmp: Path, progress: bool, desc: str
) -> Path:
    """Run ORT's calibrator ourselves (quantize_static does not pass bin counts through) and
    save the tensor ranges as the calibration cache that quantize_static then loads."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    extra: dict[str, Any] = {"symmetric": recipe.symmetric_activation}
    if recipe.calibration == "minmax":
        extra.update(
            moving_average=False, averaging_constant=0.01, max_intermediate_outputs=None, per_channel=False
        )
    elif recipe.calibration == "entropy":
        extra.update(num_bins=recipe.calibration_bins, num_quantized_bins=128)
    else:
        extra.update(num_bins=recipe.calibration_bins, percentile=recipe.percentile)
    calibrator = create_calibrator(
        str(pre_path),
        op_types_to_calibrate=None,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=_ort_enums(recipe)["method"],
        use_external_data_format=False,
        providers=["CPUExecutionProvider"],
        extra_options=extra,
    )
    calibrator.collect_data(PixelReader(pixels, batch_size=100, progress=progress, desc=desc))
    cache = tmp / "calibration_cache.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _quantize(
    pre_path: Path, out_path: Path, recipe: QuantRecipe, cache: Path | None, exclude: list[str]
) -> dict[str, Any]:
    """Call ORT with every option explicit; return the options as recorded."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    e = _ort_enums(recipe)
    extra = {
        "ActivationSymmetric": recipe.symmetric_activation,
        "WeightSymmetric": recipe.symmetric_weight,
        "EnableSubgraph": False,
        "ForceQuantizeNoInputCheck": False,
        "MatMulConstBOnly": True,
        "AddQDQPairToWeight": False,
        "DedicatedQDQPair": False,
        "QDQKeepRemovableActivations": False,
    }
    options = {
        "mode": recipe.mode,
        "op_types_to_quantize": None,
        "per_channel": recipe.per_channel,
        "reduce_range": recipe.reduce_range,
        "weight_type": str(e["weight_type"]),
        "nodes_to_exclude": exclude,
        "extra_options": extra,
    }
    if recipe.mode == "static":
        quantize_static(
            str(pre_path),
            str(out_path),
            calibration_data_reader=None,  # ranges come from the cache we computed
            quant_format=e["format"],
            op_types_to_quantize=None,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=e["activation_type"],
            weight_type=e["weight_type"],
            nodes_to_quantize=None,
            nodes_to_exclude=exclude,
            use_external_data_format=False,
            calibrate_method=e["method"],
            calibration_providers=["CPUExecutionProvider"],
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
        options.update(
            quant_format=str(e["format"]),
            activation_type=str(e["activation_type"]),
            calibrate_method=str(e["method"]),
        )
    else:
        quantize_dynamic(
            str(pre_path),
            str(out_path),
            op_types_to_quantize=None,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            weight_type=e["weight_type"],
            nodes_to_quantize=None,
            nodes_to_exclude=exclude,
            use_external_data_format=False,
            extra_options=extra,
        )
    return options


def _dequantize_initializer(qdq_path: Path, weight: str) -> np.ndarray:
    """(q - zero_point) * scale for the DequantizeLinear that rebuilds a scalar weight."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == f"{weight}_quantized":
            q, scale = inits[node.input[0]], inits[node.input[1]]
            zp = inits[node.input[2]] if len(node.input) > 2 else np.zeros_like(q)
            return ((q.astype(np.int64) - zp.astype(np.int64)) * scale).astype(np.float32)
    raise QuantizeError(f"{qdq_path}: no DequantizeLinear for weight {weight}")


def layer_sqnr(float_path: Path, qdq_path: Path, pixels: np.ndarray, tmp: Path) -> dict[str, Any]:
    """Per-layer SQNR (dB) with onnxruntime.quantization.qdq_loss_debug (QDQ models only)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    matches = create_weight_matching(str(float_path), str(qdq_path))
    for name, m in matches.items():
        if np.ndim(m["float"]) == 0:
            # ORT 1.32 mis-dequantizes 0-d uint8 weights (the baked-in normalisation offset
            # -127.5 comes back as +129.5, while the graph computes -127.5); redo those here.
            m["dequantized"] = _dequantize_initializer(qdq_path, name)
    weights = {
        k: compute_signal_to_quantization_noice_ratio(
            np.atleast_1d(m["float"]), np.atleast_1d(m["dequantized"])
        )
        for k, m in matches.items()
    }
    aug_f, aug_q = tmp / "aug_float.onnx", tmp / "aug_qdq.onnx"
    modify_model_output_intermediate_tensors(str(float_path), str(aug_f), save_as_external_data=False)
    modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q), save_as_external_data=False)
    acts_f = collect_activations(str(aug_f), PixelReader(pixels, batch_size=100))
    acts_q = collect_activations(str(aug_q), PixelReader(pixels, batch_size=100))
    acts = compute_activation_error(create_activation_matching(acts_q, acts_f))
    return {
        "weights_sqnr_db": {k: round(float(v), 2) for k, v in weights.items()},
        "activations_sqnr_db": {
            k: {
                "qdq": round(float(v["qdq_err"]), 2),
                "vs_float": round(float(v.get("xmodel_err", np.nan)), 2),
            }
            for k, v in acts.items()
        },
        "images": len(pixels),
    }


@dataclass
class Prepared:
    """Everything about one FP32 model that does not depend on the recipe (reused by the sweep)."""

    fp32_path: Path
    model: Any  # the exported FP32 graph
    exp_rec: dict[str, Any]
    clean: Any  # after onnxslim
    pre: Any  # after quant_pre_process
    pre_path: Path
    labels: np.ndarray
    test_pixels: np.ndarray
    cal_pixels: np.ndarray
    fp32_logits: np.ndarray


@contextmanager
def prepared(
    fp32_path: str | Path, calibration: Calibration, data_dir: str | Path | None = None
) -> Iterator[Prepared]:
    """Verify the FP32 model, clean its graph, pre-process it for quantization (in a temp dir)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    fp32_path = Path(fp32_path)
    model, exp_rec = load_fp32(fp32_path)
    cal_pixels = calibration.pixels(data_dir)
    if len(cal_pixels) == 0:
        raise QuantizeError(f"{calibration.source}: the calibration set is empty")
    test = load_split("test", data_dir)
    test_pixels = to_pixels(test.images)
    fp32_logits = OnnxRunner(fp32_path).predict_batched(test_pixels)
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs advice on every call
    with owned_temp_dir("quant") as tmp:
        clean = clean_graph(model, test_pixels[:1000])
        clean_path, pre_path = tmp / "clean.onnx", tmp / "pre.onnx"
        onnx.save(clean, str(clean_path))
        quant_pre_process(
            str(clean_path),
            str(pre_path),
            skip_optimization=False,
            skip_onnx_shape=False,
            skip_symbolic_shape=False,
            auto_merge=False,
            int_max=2**31 - 1,
            guess_output_rank=False,
            verbose=0,
            save_as_external_data=False,
        )
        yield Prepared(
            fp32_path,
            model,
            exp_rec,
            clean,
            onnx.load(str(pre_path)),
            pre_path,
            test.labels,
            test_pixels,
            cal_pixels,
            fp32_logits,
        )


def resolve_layers(model: Any, layers: tuple[str, ...], name: str) -> list[str]:
    """'Conv:0' -> the node name of the first Conv in graph order (+ a MatMul's bias Add)."""
    by_type: dict[str, list[Any]] = {}
    for n in model.graph.node:
        by_type.setdefault(n.op_type, []).append(n)
    out = []
    for layer in layers:
        op, k = layer.split(":")
        nodes = by_type.get(op, [])
        if int(k) >= len(nodes):
            raise QuantizeError(
                f"{name}: recipe keeps {layer} in FP32, but the graph has {len(nodes)} {op} node(s)"
            )
        node = nodes[int(k)]
        out.append(node.name)
        if op == "MatMul":  # its bias Add stays with it (the clean-up usually makes them one Gemm)
            out += [a.name for a in by_type.get("Add", []) if node.output[0] in a.input]
    return out


WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def float_regions(model: Any, fixed: list[str]) -> list[str]:
    """The unweighted nodes (Pad, pools, reshapes, activations) that only ever sit between layers
    kept in FP32: joined through unweighted neighbours into regions, a region whose weighted
    neighbours are all in `fixed` stays float as well. Otherwise ORT would quantize it and leave a
    Quantize/Dequantize pair per tensor that runs on every call and feeds float layers anyway
    (on cortex-a72, lenet_pool with every layer FP32: 5 % more instructions than FP32)."""
    nodes = [n for n in model.graph.node if n.name]
    weighted = {n.name for n in nodes if n.op_type in WEIGHT_INPUT}
    made = {o: n.name for n in nodes for o in n.output}
    links: dict[str, set[str]] = {n.name: set() for n in nodes}
    for n in nodes:
        for i in n.input:
            if i in made:
                links[n.name].add(made[i])
                links[made[i]].add(n.name)
    out: list[str] = []
    seen: set[str] = set()
    for start in (n.name for n in nodes if n.name not in weighted):
        if start in seen:
            continue
        region, edge, todo = [], set(), [start]
        seen.add(start)
        while todo:
            cur = todo.pop()
            region.append(cur)
            for nb in links[cur]:
                if nb in weighted:
                    edge.add(nb)
                elif nb not in seen:
                    seen.add(nb)
                    todo.append(nb)
        if edge and edge <= set(fixed):
            out += sorted(region)
    return out


def _weight_only_file(path: Path, nodes: list[str], what: str) -> None:
    import onnx

    m = onnx.load(str(path))
    if not weight_only_int8(m, nodes):
        raise QuantizeError(f"{what}: weight_only found no float weight to store as int8 in {nodes}")
    onnx.save(m, str(path))


def _half_scales_file(path: Path) -> dict[str, Any]:
    import onnx

    from lenet_edge.quantize.scales import half_weight_scales

    m = onnx.load(str(path))
    done = half_weight_scales(m)
    if done["tensors"]:
        onnx.save(m, str(path))
    return done


def weight_only_int8(model: Any, nodes: list[str]) -> list[str]:
    """Weight-only INT8 for FP32 nodes: each named Conv/Gemm/MatMul's float weight initializer
    becomes int8 (symmetric, zero point 0, one scale per output channel, 127 levels: the compute
    stays float, so no reduce-range) feeding the node through one DequantizeLinear; a Gemm's
    weights are stored [N, K] (transB=1). Returns the nodes changed; a node whose weight is not a
    float initializer of its own is left as it was."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    done = []
    for n in list(model.graph.node):
        if n.name not in nodes or n.op_type not in WEIGHT_INPUT:
            continue
        wname = n.input[WEIGHT_INPUT[n.op_type]]
        init = inits.get(wname)
        if init is None or init.data_type != onnx.TensorProto.FLOAT or uses.get(wname) != 1:
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        if n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute):
            # [N, K] with transB=1: onnxruntime would otherwise turn DequantizeLinear -> Gemm
            # (transB=0, no activation after it) into MatMulNBits, which quantizes the activations
            # to int8 on every call (accuracy level 4) and was ~0.9 µs slower than the float Gemm
            w = np.ascontiguousarray(w.T)
            for a in list(n.attribute):
                if a.name == "transB":
                    n.attribute.remove(a)
            n.attribute.append(helper.make_attribute("transB", 1))
        axis = 0 if n.op_type in ("Conv", "Gemm") else w.ndim - 1
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce, keepdims=True)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(init)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q, wname + "_quantized"),
                numpy_helper.from_array(scale.reshape(-1), wname + "_scale"),
                numpy_helper.from_array(np.zeros(scale.size, np.int8), wname + "_zero_point"),
            ]
        )
        dq = helper.make_node(
            "DequantizeLinear",
            [wname + "_quantized", wname + "_scale", wname + "_zero_point"],
            [wname],
            name=f"{n.name}_weight_dq",
            axis=axis,
        )
        model.graph.node.insert(list(model.graph.node).index(n), dq)
        done.append(n.name)
    return done


@dataclass(frozen=True)
class QuantJob:
    """What to make of a prepared FP32 model: the recipe, its calibration subset, and how."""

    recipe: QuantRecipe
    calibration: Calibration
    sqnr: bool = True  # record per-layer SQNR (static QDQ only)
    max_drop_pp: float | None = None  # keep the least robust layers in FP32 until the drop fits
    progress: bool = True
    check: Callable[[dict[str, Any]], list[str]] | None = None  # tolerance failures of a record


@dataclass
class _Int8:
    model: Any  # the INT8 ModelProto, tensors renamed compactly
    logits: np.ndarray  # on every test image
    excluded: list[str]  # nodes kept in FP32 (by the recipe or the drop fallback)
    options: dict[str, Any]  # what was passed to ORT
    sqnr: dict[str, Any] | None
    scales: dict[str, Any]  # per-channel weight scales rounded to float16 (quantize.scales)


def quantize_model(
    fp32_path: str | Path,
    out_path: str | Path,
    recipe: QuantRecipe,
    calibration: Calibration,
    data_dir: str | Path | None = None,
    *,
    sqnr: bool = True,
    max_drop_pp: float | None = None,
    progress: bool = True,
    prep: Prepared | None = None,
    check: Callable[[dict[str, Any]], list[str]] | None = None,
) -> dict[str, Any]:
    """Quantize one FP32 model; return (and write beside the INT8 file) its record.

    `prep` (from `prepared()`) skips the recipe-independent steps when quantizing many recipes.
    `check` returns the tolerance failures of a record: if it returns any, QuantizeError is
    raised and nothing is written, so a failing recipe never replaces a good INT8 model.
    """
    job = QuantJob(recipe, calibration, sqnr, max_drop_pp, progress, check)
    if prep is None:
        with prepared(fp32_path, calibration, data_dir) as p:
            return _quantize_prepared(p, Path(out_path), job)
    return _quantize_prepared(prep, Path(out_path), job)


def _quantize_prepared(prep: Prepared, out_path: Path, job: QuantJob) -> dict[str, Any]:
    """Quantize, measure, record, check; write the model and then its record only if it passes."""
    t0 = time.perf_counter()
    q = _make_int8(prep, job)
    data, record = _int8_record(prep, out_path, job, q, t0)
    check = job.check
    failures = check(record) if check is not None else []
    if failures:
        raise QuantizeError(f"{'; '.join(failures)} (nothing written: {out_path} left as it was)")
    # Model first, record last: a model without a matching record is stale to every reader
    # (its sha256 is checked), so a kill between the two renames is detected, never trusted.
    write_bytes_atomic(out_path, data)
    write_json_atomic(quantize_record_path(out_path), record)
    return record


def _make_int8(prep: Prepared, job: QuantJob) -> _Int8:
    """Calibrate, quantize and run the INT8 model on every test image; with max_drop_pp, keep the
    least robust layers (lowest activation SQNR) in FP32 one by one until the drop fits."""
    import onnx

    recipe, progress, max_drop_pp, sqnr = job.recipe, job.progress, job.max_drop_pp, job.sqnr
    pre, pre_path = prep.pre, prep.pre_path
    cal_pixels, test_pixels, labels = prep.cal_pixels, prep.test_pixels, prep.labels
    name = prep.exp_rec["model"]
    fp32_acc = topk_accuracy(prep.fp32_logits, labels)
    with owned_temp_dir("quant") as tmp:
        cache = None
        if recipe.mode == "static":
            cache = _calibrate(pre_path, recipe, cal_pixels, tmp, progress, f"{name} calibrate")
        fixed = resolve_layers(pre, recipe.fp32_layers, name)  # kept FP32 by the recipe
        base = fixed + [x for x in float_regions(pre, fixed) if x not in fixed]
        excluded: list[str] = list(base)
        sensitivity: list[str] = []
        while True:
            q_tmp = tmp / "int8.onnx"
            options = _quantize(pre_path, q_tmp, recipe, cache, excluded)
            if recipe.weight_only:
                _weight_only_file(q_tmp, fixed, f"{name} {recipe.name}")
            scales = _half_scales_file(q_tmp)
            try:
                int8_logits = OnnxRunner(q_tmp).predict_batched(test_pixels)
            except ContractError as e:
                raise QuantizeError(
                    f"{name} {recipe.name}: onnxruntime cannot run the INT8 model ({e})"
                ) from e
            int8_acc = topk_accuracy(int8_logits, labels)
            drop_pp = 100 * (fp32_acc.top1 - int8_acc.top1)
            if max_drop_pp is None or drop_pp <= max_drop_pp or recipe.quant_format != "qdq":
                break
            # Fallback: keep the least robust layer (lowest activation SQNR vs float) in FP32.
            if not sensitivity:
                s = layer_sqnr(pre_path, q_tmp, cal_pixels[:200], tmp)["activations_sqnr_db"]
                nodes = {o: n.name for n in pre.graph.node for o in n.output}
                ranked = sorted((v["vs_float"], k) for k, v in s.items() if k in nodes)
                sensitivity = [nodes[k] for _, k in ranked]
            added = len(excluded) - len(base)
            if added == len(sensitivity):
                break
            excluded.append(sensitivity[added])
        sqnr_rec = (
            layer_sqnr(pre_path, q_tmp, cal_pixels[:500], tmp)
            if sqnr and recipe.mode == "static" and recipe.quant_format == "qdq"
            else None
        )
        int8 = compact_names(onnx.load(str(q_tmp)))
        # Renaming must not change a single output bit (a rename, so 1,000 images suffice). Same
        # batching as int8_logits: a dynamic-range model quantizes each batch with its own range.
        if not np.array_equal(
            OnnxRunner(int8.SerializeToString()).predict_batched(test_pixels[:1000]), int8_logits[:1000]
        ):
            raise QuantizeError(f"{name}: renaming tensors changed the INT8 outputs")

    return _Int8(int8, int8_logits, excluded, options, sqnr_rec, scales)


def _int8_record(
    prep: Prepared, out_path: Path, job: QuantJob, q: _Int8, t0: float
) -> tuple[bytes, dict[str, Any]]:
    """The INT8 file's bytes (with its metadata) and its record: sizes, accuracy, agreement,
    McNemar against FP32, node counts, provenance."""
    import onnx
    import onnxruntime

    recipe, calibration = job.recipe, job.calibration
    model, exp_rec, pre, clean = prep.model, prep.exp_rec, prep.pre, prep.clean
    fp32_path, cal_pixels, fp32_logits, labels = (
        prep.fp32_path,
        prep.cal_pixels,
        prep.fp32_logits,
        prep.labels,
    )
    name = exp_rec["model"]
    fp32_acc = topk_accuracy(fp32_logits, labels)
    int8, int8_logits, excluded, options, sqnr_rec = q.model, q.logits, q.excluded, q.options, q.sqnr
    int8_acc = topk_accuracy(int8_logits, labels)
    int8_correct = int8_logits.argmax(1) == labels
    agreement = float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean())
    int8.doc_string = f"lenet-edge {name}, INT8 ({recipe.name}). {CONTRACT_TEXT}"
    fp32_bytes = fp32_path.stat().st_size
    meta = {p.key: p.value for p in model.metadata_props}
    set_metadata(
        int8,
        {
            "model": name,
            "precision": "int8",
            "recipe": recipe.name,
            "training_seed": meta.get("training_seed", ""),
            "input_contract": CONTRACT_TEXT,
            "checkpoint_sha256": meta.get("checkpoint_sha256", ""),
            "fp32_sha256": exp_rec["onnx_sha256"],
            "calibration_sha256": calibration.sha256,
            "test_top1": f"{int8_acc.top1:.4f}",
            "test_top2": f"{int8_acc.top2:.4f}",
            "agreement_with_fp32": f"{agreement:.4f}",
            "producer": f"onnxruntime {onnxruntime.__version__} quantization",
        },
    )
    data = int8.SerializeToString()
    params = exp_rec["params"]
    record = {
        "model": name,
        "precision": "int8",
        "onnx": out_path.name,
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "bytes_per_param": round(len(data) / params, 4),
        "size_ratio_vs_fp32": round(len(data) / fp32_bytes, 4),
        "fp32": {
            "onnx": fp32_path.name,
            "onnx_sha256": exp_rec["onnx_sha256"],
            "onnx_bytes": fp32_bytes,
            "test_top1": fp32_acc.top1,
            "test_top2": fp32_acc.top2,
        },
        "recipe": recipe.to_dict(),
        "recipe_name": recipe.name,
        "default_recipe": recipe == DEFAULT_RECIPES[name],
        "ort_options": options,
        "calibration": {
            "source": calibration_label(calibration),
            "sha256": calibration.sha256,
            "images": int(len(cal_pixels)),
        },
        "nodes": {
            "exported": op_counts(model),
            "clean": op_counts(clean),
            "pre_processed": op_counts(pre),
            "int8": op_counts(int8),
            "exported_total": len(model.graph.node),
            "clean_total": len(clean.graph.node),
            "int8_total": len(int8.graph.node),
        },
        "nodes_excluded": excluded,
        "weight_scales": q.scales,
        "test_top1": int8_acc.top1,
        "test_top2": int8_acc.top2,
        "accuracy_drop_pp": round(100 * (fp32_acc.top1 - int8_acc.top1), 4),
        "agreement_with_fp32": agreement,
        "mcnemar": mcnemar_exact(fp32_logits.argmax(1) == labels, int8_correct),
        "sqnr": sqnr_rec,
        "params": params,
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "onnxslim": __import__("onnxslim").__version__,
            "numpy": np.__version__,
        },
        "source_sha256": source_sha256(),
        "seconds": round(time.perf_counter() - t0, 2),
        "num_classes": int(fp32_logits.shape[1]),
    }
    return data, record


def quantize_stock(
    fp32_path: str | Path, out_path: str | Path, calibration: Calibration, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """What a user gets from ONNX Runtime alone: `quantize_static(model, out, reader)` with every
    option at its default, on the plain export, calibrated on the same committed subset. For the
    benchmark's stock rows; its accuracy is recorded, never checked against the tolerances."""
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    _, exp_rec = load_fp32(fp32_path)
    test = load_split("test", data_dir)
    pixels = to_pixels(test.images)
    logging.getLogger().setLevel(logging.ERROR)
    with owned_temp_dir("quant-stock") as tmp:
        q_tmp = tmp / "stock.onnx"
        quantize_static(str(fp32_path), str(q_tmp), PixelReader(calibration.pixels(data_dir), batch_size=100))
        data = q_tmp.read_bytes()
    fp32_logits = OnnxRunner(fp32_path).predict(pixels)
    int8_logits = OnnxRunner(data).predict(pixels)
    fp32_acc, int8_acc = topk_accuracy(fp32_logits, test.labels), topk_accuracy(int8_logits, test.labels)
    record = {
        "model": exp_rec["model"],
        "precision": "int8",
        "stock": True,
        "onnx": out_path.name,
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "fp32": {"onnx": fp32_path.name, "onnx_sha256": exp_rec["onnx_sha256"], "test_top1": fp32_acc.top1},
        "call": "onnxruntime.quantization.quantize_static(model_input, model_output, calibration_data_reader), "
        "every other option at its default",
        "test_top1": int8_acc.top1,
        "accuracy_drop_pp": round(100 * (fp32_acc.top1 - int8_acc.top1), 4),
        "agreement_with_fp32": float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean()),
        "calibration": {"sha256": calibration.sha256, "images": int(len(calibration.indices))},
        "versions": {"onnxruntime": onnxruntime.__version__},
    }
    write_bytes_atomic(out_path, data)
    write_json_atomic(quantize_record_path(out_path), record)
    return record
