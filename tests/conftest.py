"""Shared fixtures: tiny IDX writers and helpers to run the CLIs as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "GLOG_minloglevel": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def bench_row(file: str, fmt: str, us: float, runtime: str, stock: bool = False, call: str = "run") -> dict:
    """One row of a runtime.bench result (model m, batch 1, one thread) for summary/select tests."""
    return {
        "model": "m",
        "batch": 1,
        "threads": 1,
        "file": file,
        "format": fmt,
        "runtime": runtime,
        "call": call,
        "latency_ms_p50": us / 1e3,
        "stock": stock,
    }


def ort_static_qdq(model, x: np.ndarray, tmp_path: Path, per_channel: bool = True) -> Path:
    """`model` quantized by onnxruntime as lenet-edge's default does (static QDQ, u8 activations,
    s8 weights, reduce-range), calibrated on `x` in batches of 16 -> tmp_path/int8.qdq.onnx."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, out = tmp_path / "fp32.onnx", tmp_path / "int8.qdq.onnx"
    onnx.save(model, src)
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x[i : i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user mistake: non-zero exit, one 'error:' line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    from lenet_edge.runtime.mnist import MNIST_FILES, default_data_dir, verify_file

    d = default_data_dir()
    for name in MNIST_FILES:
        verify_file(d / name)  # fails loudly: `make test` fetches the data first
    return d
