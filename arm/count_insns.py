#!/usr/bin/env python3
"""Guest-side (aarch64, under qemu-aarch64 + insn_plugin) instruction counting
of steady-state batch-1 inference.

    qemu_py.sh --cpu cortex-a76 --plugin libinsn.so,out=REPORT count_insns.py MODEL.onnx

Sequence (all in one process):
  1. build the session: onnxruntime CPU EP, intra_op_num_threads=1,
     inter_op_num_threads=1, ORT_SEQUENTIAL, ORT_ENABLE_ALL
     (or, with --runner-root /work/main, the project's runtime.runner.OnnxRunner,
     which sets the same options; imported read-only, no .pyc written)
  2. --warmup runs (default 20) on a fixed deterministic batch-1 input
  3. 3 empty marked regions (tag 0)            -> marker overhead
  4. --regions marked regions (tags 1..R), each --runs calls (default 50)
The plugin writes one `region ... tag=T insns=N` line per region at exit; the
host (run_counts.py) computes (insns - overhead) / runs per region.
A JSON line with the metadata is printed to stdout (prefix "COUNT_META ").

What one "inference" is here: one Python-level call of the chosen entry point
(`sess.run(["scores"], {"pixels": x})` by default), i.e. including the Python
binding, input/output conversion and the ORT graph run - what our Python
device code pays per batch-1 prediction.
"""

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model")
ap.add_argument("--warmup", type=int, default=20)
ap.add_argument("--runs", type=int, default=50, help="inferences per marked region")
ap.add_argument("--regions", type=int, default=3, help="number of marked regions")
ap.add_argument("--input", choices=["pattern", "zeros"], default="pattern")
ap.add_argument(
    "--runner-root",
    default=None,
    help="directory containing the project's runtime/ package (e.g. /work/main): "
    "count runtime.runner.OnnxRunner instead of a bare session",
)
ap.add_argument(
    "--call",
    choices=["run", "predict"],
    default="run",
    help="with --runner-root: OnnxRunner.run (bare call) or .predict (contract check + run)",
)
ap.add_argument(
    "--io-binding", action="store_true", help="with --runner-root: SessionConfig(io_binding=True)"
)
ap.add_argument(
    "--threads",
    type=int,
    default=1,
    help="intra_op_num_threads (default 1; >1 to exercise multi-threaded counting, use mode=tb)",
)
ap.add_argument(
    "--no-spin",
    action="store_true",
    help="session.intra_op.allow_spinning=0 (worker threads block instead of spinning)",
)
ap.add_argument("--no-gc", action="store_true", help="gc.disable() before counting")
a = ap.parse_args()

import numpy as np  # noqa: E402
from armlab_input import make_input  # noqa: E402
from insn_markers import Markers  # noqa: E402

x = make_input(1) if a.input == "pattern" else np.zeros((1, 1, 28, 28), np.float32)

runtime_version = {}
if a.model.endswith(".tflite"):
    # LiteRT (ai-edge-litert, the site's -litert folder): one invoke on the model's own input,
    # NHWC in the model's dtype (uint8 pixels for our full-int8 files), as runtime.runner feeds it
    from ai_edge_litert import interpreter as litert  # noqa: E402

    it = litert.Interpreter(model_path=a.model, num_threads=a.threads)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    xt = x.reshape([int(d) for d in inp["shape"]]).astype(inp["dtype"])
    set_tensor, invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor
    i_in, i_out = inp["index"], out["index"]

    def infer(_x):
        set_tensor(i_in, xt)
        invoke()
        return get_tensor(i_out)

    entry = "Interpreter.set_tensor + invoke + get_tensor (ai-edge-litert)"
    import ai_edge_litert  # noqa: E402

    runtime_version = {"ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")}
elif a.runner_root:
    sys.dont_write_bytecode = True  # never write __pycache__ into the project tree
    sys.path.insert(0, a.runner_root)
    import onnxruntime as ort  # noqa: E402

    from runtime.runner import OnnxRunner, SessionConfig

    runtime_version = {"onnxruntime": ort.__version__}

    runner = OnnxRunner(
        a.model, SessionConfig(threads=a.threads, graph_optimization="all", io_binding=a.io_binding)
    )
    x = x.astype(runner.input_dtype)  # the bare `run` takes the model's own dtype (pixels are integers)
    infer = runner.run if a.call == "run" else runner.predict
    entry = f"runtime.runner.OnnxRunner.{a.call}" + (" (io_binding)" if a.io_binding else "")
else:
    import onnxruntime as ort  # noqa: E402

    runtime_version = {"onnxruntime": ort.__version__}
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if a.no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    run = sess.run
    # the model's own input dtype: uint8-input models take the same pixel values as bytes
    feeds = {"pixels": x.astype(np.uint8) if sess.get_inputs()[0].type == "tensor(uint8)" else x}
    outs = ["scores"]

    def infer(_x):
        return run(outs, feeds)[0]

    entry = 'InferenceSession.run(["scores"], {"pixels": x})'

y = None
for _ in range(a.warmup):
    y = infer(x)
argmax = int(np.asarray(y).argmax())

if a.no_gc:
    import gc

    gc.disable()

m = Markers()
start, stop = m.start, m.stop
rng = range(a.runs)

# empty regions: the cost of the marker calls themselves
for _ in range(3):
    start(0)
    stop(0)
for r in range(1, a.regions + 1):
    start(r)
    for _ in rng:
        infer(x)
    stop(r)


def hwcaps() -> dict:
    """The CPU features the guest sees (qemu derives them from -cpu); onnxruntime's
    cpuinfo fallback uses exactly these to pick MLAS kernels."""
    import ctypes

    ga = ctypes.CDLL(None).getauxval
    ga.restype = ctypes.c_ulong
    ga.argtypes = [ctypes.c_ulong]
    h1, h2 = ga(16), ga(26)  # AT_HWCAP, AT_HWCAP2
    bits1 = {"fp": 0, "asimd": 1, "atomics": 8, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
    bits2 = {"i8mm": 13, "bf16": 14}
    return {
        **{k: bool(h1 >> b & 1) for k, b in bits1.items()},
        **{k: bool(h2 >> b & 1) for k, b in bits2.items()},
    }


meta = {
    "model": os.path.basename(a.model),
    "entry": entry,
    "warmup": a.warmup,
    "runs": a.runs,
    "regions": a.regions,
    "input": a.input,
    "argmax": argmax,
    "python": platform.python_version(),
    "machine": platform.machine(),
    "numpy": np.__version__,
    **runtime_version,
    "intra_op_threads": a.threads,
    "no_spin": a.no_spin,
    "gc": not a.no_gc,
    "hwcap": hwcaps(),
}
print("COUNT_META " + json.dumps(meta), flush=True)
