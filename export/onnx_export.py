"""Reads a verified checkpoint; writes <model>.fp32.onnx and <model>.fp32.export.json.

The graph takes raw pixels (normalisation baked in) and is checked against Paddle on all
10,000 test images before it is written; a failed check raises with the numbers.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.contract import (
    CONTRACT_TEXT,
    INPUT_NAME,
    OUTPUT_NAME,
    to_pixels,
)
from lenet_edge.runtime.errors import CheckpointError, ConfigError, ConversionError
from lenet_edge.runtime.evaluate import topk_accuracy
from lenet_edge.runtime.files import (
    owned_temp_dir,
    read_json,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from lenet_edge.runtime.mnist import load_split
from lenet_edge.runtime.numeric import exceeds, finite, max_abs_diff
from lenet_edge.runtime.runner import OnnxRunner
from lenet_edge.train.checkpoint import load_checkpoint
from lenet_edge.train.paddle_env import import_paddle, paddle_home
from lenet_edge.workflow import check_data_shape, get

EXPORT_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 13  # paddle2onnx defaults to 7/9 depending on the entry point: always explicit
    atol: float = 1e-4  # max |Δlogit| allowed between ONNX Runtime and Paddle
    batch_size: int = 1000  # parity batches (memory only; results do not depend on it)

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"opset must be 13..21, got {self.opset}")
        if not 0 < self.atol < float("inf"):  # NaN fails too
            raise ConfigError(f"--atol {self.atol}: must be a finite number > 0")
        if self.batch_size < 1:
            raise ConfigError(f"export batch size {self.batch_size}: must be >= 1")


def onnx_path(out_dir: Path, model: str, precision: str = "fp32") -> Path:
    return Path(out_dir) / f"{model}.{precision}.onnx"


def export_record_path(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name.removesuffix(".onnx") + ".export.json")


def read_export_record(onnx_file: Path) -> dict[str, Any]:
    """The export record beside `onnx_file`, checked: made by `make export` for a known model and
    vouching for this very file (sha256). Anything else is one clear LenetEdgeError."""
    import re

    from lenet_edge.workflow import workflows

    onnx_file = Path(onnx_file)
    path = export_record_path(onnx_file)
    if not path.is_file():
        raise ConversionError(
            f"{onnx_file}: no export record {path.name} beside it; not made by `make export`"
        )
    rec = read_json(path)
    if not (
        isinstance(rec, dict)
        and rec.get("model") in workflows()
        and isinstance(rec.get("onnx_sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", rec["onnx_sha256"])
        and isinstance(rec.get("params"), int)
        and isinstance(rec.get("checkpoint_sha256"), str)
        and all(finite(rec.get(k)) and 0 <= rec[k] <= 1 for k in ("test_top1", "test_top2"))
    ):
        raise ConversionError(f"{path}: not an export record of a known model (run `make export`)")
    if not onnx_file.is_file():
        raise ConversionError(f"{onnx_file}: model not found (run `make export`)")
    if rec["onnx_sha256"] != sha256_file(onnx_file):
        raise ConversionError(
            f"{onnx_file}: changed since export (sha256 differs from {path.name}); re-export it"
        )
    return rec


def source_sha256() -> str:
    """Hash of the export code and everything it imports (model classes, checkpoint format, contract)."""
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("export.onnx_export")


def _raw_pixel_net(net: Any, mean: float, std: float) -> Any:
    """Wrap the trained net so the graph takes raw pixels: the workflow's normalisation, in Paddle."""
    import_paddle()
    import paddle.nn as nn

    class RawPixelNet(nn.Layer):
        def __init__(self, inner: nn.Layer) -> None:
            super().__init__()
            self.net = inner

        def forward(self, pixels):  # noqa: ANN001 - traced by paddle.jit
            return self.net((pixels - mean) / std)

    return RawPixelNet(net)


def _paddle_logits(net: Any, x: np.ndarray, batch: int) -> np.ndarray:
    paddle = import_paddle()

    with paddle.no_grad():
        return np.concatenate(
            [net(paddle.to_tensor(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
        )


def _paddle_to_onnx(wrapper: Any, opset: int, image_shape: tuple[int, ...]) -> bytes:
    """jit.save (dynamic batch) then paddle2onnx; both log instead of raising, so check outputs."""
    paddle = import_paddle()

    with owned_temp_dir("export") as tmp:
        prefix = Path(tmp) / "inference"
        spec = paddle.static.InputSpec([None, *image_shape], "float32", INPUT_NAME)
        with paddle_home() as home:  # jit.save makes ~/.cache/paddle/to_static_tmp/<pid>
            paddle.jit.save(wrapper, str(prefix), input_spec=[spec])
        shutil.rmtree(home / ".cache" / "paddle" / "to_static_tmp" / str(os.getpid()), ignore_errors=True)
        model_file, params_file = prefix.with_suffix(".json"), prefix.with_suffix(".pdiparams")
        if not (model_file.is_file() and params_file.is_file()):
            raise ConversionError(f"paddle.jit.save wrote no {model_file.name}/{params_file.name} in {tmp}")
        return paddle_inference_to_onnx(model_file, params_file, opset)


def paddle_inference_to_onnx(model_file: Path, params_file: Path, opset: int) -> bytes:
    """A Paddle inference model (PIR inference.json or .pdmodel + .pdiparams) -> ONNX bytes."""
    import paddle2onnx

    # save_file=None returns the bytes before paddle2onnx's Python-side optimizer
    # (polygraphy, which pip-installs at run time): export never changes the environment.
    data = paddle2onnx.export(
        str(model_file),
        str(params_file),
        save_file=None,
        opset_version=opset,
        auto_upgrade_opset=False,
        verbose=False,
        enable_onnx_checker=True,
        enable_experimental_op=False,
        enable_optimize=True,
        deploy_backend="onnxruntime",
    )
    if not data:
        raise ConversionError(f"{model_file}: paddle2onnx produced no model (see its log above)")
    return data


def _fix_io(model: Any) -> None:
    """Name the output 'scores' and the batch dimension 'N' (paddle2onnx says fetch_name_0)."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1 or graph.input[0].name != INPUT_NAME:
        raise ConversionError(
            f"unexpected exported I/O: {[i.name for i in graph.input]} -> {[o.name for o in graph.output]}"
        )
    old = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = OUTPUT_NAME
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = OUTPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    for vi in (graph.input[0], graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"


def set_metadata(model: Any, props: dict[str, Any]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def is_up_to_date(
    onnx_file: Path, checkpoint_sha: str, config: ExportConfig, code_sha: str | None = None, **fields: Any
) -> bool:
    """The export record vouches for this file, made from this checkpoint (or source file) with
    this config by this code (`code_sha`, default this module's), and holds `fields` as given."""
    rec = export_record_path(onnx_file)
    if not (onnx_file.is_file() and rec.is_file()):
        return False
    try:
        r = read_json(rec)
    except Exception:
        return False
    return (
        r.get("checkpoint_sha256") == checkpoint_sha
        and r.get("config") == asdict(config)
        and r.get("source_sha256") == (code_sha or source_sha256())
        and all(r.get(k) == v for k, v in fields.items())
        and r.get("onnx_sha256") == sha256_file(onnx_file)
    )


def _read_checkpoint(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's arrays and training record, for a model trained here (a Paddle source)."""
    from lenet_edge.train.models import MODELS

    state, train_rec = load_checkpoint(checkpoint)  # sha256-verified, finite float32, no pickle
    name = train_rec["model"]
    if name not in MODELS or not isinstance(train_rec.get("seed"), int):
        raise CheckpointError(
            f"{checkpoint}: its record names model {name!r} (known: {', '.join(sorted(MODELS))}) "
            f"and seed {train_rec.get('seed')!r}; expected a known model and an integer seed"
        )
    return state, train_rec


def _trained_net(name: str, state: dict[str, Any], checkpoint: Path) -> Any:
    """The model's Paddle net with the checkpoint's weights, in eval mode."""
    paddle = import_paddle()
    from lenet_edge.train.models import build_model

    net = build_model(name)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise CheckpointError(f"{checkpoint}: arrays do not fit {name}: expected {expected}, got {got}")
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    net.eval()
    return net


def _paddle_graph(net: Any, wf: Any, train_rec: dict[str, Any], config: ExportConfig) -> Any:
    """The raw-pixel ONNX graph of a trained net: paddle2onnx, contract I/O names, metadata,
    onnx.checker (full)."""
    import onnx

    paddle = import_paddle()
    import paddle2onnx

    mean, std = wf.input.normalize_mean, wf.input.normalize_std
    model = onnx.load_from_string(
        _paddle_to_onnx(_raw_pixel_net(net, mean, std), config.opset, wf.input.shape)
    )
    _fix_io(model)
    model.doc_string = f"lenet-edge {wf.name}, FP32. {CONTRACT_TEXT}"
    meta = {
        "model": wf.name,
        "precision": "fp32",
        "training_seed": train_rec["seed"],
        "input_contract": CONTRACT_TEXT,
        "checkpoint_sha256": train_rec["checkpoint_sha256"],
        "producer": f"paddle {paddle.__version__}, paddle2onnx {paddle2onnx.__version__}, opset {config.opset}",
    }
    set_metadata(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ConversionError(f"{wf.name}: exported ONNX fails onnx.checker: {e}") from e
    return model


def check_parity(
    model: Any, ref: np.ndarray, pixels: np.ndarray, config: ExportConfig, what: str
) -> tuple[np.ndarray, float, int]:
    """The exported graph on raw pixels vs the reference logits: max |Δlogit| <= atol and the same
    top-1 on every image, else ConversionError. Returns the logits, max |Δ| and top-1 matches."""
    logits = OnnxRunner(model.SerializeToString()).predict_batched(pixels, config.batch_size)
    max_abs = max_abs_diff(logits, ref)
    top1_same = int((logits.argmax(1) == ref.argmax(1)).sum())
    if exceeds(max_abs, config.atol) or top1_same != len(ref):
        raise ConversionError(
            f"{what} parity failed on {len(ref)} test images: max |Δlogit| {max_abs:.3g} "
            f"(limit {config.atol:g}), top-1 differs on {len(ref) - top1_same}"
        )
    return logits, max_abs, top1_same


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    config: ExportConfig = ExportConfig(),
    data_dir: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export one checkpoint; return the export record (also written beside the ONNX file)."""
    t0 = time.perf_counter()
    checkpoint = Path(checkpoint)
    state, train_rec = _read_checkpoint(checkpoint)
    name = train_rec["model"]
    out = onnx_path(Path(out_dir), name)
    ckpt_sha = train_rec["checkpoint_sha256"]
    if not force and is_up_to_date(out, ckpt_sha, config):
        print(f"{out}: up to date with {checkpoint} (--force re-exports)")
        return read_json(export_record_path(out))

    import onnx

    paddle = import_paddle()
    import paddle2onnx

    from lenet_edge.train.models import count_params

    net = _trained_net(name, state, checkpoint)
    test = load_split("test", data_dir)
    pixels = to_pixels(test.images)
    # Reference: the trained net on the training-time preprocessing, so the check also proves
    # that the normalisation baked into the graph is the same function.
    wf = get(name)
    mean, std = wf.input.normalize_mean, wf.input.normalize_std
    check_data_shape(wf, test.images.shape[1:], Path(data_dir or "MNIST's test images"))
    normed = (pixels - np.float32(mean)) / np.float32(std)  # the training-time preprocessing
    ref = _paddle_logits(net, normed, config.batch_size)

    model = _paddle_graph(net, wf, train_rec, config)
    logits, max_abs, top1_same = check_parity(model, ref, pixels, config, f"{name}: ONNX Runtime vs Paddle")
    acc = topk_accuracy(logits, test.labels)
    set_metadata(model, {"test_top1": f"{acc.top1:.4f}", "test_top2": f"{acc.top2:.4f}"})
    data = model.SerializeToString()
    write_bytes_atomic(out, data)

    record = {
        "model": name,
        "precision": "fp32",
        "onnx": out.name,
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": ckpt_sha,
        "training_seed": train_rec["seed"],
        "params": count_params(net),
        "config": asdict(config),
        "parity": {
            "images": len(ref),
            "max_abs_logit_diff": max_abs,
            "atol": config.atol,
            "top1_identical": top1_same,
            "passed": True,
        },
        "test_top1": acc.top1,
        "test_top2": acc.top2,
        "paddle_test_top1": topk_accuracy(ref, test.labels).top1,
        "metadata_props": {p.key: p.value for p in model.metadata_props},
        "graph_nodes": len(model.graph.node),
        "opset": config.opset,
        "versions": {
            "python": platform.python_version(),
            "paddle": paddle.__version__,
            "paddle2onnx": paddle2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "data_sha256": test.sha256,
        "source_sha256": source_sha256(),
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(export_record_path(out), record)
    return record
