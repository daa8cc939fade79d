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
# a chain of convs and a max pool, then dense layers: --reach convs takes it all but the dense ones
w3 = rng.normal(0, 0.3, (3, 3, O, 4)).astype(np.float32)
d1 = rng.normal(0, 0.3, (48, 6)).astype(np.float32)
def chain(x):
    y = tf.nn.space_to_depth(tf.pad(x, sym, constant_values=127.5), 2)
    y = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(y, w, 1, "VALID") + b), 2, 2, "VALID")
    y = tf.nn.relu(tf.nn.conv2d(y, w3, 1, "SAME"))
    return tf.matmul(tf.reshape(y, [-1, 48]), d1)
save(chain, "chain", [1, 14, 18, C], full_int8=True)
save(chain, "chain_float", [1, 14, 18, C])
def one(x):  # one spatial conv before the dense layer: nothing more for --reach convs to take
    y = tf.nn.relu(tf.nn.conv2d(tf.nn.space_to_depth(tf.pad(x, sym), 2), w, 1, "VALID") + b)
    return tf.matmul(tf.reshape(y, [-1, 5 * 7 * O]), rng.normal(0, 0.3, (5 * 7 * O, 3)).astype(np.float32))
save(one, "one", [1, H, W, C], full_int8=True)
"""

RUN = r"""
import json, shutil, sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
from lenet_edge.quantize.tflite_front import rewrite
from lenet_edge.quantize.flatbuffer import litert_schema, op_kind
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
    _, fbu = litert_schema(); m = fbu.read_model(path)
    return [op_kind(m, op) for op in m.subgraphs[0].operators]
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
for name, c, reach, hw in (("int8", 2, "first", (10, 14)), ("int8conv", 1, "first", (10, 14)),
                           ("chain", 2, "convs", (14, 18)), ("int8", 2, "convs", (10, 14))):
    src, dst = f"{d}/{name}.tflite", f"{d}/{name}.{reach}.tflite"
    done = rewrite(__import__("pathlib").Path(src), __import__("pathlib").Path(dst), "float-front", reach)
    xs = rng.integers(0, 256, (20, 1, *hw, c))
    a = np.stack([run(src, x)[0] for x in xs]); b = np.stack([run(dst, x)[0] for x in xs])
    _, in_dtype = run(dst, xs[0])
    step = float(np.abs(a).max()) / 127
    res[name if reach == "first" else f"{name}.convs"] = {
        "done": done, "kinds": kinds(dst), "source_kinds": kinds(src), "input": in_dtype,
        "max_abs_diff_steps": float(np.abs(a - b).max()) / step,
        "bytes": __import__("os").path.getsize(dst), "source_bytes": __import__("os").path.getsize(src)}
    if name == "chain":  # against the float graph: the twin lost roundings, it gained no error
        f = np.stack([run(f"{d}/chain_float.tflite", x)[0] for x in xs])
        res["chain.convs"].update(int8_vs_float_steps=float(np.abs(a - f).max()) / step,
                                  twin_vs_float_steps=float(np.abs(b - f).max()) / step)
# int8 weights that no longer give the float ones back (a spoiled copy): those stay float
import lenet_edge.quantize.tflite_front as tfm
honest = tfm._weights_behind_dequantize
def spoiled(model, g, kept):
    return honest(model, g, {k: (((q.astype(np.int16) + 1) % 100).astype(np.int8), qp) for k, (q, qp) in kept.items()})
tfm._weights_behind_dequantize = spoiled
src = f"{d}/int8.tflite"
done = rewrite(__import__("pathlib").Path(src), __import__("pathlib").Path(f"{d}/spoiled.tflite"), "float-front")
x = rng.integers(0, 256, (1, 10, 14, 2))
res["spoiled"] = {"done": done, "kinds": kinds(f"{d}/spoiled.tflite"),
                  "same_as_int8_weights": float(np.abs(run(f"{d}/spoiled.tflite", x)[0] - run(f"{d}/int8.first.tflite", x)[0]).max())}
tfm._weights_behind_dequantize = honest
for name in ("one", "chain"):  # one spatial conv; reach first on the chain is not reach convs
    src, dst = f"{d}/{name}.tflite", f"{d}/{name}.refused.tflite"
    before = open(src, "rb").read()
    done = rewrite(__import__("pathlib").Path(src), __import__("pathlib").Path(dst), "float-front",
                   "convs" if name == "one" else "first")
    res[f"{name}.refusal"] = {"done": done, "written": __import__("os").path.exists(dst),
                              "source_untouched": open(src, "rb").read() == before,
                              "kinds": kinds(dst) if done["changed"] else None}
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
    for name in ("int8", "int8conv", "chain.convs", "int8.convs"):
        i8 = res[name]  # each front conv keeps its int8 weights, behind one DEQUANTIZE (run at load)
        lead = next(k for k, kind in enumerate(i8["kinds"]) if kind != "DEQUANTIZE")
        assert lead == i8["done"]["weights"]["int8_behind_dequantize"] >= 1, i8
        assert i8["done"]["weights"]["kept_float"] == [] and i8["bytes"] <= i8["source_bytes"] + 256, i8
        i8["kinds"] = i8["kinds"][lead:]
    for name in ("int8", "int8conv"):
        i8 = res[name]
        assert i8["done"]["changed"] and i8["done"]["then"][0]["changed"] and i8["input"] == "float32"
        assert i8["kinds"][:4] == ["ADD", "SPACE_TO_DEPTH", "CONV_2D", "QUANTIZE"], i8
        assert i8["max_abs_diff_steps"] <= 3, i8  # the front's roundings gone, the rest unchanged
    # the 1 x 1 conv form: its conv folded into an ADD after its zero pad was dropped
    conv = res["int8conv"]
    assert conv["source_kinds"][:3] == ["QUANTIZE", "CONV_2D", "PAD"], conv["source_kinds"]
    assert conv["done"]["then"][0]["op"] == "none" and conv["done"]["then"][1]["changed"]
    assert len(conv["kinds"]) == len(conv["source_kinds"]) - 1  # the leading DEQUANTIZEs aside
    # --reach convs: every conv of the chain (and its max pool) in float, the dense layer int8
    ch = res["chain.convs"]
    assert ch["done"]["changed"] and ch["done"]["reach"] == "convs" and ch["input"] == "float32"
    assert ch["done"]["front"].count("CONV_2D") == 2 and "MAX_POOL_2D" in ch["done"]["front"], ch
    q = ch["kinds"].index("QUANTIZE")
    assert ch["kinds"][q - 1] == "CONV_2D" and "FULLY_CONNECTED" in ch["kinds"][q + 1 :], ch["kinds"]
    assert ch["kinds"][:q].count("CONV_2D") == 2 and "MAX_POOL_2D" in ch["kinds"][:q]
    # the roundings of three int8 layers gone: the twin is nearer the float graph than the int8 file
    assert ch["twin_vs_float_steps"] <= ch["int8_vs_float_steps"] and ch["max_abs_diff_steps"] <= 6, ch
    assert res["int8.convs"]["done"]["front"].count("CONV_2D") == 2  # both convs of the pad graph
    assert res["int8.convs"]["done"]["weights"]["int8_behind_dequantize"] == 2
    one = res["one.refusal"]  # one spatial conv before the dense layer: refused, nothing written
    assert not one["done"]["changed"] and "same front as the first" in one["done"]["why"], one
    assert not one["written"] and one["source_untouched"]
    first = res["chain.refusal"]  # reach first on the chain: its first conv only
    assert first["done"]["front"].count("CONV_2D") == 1 and "MAX_POOL_2D" not in first["done"]["front"]
    sp = res["spoiled"]  # the check that keeps float weights when int8 would not give them back
    assert sp["done"]["weights"] == {"int8_behind_dequantize": 0, "kept_float": ["CONV_2D"]}, sp
    assert "DEQUANTIZE" not in sp["kinds"][:1] and sp["same_as_int8_weights"] <= 1e-6, sp
