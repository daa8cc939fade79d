"""quantize.tflite_front's passes on small synthetic .tflite graphs (random weights, odd sizes,
batch 3, several channels), made by TensorFlow's own converter in .venv-tflite and run in LiteRT
in .venv-device: pad-into-conv keeps the logits (<= 1e-5), float-front keeps the int8 file's
answers within a quantization step, and graphs that do not match are left untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TFLITE_PY, DEVICE_PY = ROOT / ".venv-tflite" / "bin" / "python", ROOT / ".venv-device" / "bin" / "python"
pytestmark = pytest.mark.skipif(
    not (TFLITE_PY.is_file() and DEVICE_PY.is_file()),
    reason="run `make setup-tflite setup-device` (make test does)",
)

MAKE = r"""
import sys, numpy as np, tensorflow as tf
out = sys.argv[1]
rng = np.random.default_rng(7)
N, H, W, C, O = 3, 10, 14, 2, 5
w = rng.normal(0, 0.3, (3, 3, 4 * C, O)).astype(np.float32)
b = rng.normal(0, 0.1, O).astype(np.float32)
w2 = rng.normal(0, 0.3, (3, 3, O, 4)).astype(np.float32)
def body(x, pads, value):
    y = tf.pad(x, pads, constant_values=value)
    y = tf.nn.space_to_depth(y, 2)
    y = tf.nn.relu(tf.nn.conv2d(y, w, 1, "VALID") + b)
    return tf.nn.conv2d(y, w2, 1, "VALID")
def save(fn, name, shape, full_int8=False):
    f = tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    if full_int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.uniform(0, 255, shape).astype(np.float32)] for _ in range(50))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
    open(f"{out}/{name}.tflite", "wb").write(conv.convert())
sym = [[0, 0], [2, 2], [2, 2], [0, 0]]
save(lambda x: body(x, sym, 127.5), "padv2", [N, H, W, C])
save(lambda x: body(x, sym, 0.0), "pad0", [N, H, W, C])
save(lambda x: body(x, [[0, 0], [1, 3], [2, 2], [0, 0]], 127.5), "asymmetric", [N, H, W, C])
save(lambda x: body(x, sym, 127.5), "int8", [1, H, W, C], full_int8=True)
# the normalisation as a 1 x 1 conv (one channel) before a zero pad: the 1 x 1-conv form
a = np.full((1, 1, 1, 1), 1 / 127.5, np.float32)
def conv_form(x):
    y = tf.nn.conv2d(x, a, 1, "VALID") - 1.0
    y = tf.nn.space_to_depth(tf.pad(y, sym), 2)
    return tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(y, w[:, :, :4], 1, "VALID") + b), w2, 1, "VALID")
save(conv_form, "int8conv", [1, H, W, 1], full_int8=True)
"""

RUN = r"""
import json, shutil, sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
from lenet_edge.quantize.tflite_front import rewrite
from lenet_edge.quantize.litert_search import _kind, _schema
d = sys.argv[1]
def run(path, x):
    it = Interpreter(model_path=path); it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(i["index"], x.astype(i["dtype"])); it.invoke()
    y = it.get_tensor(o["index"]).astype(np.float64)
    if o["dtype"] != np.float32:
        s, z = o["quantization"]; y = (y - z) * s
    return y, str(np.dtype(i["dtype"]))
def kinds(path):
    _, fbu = _schema(); m = fbu.read_model(path)
    return [_kind(m, op) for op in m.subgraphs[0].operators]
rng = np.random.default_rng(1)
res = {}
for name in ("padv2", "pad0", "asymmetric"):
    src, dst = f"{d}/{name}.tflite", f"{d}/{name}.out.tflite"
    before = open(src, "rb").read()
    x = rng.integers(0, 256, (3, 10, 14, 2)).astype(np.float32)
    done = rewrite(__import__("pathlib").Path(src), __import__("pathlib").Path(dst), "pad-into-conv")
    same = open(src, "rb").read() == before
    entry = {"done": done, "source_untouched": same, "written": __import__("os").path.exists(dst)}
    if done["changed"]:
        a, _ = run(src, x); b, _ = run(dst, x)
        entry.update(max_abs_diff=float(np.abs(a - b).max()), kinds=kinds(dst), scale=float(np.abs(a).max()))
    res[name] = entry
refused = rewrite(__import__("pathlib").Path(f"{d}/padv2.tflite"), __import__("pathlib").Path(f"{d}/no.tflite"), "float-front")
res["float_front_on_float"] = {"done": refused, "written": __import__("os").path.exists(f"{d}/no.tflite")}
for name, c in (("int8", 2), ("int8conv", 1)):
    src, dst = f"{d}/{name}.tflite", f"{d}/{name}.mixed.tflite"
    done = rewrite(__import__("pathlib").Path(src), __import__("pathlib").Path(dst), "float-front")
    xs = rng.integers(0, 256, (20, 1, 10, 14, c))
    a = np.stack([run(src, x)[0] for x in xs]); b = np.stack([run(dst, x)[0] for x in xs])
    _, in_dtype = run(dst, xs[0])
    step = float(np.abs(a).max()) / 127
    res[name] = {"done": done, "kinds": kinds(dst), "source_kinds": kinds(src), "input": in_dtype,
                 "max_abs_diff_steps": float(np.abs(a - b).max()) / step}
print(json.dumps(res))
"""


def test_tflite_front_passes_on_synthetic_graphs(tmp_path):
    made = subprocess.run(
        [str(TFLITE_PY), "-c", MAKE, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert made.returncode == 0, made.stderr[-2000:]
    proc = subprocess.run(
        [str(DEVICE_PY), "-c", RUN, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    v2 = res["padv2"]
    assert v2["done"]["changed"] and v2["done"]["op"] == "ADD" and v2["done"]["pad_value"] == 127.5
    assert "PADV2" not in v2["kinds"] and v2["kinds"][:2] == ["ADD", "SPACE_TO_DEPTH"]
    assert v2["max_abs_diff"] <= 1e-5 * max(1.0, v2["scale"]), v2  # float32 rounding of logits ~1e2
    p0 = res["pad0"]  # a zero pad needs no shift: the pad op is gone and nothing takes its place
    assert p0["done"]["changed"] and p0["done"]["op"] == "none" and p0["kinds"][0] == "SPACE_TO_DEPTH"
    assert p0["max_abs_diff"] <= 1e-5 * max(1.0, p0["scale"])
    asym = res["asymmetric"]  # refused, and says why; the source is untouched, nothing written
    assert not asym["done"]["changed"] and "same pad" in asym["done"]["why"]
    assert asym["source_untouched"] and not asym["written"]
    ff = res["float_front_on_float"]  # a float graph has no int8 front: refused, nothing written
    assert not ff["done"]["changed"] and "not QUANTIZEd" in ff["done"]["why"] and not ff["written"]
    for name in ("int8", "int8conv"):
        i8 = res[name]
        assert i8["done"]["changed"] and i8["done"]["then"][0]["changed"] and i8["input"] == "float32"
        assert i8["kinds"][:4] == ["ADD", "SPACE_TO_DEPTH", "CONV_2D", "QUANTIZE"], i8
        assert i8["max_abs_diff_steps"] <= 3, i8  # the front's roundings gone, the rest unchanged
    # the 1 x 1 conv form: its conv folded into an ADD after its zero pad was dropped
    conv = res["int8conv"]
    assert conv["source_kinds"][:3] == ["QUANTIZE", "CONV_2D", "PAD"], conv["source_kinds"]
    assert conv["done"]["then"][0]["op"] == "none" and conv["done"]["then"][1]["changed"]
    assert len(conv["kinds"]) == len(conv["source_kinds"]) - 1
