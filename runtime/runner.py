"""Loads a model into an inference runtime and predicts on raw-pixel batches (the device path).

One code path for evaluation and benchmarking: `predict` validates the input against the
contract, then calls `run`; the benchmark validates its fixed input once and times `run`.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import IMAGE_SHAPE, INPUT_NAME, MAX_THREADS, NUM_CLASSES, OUTPUT_NAME, check_pixels
from .errors import ConfigError, ContractError
from .files import missing_file

OPT_LEVELS = ("disable", "basic", "extended", "all")
# predict() runs dynamic-batch models in chunks of this many images: memory stays flat in N
# (a 100,000-image call as one batch took 8 GB of activations).
CHUNK = 256


def check_scores(name: str, scores: np.ndarray, n: int, classes: int | None = NUM_CLASSES) -> np.ndarray:
    """The model's output must honour the contract: float32 [n, classes] (the model's declared
    width; any width when it declares none), every value finite."""
    if not isinstance(scores, np.ndarray) or scores.dtype != np.float32:
        raise ContractError(
            f"{name}: output must be float32 scores, got {getattr(scores, 'dtype', type(scores))}"
        )
    if scores.ndim != 2 or scores.shape[0] != n or (classes is not None and scores.shape[1] != classes):
        raise ContractError(f"{name}: output shape must be [{n},{classes or 'K'}], got {list(scores.shape)}")
    if not np.isfinite(scores).all():
        raise ContractError(
            f"{name}: output contains NaN or Inf ({int((~np.isfinite(scores)).sum())} values)"
        )
    return scores


NATIVE = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def as_native(pixels: np.ndarray, dtype: Any) -> np.ndarray:
    """A validated batch in the model's own input dtype: no copy when it already is."""
    if pixels.dtype == dtype:
        return pixels
    if dtype == np.uint8:
        return np.rint(pixels).astype(np.uint8)  # float pixels 0..255 -> bytes (exact for integers)
    return pixels.astype(dtype)


def image_shape_of(shape: list[Any]) -> tuple[int, ...]:
    """The C, H, W a model declares for one image; a symbolic dimension takes MNIST's value (the
    contract's default), so a model that leaves its channels open still takes MNIST pixels."""
    return tuple(d if isinstance(d, int) else w for d, w in zip(shape[1:], IMAGE_SHAPE, strict=True))


def _check_onnx_io(name: str, inputs: list[Any], outputs: list[Any]) -> None:
    """Names, element types and ranks of the graph's input and output against the contract,
    before anything runs: one input 'pixels' [N,C,H,W] of raw pixels (C, H, W are the model's
    own; MNIST's is [N,1,28,28]) and one output 'scores' [N,K] of float32 logits. A symbolic
    dimension passes here; its value is checked after a run."""

    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ContractError(
            f"{name}: model input must be one tensor named {INPUT_NAME!r}, got {[i.name for i in inputs]}"
        )
    i = inputs[0]
    batch = i.shape[0] if i.shape else None
    if (
        i.type not in NATIVE
        or not isinstance(i.shape, list)
        or len(i.shape) != 4
        or any(isinstance(d, int) and d < 1 for d in i.shape[1:])
    ):
        raise ContractError(
            f"{name}: input {INPUT_NAME!r} must be float32 or uint8 [N,C,H,W], got {i.type} {i.shape}"
        )
    if isinstance(batch, int) and batch < 1:
        raise ContractError(f"{name}: input batch dimension must be >= 1, got {batch}")
    if len(outputs) != 1 or outputs[0].name != OUTPUT_NAME:
        raise ContractError(
            f"{name}: model output must be one tensor named {OUTPUT_NAME!r}, got {[o.name for o in outputs]}"
        )
    o = outputs[0]
    k = o.shape[1] if isinstance(o.shape, list) and len(o.shape) == 2 else None
    if (
        o.type != "tensor(float)"
        or not isinstance(o.shape, list)
        or len(o.shape) != 2
        or (isinstance(k, int) and k < 2)
    ):
        raise ContractError(
            f"{name}: output {OUTPUT_NAME!r} must be float32 [N,K] scores, K >= 2, got {o.type} {o.shape}"
        )


# Model metadata key: the intra-op thread count a file's passes were chosen for ("1 (pass, ...)");
# a session with more threads gets one warning (optimize.ort_int8's ONE_THREAD_PASSES).
TUNED_FOR_THREADS = "tuned_for_threads"
log = logging.getLogger(__name__)


def tuned_for_threads(meta: dict[str, str]) -> int | None:
    """The thread count a model's metadata says it was tuned for, or None (unsaid or unreadable)."""
    head = meta.get(TUNED_FOR_THREADS, "").split(" ", 1)[0]
    return int(head) if head.isdigit() and int(head) > 0 else None


def _model_file(model: str | Path) -> str:
    """A model file's name, once it is known to exist and to be text the runtimes can take (both take
    the name as UTF-8; undecodable bytes gave onnxruntime's pybind message)."""
    name = str(model)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ContractError(f"{name:.200}: the file name is not valid UTF-8; rename the file") from e
    problem = missing_file(model, "model file")
    if problem:
        raise ContractError(f"{name}: {problem}")
    return name


def _model_input(name: str, pixels: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """check_pixels for the model file `name`: a refusal names the model (whose input shape may be
    the one that differs from the data's)."""
    try:
        return check_pixels(pixels, image_shape)
    except ContractError as e:
        raise ContractError(f"{name}: {e}") from e


@dataclass(frozen=True)
class SessionConfig:
    """onnxruntime session options, all explicit and recorded with every result."""

    threads: int = 1  # intra-op threads; inter-op is always 1 (sequential graph)
    graph_optimization: str = "all"  # ORT_ENABLE_ALL: BASIC/EXTENDED measured 1.25x slower here
    io_binding: bool = False  # bind preallocated input/output buffers once, reuse them per call

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be 1..{MAX_THREADS}, got {self.threads}")
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
        name = "<bytes>" if isinstance(model, bytes) else _model_file(model)
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
            raise ContractError(f"{name}: onnxruntime cannot load the model ({msg})") from e
        inputs = self.session.get_inputs()
        _check_onnx_io(name, inputs, self.session.get_outputs())
        self.name = name
        self.version = ort.__version__
        batch = inputs[0].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None
        self.image_shape = image_shape_of(list(inputs[0].shape))
        k = self.session.get_outputs()[0].shape[1]
        self.classes: int | None = k if isinstance(k, int) else None  # None: the model leaves it open
        self.input_dtype = np.dtype(NATIVE[inputs[0].type])  # feed this to `run`: no conversion
        meta = self.session.get_modelmeta().custom_metadata_map
        self.tuned_for_threads = tuned_for_threads(meta)
        if self.tuned_for_threads and self.config.threads > self.tuned_for_threads:
            log.warning(
                "warning: %s was tuned for %s intra-op thread(s) (%s); with %d it can be several times "
                "slower: deploy the file chosen for this setting (targets.json choices_other_settings)",
                Path(name).name,
                self.tuned_for_threads,
                meta[TUNED_FOR_THREADS].partition(" ")[2].strip("()") or "its passes",
                self.config.threads,
            )
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
        that alone adds ~39 µs per call (docs/performance.md).
        """
        if pixels.shape != self._bound_shape:
            self._in = np.empty(pixels.shape, self.input_dtype)
            if self.classes is None:  # an open width: learn it from one plain run
                self.classes = int(self._run_plain(pixels).shape[1])
            self._out = np.empty((pixels.shape[0], self.classes), np.float32)
            self._binding = self.session.io_binding()
            self._binding.bind_input(
                INPUT_NAME, "cpu", 0, self.input_dtype, list(self._in.shape), self._in.ctypes.data
            )
            self._binding.bind_output(
                OUTPUT_NAME, "cpu", 0, np.float32, list(self._out.shape), self._out.ctypes.data
            )
            self._bound_shape = pixels.shape
        np.copyto(self._in, pixels)
        self.session.run_with_iobinding(self._binding)
        return self._out

    def predict(self, pixels: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
        """Validated input -> validated scores [N,K]; runs in chunks of at most `chunk` images
        (of exactly the static batch, for a model that has one)."""
        pixels = _model_input(self.name, pixels, self.image_shape)
        n = pixels.shape[0]
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ConfigError(f"batch size must be a positive integer, got {chunk!r}")
        if self.static_batch is not None:
            if n % self.static_batch:
                raise ContractError(
                    f"{self.name}: this model has a static batch of {self.static_batch}, got {n} images"
                )
            chunk = self.static_batch
        parts = []
        for i in range(0, n, chunk):
            part = as_native(pixels[i : i + chunk], self.input_dtype)
            scores = check_scores(self.name, self.run_checked(part), len(part), self.classes)
            parts.append(scores.copy() if self.config.io_binding else scores)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def run_checked(self, pixels: np.ndarray) -> np.ndarray:
        """`run`, with onnxruntime's run-time failures (a shape that only breaks when data flows,
        an index out of range) turned into one ContractError naming the model."""
        try:
            return self.run(pixels)
        except Exception as e:  # ORT raises its own pybind types (Fail, InvalidArgument, ...)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ContractError(f"{self.name}: onnxruntime failed to run the model ({msg[:300]})") from e

    def predict_batched(self, pixels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        return self.predict(pixels, batch_size)

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.version,
            "providers": self.session.get_providers(),
            **asdict(self.config),
            "tuned_for_threads": self.tuned_for_threads,
            "inter_op_threads": 1,
            "execution_mode": "sequential",
        }


TFLITE_INTERPRETERS = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}


def _tflite_interpreter() -> tuple[Any, str, str]:
    """ai-edge-litert if installed (maintained), else tflite-runtime (last release 2.14): the
    interpreter module, its name and version.

    LENET_EDGE_TFLITE=tflite-runtime (or ai-edge-litert) picks one, and only that one: a
    measurement under the name asked for is made with that interpreter or not at all.
    """
    want = os.environ.get("LENET_EDGE_TFLITE", "")
    if want and want not in TFLITE_INTERPRETERS:  # `tflite_runtime`, `litert` took the default
        raise ConfigError(
            f"LENET_EDGE_TFLITE={want!r}: expected {' or '.join(TFLITE_INTERPRETERS)} (or unset: the first installed)"
        )
    for name in [want] if want else list(TFLITE_INTERPRETERS):
        try:
            pkg = importlib.import_module(TFLITE_INTERPRETERS[name])
            mod = importlib.import_module(f"{TFLITE_INTERPRETERS[name]}.interpreter")
        except ImportError:
            continue
        return mod, name, getattr(pkg, "__version__", "?")
    if want:
        raise ContractError(f"LENET_EDGE_TFLITE={want} but {TFLITE_INTERPRETERS[want]} is not installed")
    raise ContractError("no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime)")


# tflite-runtime 2.14 applies its default XNNPACK delegate with the int8 kernels switched off
# (its options' flags are 0): an int8 graph then runs on the built-in kernels (lenet_pool
# full-int8 46 us against 19 us FP32 on a Xeon). The delegate the wheel exports, created with
# TFLITE_XNNPACK_DELEGATE_FLAG_QS8 | _QU8, takes the int8 ops 2.14's XNNPACK supports: in
# lenet-edge's full-int8 files (per-tensor FC weights) all but the uint8 QUANTIZE in front, and
# the 1x1 normalisation conv where the fold was refused (docs/tflite.md). Only for the release
# whose options struct this was checked against: it begins int32 num_threads, uint32 flags; the
# rest is passed back as TfLiteXNNPackDelegateOptionsDefault filled it.
XNNPACK_QS8, XNNPACK_QU8 = 0x1, 0x2
XNNPACK_INT8_RELEASES = ("2.14.",)


class _XnnpackOptions(ctypes.Structure):
    # the two leading fields of TfLiteXNNPackDelegateOptions; `rest` is room for the others
    # (returned by value through a caller-made buffer: a larger one is harmless)
    _fields_ = (("num_threads", ctypes.c_int32), ("flags", ctypes.c_uint32), ("rest", ctypes.c_uint8 * 248))


class XnnpackInt8Delegate:
    """tflite-runtime's own XNNPACK delegate with its int8 kernels on, for `experimental_delegates`
    (the interpreter asks it only for `_get_native_delegate_pointer`). Deleted after the
    interpreter that uses it (tflite-runtime's Interpreter drops its delegates last)."""

    def __init__(self, lib: ctypes.CDLL, threads: int) -> None:
        self._lib = lib
        opts = lib.TfLiteXNNPackDelegateOptionsDefault()
        opts.num_threads = threads
        opts.flags |= XNNPACK_QS8 | XNNPACK_QU8
        self.flags = opts.flags
        self._ptr = lib.TfLiteXNNPackDelegateCreate(ctypes.byref(opts))
        if not self._ptr or lib.TfLiteXNNPackDelegateGetFlags(self._ptr) != self.flags:
            self.close()
            raise OSError("the XNNPACK delegate did not take the int8 flags")

    def _get_native_delegate_pointer(self) -> int:
        return self._ptr

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            self._lib.TfLiteXNNPackDelegateDelete(self._ptr)
            self._ptr = None

    def __del__(self) -> None:
        self.close()


def xnnpack_int8_delegate(mod: Any, backend: str, version: str, threads: int) -> XnnpackInt8Delegate | None:
    """The int8-enabled XNNPACK delegate for tflite-runtime 2.14, or None (LiteRT's default delegate
    already runs int8; another tflite-runtime release, or a wheel without the symbols, keeps its
    default). LENET_EDGE_XNNPACK_INT8=0 turns it off."""
    switch = os.environ.get("LENET_EDGE_XNNPACK_INT8", "")
    if switch not in ("", "0", "1"):  # `off`, `false` left the delegate on
        raise ConfigError(f"LENET_EDGE_XNNPACK_INT8={switch!r}: expected 0 (off) or 1 (on, the default)")
    if backend != "tflite-runtime" or not version.startswith(XNNPACK_INT8_RELEASES) or switch == "0":
        return None
    libs = sorted(Path(mod.__file__).parent.glob("_pywrap_tensorflow_interpreter_wrapper*.so"))
    try:
        lib = ctypes.CDLL(str(libs[0]))  # already loaded by the interpreter module: the same copy
        lib.TfLiteXNNPackDelegateOptionsDefault.restype = _XnnpackOptions
        lib.TfLiteXNNPackDelegateOptionsDefault.argtypes = []
        lib.TfLiteXNNPackDelegateCreate.restype = ctypes.c_void_p
        lib.TfLiteXNNPackDelegateCreate.argtypes = [ctypes.POINTER(_XnnpackOptions)]
        lib.TfLiteXNNPackDelegateGetFlags.restype = ctypes.c_uint32
        lib.TfLiteXNNPackDelegateGetFlags.argtypes = [ctypes.c_void_p]
        lib.TfLiteXNNPackDelegateDelete.restype = None
        lib.TfLiteXNNPackDelegateDelete.argtypes = [ctypes.c_void_p]
        return XnnpackInt8Delegate(lib, threads)
    except (IndexError, OSError, AttributeError):
        return None


@contextmanager
def native_log(said: list[str]) -> Iterator[None]:
    """Take what native code writes to fd 2 meanwhile (TFLite logs "INFO: Created TensorFlow Lite
    XNNPACK delegate for CPU." on every load): its lines go into `said`, and after the block the
    ones that are not INFO are written to stderr again. -v (LENET_EDGE_VERBOSE=1), or no writable
    temp folder, leaves fd 2 alone. A caller that fails folds `said` into its one error line instead."""
    try:  # a device without a writable temp folder keeps its fd 2 as it is; closed by `with tmp` below
        tmp = None if os.environ.get("LENET_EDGE_VERBOSE") == "1" else tempfile.TemporaryFile()  # noqa: SIM115
    except OSError:
        tmp = None
    if tmp is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                said += [ln for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip()]
    finally:
        os.close(saved)


def _native_lines(said: list[str]) -> list[str]:
    return [ln for ln in said if not ln.startswith("INFO: ")]


class TfliteRunner:
    """A TFLite interpreter behind the same contract: callers pass float32 NCHW raw pixels.

    onnx2tf models are NHWC with a static batch of 1; full-integer models take uint8 pixels
    directly (scale 1, zero point 0), so the conversion here is exact for 0..255 integers.
    """

    static_batch = 1

    def __init__(self, model: str | Path, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        mod, self.backend, self.version = _tflite_interpreter()
        self.name = _model_file(model)
        said: list[str] = []
        try:
            with native_log(said):
                self._delegate = xnnpack_int8_delegate(mod, self.backend, self.version, self.config.threads)
                extra: dict[str, Any] = {}
                if self._delegate is not None:  # ours instead of the default one (never both)
                    extra = {
                        "experimental_op_resolver_type": mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                        "experimental_delegates": [self._delegate],
                    }
                self.it = mod.Interpreter(model_path=str(model), num_threads=self.config.threads, **extra)
                self.it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            native = "; ".join(_native_lines(said))[:300]
            raise ContractError(
                f"{self.name}: {self.backend} cannot load the model ({msg})"
                + (f" [{native}]" if native else "")
            ) from e
        for line in _native_lines(said):  # warnings and errors stay visible; the INFO noise goes
            print(line, file=sys.stderr)
        (inp,), (out,) = self.it.get_input_details(), self.it.get_output_details()
        ishape, oshape = [int(d) for d in inp["shape"]], [int(d) for d in out["shape"]]
        if len(ishape) != 4 or ishape[0] != 1 or min(ishape) < 1:
            raise ContractError(f"{self.name}: expected an NHWC [1,H,W,C] input, got {ishape}")
        if len(oshape) != 2 or oshape[0] != 1 or oshape[1] < 2:
            raise ContractError(f"{self.name}: expected a [1,K] output, got {oshape}")
        self.image_shape = (ishape[3], ishape[1], ishape[2])  # C, H, W of the NCHW pixels fed in
        self.classes = oshape[1]
        self._in, self._out = inp, out
        self.input_dtype = np.dtype(inp["dtype"])
        # uint8 input with scale 1 and zero point 0 (our full-int8 files) takes raw bytes as they
        # are; any other quantized input is quantized here (a foreign file).
        q = tuple(inp["quantization"])
        self._in_q = None if self.input_dtype == np.float32 or q == (1.0, 0) else q
        if self.input_dtype not in (np.float32, np.uint8) and self._in_q is None:
            raise ContractError(f"{self.name}: input dtype {self.input_dtype} needs a quantization scale")
        self._out_q = out["quantization"] if out["dtype"] != np.float32 else None
        self.run = self._run

    def accepts_batch(self, batch: int) -> bool:
        return batch == 1

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """One image, in the model's native dtype for the fast path (the benchmark feeds that)."""
        c, h, w = self.image_shape
        # NCHW -> NHWC: a reshape for one channel, a transpose for more
        x = (
            pixels.reshape(len(pixels), h, w, 1)
            if c == 1
            else np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
        )
        if self._in_q is not None:
            scale, zp = self._in_q
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.rint(x / scale + zp), info.min, info.max).astype(self.input_dtype)
        elif x.dtype != self.input_dtype:
            x = as_native(x, self.input_dtype)
        self.it.set_tensor(self._in["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self._out["index"])
        if self._out_q is not None:
            scale, zp = self._out_q
            y = (y.astype(np.float32) - zp) * scale
        return y

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = _model_input(self.name, pixels, self.image_shape)
        out = np.empty((len(pixels), self.classes), np.float32)
        for i in range(len(pixels)):
            y = np.asarray(self.run_checked(pixels[i : i + 1]), np.float32)
            out[i] = check_scores(self.name, y, 1, self.classes)[0]
        return out

    def run_checked(self, pixels: np.ndarray) -> np.ndarray:
        try:
            return self._run(pixels)
        except (RuntimeError, ValueError) as e:  # the interpreter's failures on invoke
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ContractError(f"{self.name}: {self.backend} failed to run the model ({msg[:300]})") from e

    def predict_batched(self, pixels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        return self.predict(pixels)

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.version,
            "threads": self.config.threads,
            "input_dtype": np.dtype(self._in["dtype"]).name,
            "input_quantization": list(self._in["quantization"]),
            # TFLite applies its default XNNPACK delegate when the build has it (both wheels here
            # do: LiteRT's runs int8 ops too); the interpreter offers no query for it.
            "delegate": f"XNNPACK with int8 kernels (flags {self._delegate.flags:#x}, lenet-edge's)"
            if self._delegate is not None
            else "default (XNNPACK)",
        }


def load_runner(model: str | Path | bytes, config: SessionConfig | None = None) -> OnnxRunner | TfliteRunner:
    """The runner for a model file, by format: .tflite -> TFLite interpreter, else onnxruntime."""
    if not isinstance(model, bytes) and str(model).endswith(".tflite"):
        return TfliteRunner(model, config)
    return OnnxRunner(model, config)
