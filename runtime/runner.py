"""Loads a model into an inference runtime and predicts on raw-pixel batches (the device path).

One code path for evaluation and benchmarking: `predict` validates the input against the
contract, then calls `run`; the benchmark validates its fixed input once and times `run`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import INPUT_NAME, OUTPUT_NAME, check_pixels
from runtime.errors import ConfigError, ContractError

OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionConfig:
    """onnxruntime session options, all explicit and recorded with every result."""

    threads: int = 1  # intra-op threads; inter-op is always 1 (sequential graph)
    graph_optimization: str = "all"  # ORT_ENABLE_ALL: BASIC/EXTENDED measured 1.25x slower here
    io_binding: bool = False  # bind preallocated input/output buffers once, reuse them per call

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.graph_optimization not in OPT_LEVELS:
            raise ConfigError(
                f"graph_optimization must be one of {OPT_LEVELS}, got {self.graph_optimization!r}"
            )


class OnnxRunner:
    """One onnxruntime CPU session with explicit options; `predict` checks the input contract."""

    backend = "onnxruntime"

    def __init__(
        self, model: str | Path | bytes, config: SessionConfig | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.config = config or SessionConfig(threads=threads or 1)
        name = "<bytes>" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ContractError(f"{name}: model file not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.config.graph_optimization]
        opts.log_severity_level = 3  # paddle2onnx leaves unused initializers; ORT warns on each
        src = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises several unrelated types for a bad file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ContractError(f"{name}: onnxruntime cannot load the model ({msg})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ContractError(
                f"{name}: model input must be one tensor named {INPUT_NAME!r}, got {[i.name for i in inputs]}"
            )
        self.name = name
        self.version = ort.__version__
        batch = inputs[0].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None
        self._out_dims = self.session.get_outputs()[0].shape[1:]
        self._bound_shape: tuple[int, ...] | None = None
        self.run = self._run_bound if self.config.io_binding else self._run_plain

    def accepts_batch(self, batch: int) -> bool:
        return self.static_batch is None or self.static_batch == batch

    def _run_plain(self, pixels: np.ndarray) -> np.ndarray:
        """The bare session call on an already-validated batch."""
        return self.session.run(None, {INPUT_NAME: pixels})[0]

    def _run_bound(self, pixels: np.ndarray) -> np.ndarray:
        """IO binding: copy into the bound input buffer, run, return the bound output buffer.

        The returned array is overwritten by the next call. No RunOptions are passed: in ORT 1.32
        that alone adds ~39 µs per call (shared/PERF-NOTES.md).
        """
        if pixels.shape != self._bound_shape:
            self._in = np.empty(pixels.shape, np.float32)
            self._out = np.empty((pixels.shape[0], *self._out_dims), np.float32)
            self._binding = self.session.io_binding()
            self._binding.bind_input(
                INPUT_NAME, "cpu", 0, np.float32, list(self._in.shape), self._in.ctypes.data
            )
            self._binding.bind_output(
                OUTPUT_NAME, "cpu", 0, np.float32, list(self._out.shape), self._out.ctypes.data
            )
            self._bound_shape = pixels.shape
        np.copyto(self._in, pixels)
        self.session.run_with_iobinding(self._binding)
        return self._out

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = check_pixels(pixels)
        if not self.accepts_batch(pixels.shape[0]):
            raise ContractError(
                f"{self.name}: this model has a static batch of {self.static_batch}, got {pixels.shape[0]}"
            )
        out = self.run(pixels)
        return out.copy() if self.config.io_binding else out

    def predict_batched(self, pixels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        return np.concatenate(
            [self.predict(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        )

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.version,
            "providers": self.session.get_providers(),
            **asdict(self.config),
            "inter_op_threads": 1,
            "execution_mode": "sequential",
        }


def _tflite_interpreter() -> tuple[Any, str, str]:
    """ai-edge-litert if installed (maintained), else tflite-runtime (last release 2.14).

    LENET_EDGE_TFLITE=tflite-runtime (or ai-edge-litert) picks one when both are installed.
    """
    if os.environ.get("LENET_EDGE_TFLITE") == "tflite-runtime":
        try:
            import tflite_runtime as pkg
            from tflite_runtime import interpreter as mod

            return mod.Interpreter, "tflite-runtime", getattr(pkg, "__version__", "?")
        except ImportError:
            raise ContractError(
                "LENET_EDGE_TFLITE=tflite-runtime but tflite_runtime is not installed"
            ) from None
    try:
        import ai_edge_litert as pkg
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai-edge-litert", getattr(pkg, "__version__", "?")
    except ImportError:
        pass
    try:
        import tflite_runtime as pkg
        from tflite_runtime import interpreter as mod

        return mod.Interpreter, "tflite-runtime", getattr(pkg, "__version__", "?")
    except ImportError:
        raise ContractError(
            "no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime)"
        ) from None


class TfliteRunner:
    """A TFLite interpreter behind the same contract: callers pass float32 NCHW raw pixels.

    onnx2tf models are NHWC with a static batch of 1; full-integer models take uint8 pixels
    directly (scale 1, zero point 0), so the conversion here is exact for 0..255 integers.
    """

    static_batch = 1

    def __init__(self, model: str | Path, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        interpreter, self.backend, self.version = _tflite_interpreter()
        self.name = str(model)
        if not Path(model).is_file():
            raise ContractError(f"{self.name}: model file not found")
        try:
            self.it = interpreter(model_path=str(model), num_threads=self.config.threads)
            self.it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ContractError(f"{self.name}: {self.backend} cannot load the model ({msg})") from None
        (inp,), (out,) = self.it.get_input_details(), self.it.get_output_details()
        if list(inp["shape"]) != [1, 28, 28, 1]:
            raise ContractError(f"{self.name}: expected an NHWC [1,28,28,1] input, got {list(inp['shape'])}")
        self._in, self._out = inp, out
        self._in_q = inp["quantization"] if inp["dtype"] != np.float32 else None
        self._out_q = out["quantization"] if out["dtype"] != np.float32 else None
        self.run = self._run

    def accepts_batch(self, batch: int) -> bool:
        return batch == 1

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.transpose(0, 2, 3, 1)
        if self._in_q is not None:
            scale, zp = self._in_q
            info = np.iinfo(self._in["dtype"])
            x = np.clip(np.rint(x / scale + zp), info.min, info.max)
        self.it.set_tensor(self._in["index"], np.ascontiguousarray(x, dtype=self._in["dtype"]))
        self.it.invoke()
        y = self.it.get_tensor(self._out["index"])
        if self._out_q is not None:
            scale, zp = self._out_q
            y = (y.astype(np.float32) - zp) * scale
        return y

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = check_pixels(pixels)
        return np.concatenate([self._run(pixels[i : i + 1]).copy() for i in range(len(pixels))])

    def predict_batched(self, pixels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        return self.predict(pixels)

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.version,
            "threads": self.config.threads,
            "input_dtype": np.dtype(self._in["dtype"]).name,
            "input_quantization": list(self._in["quantization"]),
            # TFLite applies its default XNNPACK delegate to float ops when the build has it
            # (both wheels here do); the interpreter offers no query for it.
            "delegate": "default (XNNPACK for float ops)",
        }


def load_runner(model: str | Path | bytes, config: SessionConfig | None = None) -> OnnxRunner | TfliteRunner:
    """The runner for a model file, by format: .tflite -> TFLite interpreter, else onnxruntime."""
    if not isinstance(model, bytes) and str(model).endswith(".tflite"):
        return TfliteRunner(model, config)
    return OnnxRunner(model, config)
