"""ONNX -> TFLite with onnx2tf, wrapped once: ours from the optimized graph, stock beside them.

Reads build/onnx/<model>.fp32.onnx (+ export record) and the committed calibration subset; writes
<model>.fp32.tflite, <model>.int8.full.tflite (uint8 input), <model>.int8.dynamic.tflite (int8
weights, float activations; LiteRT only) from the optimize passes' graph, the stock conversions
<model>.stock.{fp32,fp16,int8.dynamic,int8.full}.tflite of the plain graph (for the benchmark),
and a .tflite.json record. onnx2tf runs in its own environment (.venv-tflite: TensorFlow 2.19,
onnx 1.19.1) as a subprocess, on a copy of the input (it overwrites its input file), with a few
fixed flags. Files are converted and checked in a staging folder and published only if they pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.quantize.calibration import Calibration
from lenet_edge.runtime.cli import parser, path_arg
from lenet_edge.runtime.contract import INPUT_NAME
from lenet_edge.runtime.errors import ConversionError, LenetEdgeError
from lenet_edge.runtime.files import (
    owned_temp_dir,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from lenet_edge.runtime.numeric import exceeds, falls_below, max_abs_diff
from lenet_edge.workflow import add_model_flags, selected

ROOT = Path(__file__).resolve().parent.parent
TFLITE_VENV = ROOT / ".venv-tflite"
DEVICE_VENV = ROOT / ".venv-device"


# The optimize passes per TFLite target: the space-to-depth first conv (a 1-channel int8 conv is
# XNNPACK's worst case: stock full-int8 ran 3.9x / 3.0x LiteRT FP32 on a Xeon, see README), with
# the pool's phase max as DepthToSpace + the 2x2 max-pool (two TFLite ops; Split + Max, the first
# form onnx2tf converted, became seven); the flatten stated in NHWC order and MatMul + Add as
# Gemm, so onnx2tf emits no TRANSPOSE before the flatten and fuses each bias and ReLU into its
# FULLY_CONNECTED (docs/tflite.md has the measurements). The normalisation is folded into that
# conv, for full-int8 too: its Pad value 127.5 then lands on the int8 input grid as 127 (a border
# half a grey level off), and the 1x1 normalisation conv it replaces ran outside XNNPACK in
# tflite-runtime and was the slowest int8 op in LiteRT (lenet_pool full-int8 in LiteRT 21.0 ->
# 11.3 us on the Xeon). Its checks decide: once (another training) the folded file failed them
# (McNemar p 0.004), so the 1x1-conv form ("int8" below) is converted beside it and published
# instead when the folded one fails and it passes. The exact fold (fold-normalisation-exact: zero
# padding + a per-position bias map) is mis-converted by onnx2tf 1.29.24 (the constant Add
# confuses its NCHW->NHWC tracking: "Depth of input (14) is not a multiple of ... (6)").
NHWC_PASSES = ("s2d-conv-pool-d2s", "s2d-conv-stride2", "flatten-nhwc", "matmul-add-to-gemm")
PASSES = {
    "float": ("fold-normalisation", "drop-redundant-relu", *NHWC_PASSES),
    "int8": ("drop-redundant-relu", *NHWC_PASSES),
    "stock": (),
}


def tflite_source(
    fp32: Path, data_dir: Path | None = None, atol: float = 1e-4, target: str = "float"
) -> bytes:
    """The graph onnx2tf gets for `target` (PASSES), checked equal to the export on all test
    images: cleaned, then the target's passes; the normalisation becomes a 1x1 Conv unless a pass
    folded it. onnx2tf fails on the export's leading scalar Add/Mul (a tf.nn.convolution error).
    The stock source is the least a conversion needs."""
    import onnx
    import onnxslim

    from lenet_edge.export.variants import normalisation_as_conv
    from lenet_edge.runtime.contract import to_pixels
    from lenet_edge.runtime.mnist import load_split
    from lenet_edge.runtime.runner import OnnxRunner

    model = onnxslim.slim(onnx.load(str(fp32)))
    if not any(p.startswith("fold-normalisation") for p in PASSES[target]):
        model = normalisation_as_conv(model)
    if PASSES[target]:
        from lenet_edge.optimize.stage import apply_passes

        model, _ = apply_passes(model, PASSES[target])
        model = onnxslim.slim(model)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    pixels = to_pixels(load_split("test", data_dir).images)
    ref, got = OnnxRunner(fp32).predict_batched(pixels), OnnxRunner(data).predict_batched(pixels)
    diff = max_abs_diff(ref, got)
    if exceeds(diff, atol) or not np.array_equal(ref.argmax(1), got.argmax(1)):
        raise ConversionError(f"{fp32}: TFLite source graph differs from the export (max |Δ| {diff:.3g})")
    return data


def source_sha256() -> str:
    """Hash of the TFLite conversion and everything it imports."""
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("quantize.tflite")


def is_up_to_date(fp32: Path, out_dir: Path, name: str, calibration: Calibration) -> bool:
    """Same export bytes, calibration subset and code, outputs unchanged, and checked in both interpreters."""
    from lenet_edge.runtime.files import read_json

    rec_path = out_dir / f"{name}.tflite.json"
    if not (rec_path.is_file() and fp32.is_file()):
        return False
    try:
        r = read_json(rec_path)
        return (
            r["source"]["export_sha256"] == sha256_file(fp32)
            and r["calibration"]["sha256"] == calibration.sha256
            and r.get("source_sha256") == source_sha256()
            and "checks" in r
            and all(
                (out_dir / o["file"]).is_file() and sha256_file(out_dir / o["file"]) == o["sha256"]
                for o in r["outputs"].values()
            )
        )
    except (KeyError, LenetEdgeError):
        return False


# onnx2tf's output files -> ours. Stock files (the export converted with nothing but what onnx2tf
# needs) are made beside ours so that the benchmark compares both in one run.
OUTPUTS = {
    "fp32": ("float", "model_float32.tflite"),
    "int8.dynamic": ("float", "model_dynamic_range_quant.tflite"),
    "int8.full": ("float", "model_full_integer_quant.tflite"),
}
# The full-int8 file with the normalisation as a 1x1 conv: published as int8.full only if the
# folded one fails its checks and this one passes (never under its own name).
FALLBACK = "int8.full.conv"
# The folded full-int8 file is published only if it also agrees with FP32 on >= 99.9 % of the test
# images (issue 12's bar for a rewrite's INT8 artifact; results/tolerances.json asks 99.8 %)
FOLD_AGREEMENT_MIN = 0.999
FALLBACK_OUTPUTS = {FALLBACK: ("int8", "model_full_integer_quant.tflite")}
# full-int8 files whose FULLY_CONNECTED weights become per-tensor (quantize/tflite_edit.py)
FC_PER_TENSOR = ("int8.full", FALLBACK)
# Each full-int8 form gets two float-front twins (quantize/tflite_front.py), one per reach: the
# input through the first spatial conv in float, the rest int8 (<model>.int8.mixed.tflite), and
# through the last conv of the leading conv/pool chain, only the layers after it (the fully
# connected ones) int8 (<model>.int8.fc.tflite; made only where that reaches past the first
# conv). The twins of the published form are published, each checked like the full-int8 file
# (tolerances and the rewrite's 99.9 % agreement); which one a target runs is `select`'s
# measurement (XNNPACK 2.14: AVX2 kernels favour the first, AVX-512 ones the second).
# lenet-edge's FP32 and dynamic-range files (float activations) get the pad moved into their first
# conv (pad-into-conv), checked as before (FP32 against ONNX, dynamic-range against tolerances).
FRONTS = {"int8.mixed": "first", "int8.fc": "convs"}  # the folded form's twin -> its front's reach


def twin(form: str, tag: str) -> str:
    """The tag of full-int8 `form`'s twin `tag` (a FRONTS key): the 1x1-conv form's end in .conv."""
    return tag if form == "int8.full" else f"{tag}.conv"


TWINS = {form: [twin(form, t) for t in FRONTS] for form in ("int8.full", FALLBACK)}
# what each file of the 1x1-conv form is published as when that form is chosen
AS_FOLDED = {FALLBACK: "int8.full", **{twin(FALLBACK, t): t for t in FRONTS}}
PAD_INTO_CONV = ("fp32", "int8.dynamic")
STOCK_OUTPUTS = {
    "stock.fp32": ("stock", "model_float32.tflite"),
    "stock.fp16": ("stock", "model_float16.tflite"),
    "stock.int8.dynamic": ("stock", "model_dynamic_range_quant.tflite"),
    "stock.int8.full": ("stock", "model_full_integer_quant.tflite"),
}


@contextmanager
def _onnx2tf(
    source: bytes, calibration: Calibration, data_dir: Path | None, venv: Path, label: str
) -> Iterator[tuple[Path, list[str]]]:
    """Run onnx2tf once on `source` in an owned temp folder; yield (its output folder, command)."""
    onnx2tf = venv / "bin" / "onnx2tf"
    if not onnx2tf.is_file():
        raise ConversionError(f"{onnx2tf}: converter environment missing (run `make setup-tflite`)")
    with owned_temp_dir("tflite") as tmp:
        (tmp / "model.onnx").write_bytes(source)  # a copy: onnx2tf overwrites its input
        # Calibration in the converted model's layout (NHWC) and scale (raw 0..255 pixels: the
        # normalisation is inside the graph, so mean 0 and std 1).
        cal = calibration.pixels(data_dir).transpose(0, 2, 3, 1).astype(np.float32)
        np.save(tmp / "calib.npy", cal)
        if cal.shape[-1] == 3:
            # For any 3-channel input onnx2tf fetches 20 sample images from GitHub for its dummy
            # inference (download_test_image_data), which fails offline; it looks in its working
            # folder first, so it gets 20 of our own (0..1, as its file holds; it resizes them).
            np.save(
                tmp / "calibration_image_sample_data_20x128x128x3_float32.npy", cal[:20] / np.float32(255)
            )
        cmd = [
            str(onnx2tf),
            "-i",
            "model.onnx",
            "-o",
            "out",
            "-b",
            "1",
            "-oiqt",
            "-cind",
            INPUT_NAME,
            "calib.npy",
            "[[[[0.0]]]]",
            "[[[[1.0]]]]",
            "-iqd",
            "uint8",
            "-oqd",
            "float32",
            "-n",
        ]
        env = {
            **os.environ,
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }  # it calls onnxsim
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "rror" in ln] or [
                "no error text"
            ]
            raise ConversionError(f"{label}: onnx2tf failed (exit {proc.returncode}): {lines[-1][:300]}")
        yield tmp / "out", cmd


def convert_tflite(
    fp32: Path,
    out_dir: Path,
    calibration: Calibration,
    data_dir: Path | None = None,
    venv: Path = TFLITE_VENV,
    device_venv: Path = DEVICE_VENV,
) -> dict[str, Any]:
    """Convert the optimized source (ours) and the stock source into `out_dir` (a staging folder);
    the full-int8 files get per-tensor FULLY_CONNECTED weights (in the device environment)."""
    from lenet_edge.quantize.ort_quant import load_fp32

    _, exp_rec = load_fp32(fp32)  # our export, unchanged since, honouring the contract
    name = exp_rec["model"]
    outputs: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    every = {**OUTPUTS, **STOCK_OUTPUTS, **FALLBACK_OUTPUTS}
    for target, passes in PASSES.items():
        source = tflite_source(fp32, data_dir, target=target)
        wanted = {tag: f for tag, (t, f) in every.items() if t == target}
        with _onnx2tf(source, calibration, data_dir, venv, f"{fp32} ({target} source)") as (made, cmd):
            missing = [f for f in wanted.values() if not (made / f).is_file()]
            if missing:
                raise ConversionError(f"{fp32}: onnx2tf wrote no {', '.join(missing)}")
            for tag, f in wanted.items():
                dest = out_dir / f"{name}.{tag}.tflite"
                shutil.copyfile(made / f, dest)
                extra: dict[str, Any] = {}
                if tag in FC_PER_TENSOR:
                    extra["fc_weights_per_tensor"] = _fc_per_tensor_in_device_env(dest, device_venv)
                if tag in PAD_INTO_CONV:
                    extra["pad_into_conv"] = _front_in_device_env("pad-into-conv", [dest], device_venv)
                outputs[tag] = _output(dest, target, extra)
                for front, reach in FRONTS.items() if tag in TWINS else ():
                    mixed_tag = twin(tag, front)
                    mixed = out_dir / f"{name}.{mixed_tag}.tflite"
                    done = _front_in_device_env("float-front", [dest, mixed], device_venv, ["--reach", reach])
                    if done["changed"]:
                        outputs[mixed_tag] = _output(mixed, target, {"float_front": done, "from": tag})
                    else:  # a graph the pass does not match (a depthwise layer next): no twin, and why
                        outputs[tag].setdefault("float_front", {})[mixed_tag] = done
        sources[target] = {
            "passes": list(passes),
            "normalisation": "folded into the first conv"
            if any(p.startswith("fold-normalisation") for p in passes)
            else "a 1x1 Conv",
            "sha256": sha256_bytes(source),
            "command": " ".join(cmd),
        }
    return {
        "model": name,
        "source": {"export": fp32.name, "export_sha256": exp_rec["onnx_sha256"], **sources},
        "converter": "onnx2tf 1.29.24 (TensorFlow 2.19.0)",
        "source_sha256": source_sha256(),
        "calibration": {
            "sha256": calibration.sha256,
            "images": int(calibration.indices.size),
            "layout": "NHWC",
            "scale": "raw pixels 0..255 (mean 0, std 1)",
        },
        "int8_input": "full-int8: uint8, scale 1, zero point 0: raw camera bytes, no float conversion",
        "outputs": outputs,
    }


def _output(path: Path, target: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "stock": target == "stock",
        "source": target,
        **extra,
    }


def _settle_int8_full(staged: Path, name: str, rec: dict[str, Any]) -> None:
    """The checked full-int8 form becomes <name>.int8.full.tflite and its float-front twins
    <name>.int8.mixed.tflite and <name>.int8.fc.tflite; the other form's files are not published."""
    chosen = rec.get("int8_full_form", {}).get("file") == FALLBACK
    if chosen:  # the folded form's twins go with their form (the conv form's, if made, take their names)
        for tag in TWINS["int8.full"]:
            rec["outputs"].pop(tag, None)
    for tag, dest in AS_FOLDED.items():
        out = rec["outputs"].pop(tag, None)
        if out is not None and chosen:
            os.replace(staged / out["file"], staged / f"{name}.{dest}.tflite")
            rec["outputs"][dest] = {**out, "file": f"{name}.{dest}.tflite"}


def publish(staged: Path, out_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Move checked .tflite files from the staging folder into place (each an atomic rename of
    a complete copy), then write the record that vouches for them (by sha256). A float-front twin
    of an earlier run that this record has no twin for (the pass did not match this time) is
    removed after the record is written: no file stays in the folder that no record vouches for."""
    for o in record["outputs"].values():
        write_bytes_atomic(out_dir / o["file"], (staged / o["file"]).read_bytes())
    write_json_atomic(out_dir / f"{name}.tflite.json", record)
    for tag in FRONTS:
        if tag not in record["outputs"]:
            (out_dir / f"{name}.{tag}.tflite").unlink(missing_ok=True)


INTERPRETERS = ("ai-edge-litert", "tflite-runtime")


def _json_from_device_env(module: str, args: list[str], venv: Path, what: str, **env: str) -> Any:
    """`python -m module args` in the device-like environment (numpy 1.26, both interpreters,
    LiteRT's flatbuffer tools), in the user's folder with the package found as the timing
    children find it; its last stdout line, as JSON. A failure is one ConversionError naming `what`."""
    import json

    py = venv / "bin" / "python"
    if not py.is_file():
        raise ConversionError(f"{py}: device environment missing (run `make setup-device`)")
    from lenet_edge.runtime.bench import child_env

    proc = subprocess.run(
        [str(py), "-m", module, *args],
        env={**child_env(), **env},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode < 0:
            last = f"killed by signal {-proc.returncode} ({last})"
        raise ConversionError(f"{what} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fc_per_tensor_in_device_env(path: Path, venv: Path) -> list[dict[str, Any]]:
    """quantize.tflite_edit on `path` (rewritten in place) in the device environment."""
    from lenet_edge.quantize import tflite_edit

    what = f"{path.name}: per-tensor FULLY_CONNECTED weights"
    return _json_from_device_env(tflite_edit.__name__, ["--", str(path)], venv, what)


def _front_in_device_env(
    which: str, paths: list[Path], venv: Path, flags: list[str] | None = None
) -> dict[str, Any]:
    """quantize.tflite_front `which` (with `flags`) on `paths` in the device environment."""
    from lenet_edge.quantize import tflite_front

    what = f"{paths[0].name}: {which}"
    args = [which, *(flags or []), "--", *map(str, paths)]
    return _json_from_device_env(tflite_front.__name__, args, venv, what)


def _evaluate_in_device_env(
    models: list[Path], against: Path, interpreter: str, venv: Path, data: Path | None = None
) -> dict[str, Any]:
    """runtime.evaluate in the device-like environment, in `interpreter`; paths stay as given."""
    # options as --opt=value and the models after "--": a path beginning with "-" stays a path
    opts = ["--json=-", f"--against={against}"] + ([f"--data-dir={data}"] if data is not None else [])
    args = [*opts, "--", *map(str, models)]
    what = f"{interpreter}: evaluation"
    return _json_from_device_env("runtime.evaluate", args, venv, what, LENET_EDGE_TFLITE=interpreter)


def _int8_entry(fp: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    from lenet_edge.quantize.stats import mcnemar_exact

    return {
        "top1": q["top1"],
        "top2": q["top2"],
        "agreement_with_fp32": q["agreement"],
        "accuracy_drop_pp": round(100 * (fp["top1"] - q["top1"]), 4),
        "mcnemar": mcnemar_exact(np.array(fp["correct"], bool), np.array(q["correct"], bool)),
    }


def check_tflite(
    name: str,
    onnx_dir: Path,
    tol: dict[str, Any],
    venv: Path = DEVICE_VENV,
    tflite_dir: Path | None = None,
    data: Path | None = None,
) -> dict[str, Any]:
    """TFLite FP32 vs ONNX FP32, TFLite INT8 vs FP32, ORT INT8 vs TFLite INT8, in both interpreters;
    the dynamic-range file in ai-edge-litert only (tflite-runtime 2.14 cannot load TF 2.19's
    dynamic-range op versions). Stock files are evaluated and reported, never failed. The
    full-int8 file is the folded one if it passes in both interpreters, else the 1x1-conv form
    (FALLBACK) if that one passes ("int8_full_form" says which, and why).

    The .tflite files are read from `tflite_dir` (the staging folder, before they are published)."""
    tflite_dir = tflite_dir or onnx_dir
    fp32_onnx = onnx_dir / f"{name}.fp32.onnx"
    every = (*OUTPUTS, *STOCK_OUTPUTS, FALLBACK, *TWINS["int8.full"], *TWINS[FALLBACK])
    f = {tag: tflite_dir / f"{name}.{tag}.tflite" for tag in every}
    forms = ["int8.full"] + ([FALLBACK] if f[FALLBACK].is_file() else [])
    int8_tags = forms + [m for t in forms for m in TWINS[t] if f[m].is_file()]
    ort_int8 = onnx_dir / f"{name}.int8.qdq.onnx"
    checks: dict[str, Any] = {}
    failures: list[str] = []
    int8_failed: dict[str, list[str]] = {t: [] for t in int8_tags}
    for interp in INTERPRETERS:
        litert = interp == "ai-edge-litert"
        tags = ["fp32", *int8_tags] + (["int8.dynamic", *STOCK_OUTPUTS] if litert else [])
        files = [f[t] for t in tags] + ([ort_int8] if ort_int8.is_file() else [])
        res = _evaluate_in_device_env(files, fp32_onnx, interp, venv, data)
        fp = res[str(f["fp32"])]
        entry: dict[str, Any] = {
            "fp32": {
                "top1": fp["top1"],
                "top2": fp["top2"],
                "max_abs_diff_vs_onnx": fp["max_abs_diff"],
                "agreement_with_onnx": fp["agreement"],
            },
            **{_key(t): _int8_entry(fp, res[str(f[t])]) for t in int8_tags},
            "int8_dynamic": _int8_entry(fp, res[str(f["int8.dynamic"])])
            if litert
            else "not loadable by tflite-runtime 2.14 (TF 2.19 op versions); LiteRT only",
        }
        if litert:
            entry["stock"] = {
                t: {"top1": res[str(f[t])]["top1"], "agreement_with_fp32_onnx": res[str(f[t])]["agreement"]}
                for t in STOCK_OUTPUTS
            }
        if str(ort_int8) in res:
            o8 = np.array(res[str(ort_int8)]["correct"], bool)
            for t in int8_tags:
                same = float((o8 == np.array(res[str(f[t])]["correct"], bool)).mean())
                entry[_cross_key(t)] = same
        checks[interp] = entry
        if exceeds(fp["max_abs_diff"], tol["tflite_fp32_max_abs_diff"]) or fp["agreement"] != 1.0:
            failures.append(
                f"{name} {interp}: TFLite FP32 vs ONNX max |Δ| {fp['max_abs_diff']:.2e}, "
                f"agreement {100 * fp['agreement']:.2f} %"
            )
        for t in int8_tags:
            int8_failed[t] += _int8_failures(name, interp, t, entry[_key(t)], f, tol)
        if litert:
            failures += _int8_failures(name, interp, "int8.dynamic", entry["int8_dynamic"], f, tol)
    bar = [  # the fold is a rewrite: its INT8 file should also agree with FP32 on >= 99.9 %
        f"{name} ({interp} int8.full): agreement with FP32 {100 * c['int8_full']['agreement_with_fp32']:.2f} % "
        f"< {100 * FOLD_AGREEMENT_MIN:.1f} % (a rewrite's bar)"
        for interp, c in checks.items()
        if falls_below(c["int8_full"]["agreement_with_fp32"], FOLD_AGREEMENT_MIN)
    ]
    folded, conv = int8_failed["int8.full"], int8_failed.get(FALLBACK)
    form = {"file": "int8.full", "normalisation": "folded into the first conv"}
    if (folded or bar) and conv == []:
        form = {
            "file": FALLBACK,
            "normalisation": "as a 1x1 Conv",
            "why": "folded: " + "; ".join(folded + bar),
        }
    elif folded:
        failures += folded
    elif bar:
        form["why"] = (
            "; ".join(bar)
            + " (the 1x1-conv form failed its checks too: "
            + "; ".join(conv or ["not made"])
            + ")"
        )
    # the published form's float-front twins must pass as its form did: tolerances, and the
    # rewrite's bar unless the form itself was published under it (its "why" says so)
    waived = form["file"] == "int8.full" and "why" in form
    for mixed in (m for m in TWINS[form["file"]] if m in int8_failed):
        failures += int8_failed[mixed] + [
            f"{name} ({interp} {mixed}): agreement with FP32 {100 * c[_key(mixed)]['agreement_with_fp32']:.2f} % "
            f"< {100 * FOLD_AGREEMENT_MIN:.1f} % (a rewrite's bar)"
            for interp, c in checks.items()
            if not waived and falls_below(c[_key(mixed)]["agreement_with_fp32"], FOLD_AGREEMENT_MIN)
        ]
    if form["file"] == FALLBACK:  # "int8_full" is what is published; the other form stays as evidence
        for c in checks.values():
            for tag, folded in AS_FOLDED.items():
                if _key(tag) in c:
                    c[_key(folded)], c[_key(folded) + "_folded"] = c.pop(_key(tag)), c.get(_key(folded))
                    c[_cross_key(folded)] = c.pop(_cross_key(tag), None)
                elif _key(folded) in c:  # no twin of the conv form: the folded one's is evidence only
                    c[_key(folded) + "_folded"] = c.pop(_key(folded))
                    c.pop(_cross_key(folded), None)
    return {"checks": checks, "failures": failures, "int8_full_form": form}


def _key(tag: str) -> str:
    return tag.replace(".", "_")  # int8.full -> int8_full (the record's keys)


def _cross_key(tag: str) -> str:
    return f"ort_int8_vs_tflite_{'int8' if tag == 'int8.full' else _key(tag)}_same_correctness"


def _int8_failures(
    name: str, interp: str, tag: str, entry: dict[str, Any], f: dict[str, Path], tol: dict[str, Any]
) -> list[str]:
    from lenet_edge.quantize.checks import int8_failures

    fake = {
        "model": f"{name} ({interp} {tag})",
        "accuracy_drop_pp": entry["accuracy_drop_pp"],
        "agreement_with_fp32": entry["agreement_with_fp32"],
        "mcnemar": {"p_new_worse": entry["mcnemar"]["p_new_worse"]},
        "size_ratio_vs_fp32": f[tag].stat().st_size / f["fp32"].stat().st_size,
    }
    dynamic = tag == "int8.dynamic"
    return int8_failures(
        fake, {**tol, "int8_size_ratio_max": tol["int8_dynamic_size_ratio_max"]} if dynamic else tol
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lenet_edge.quantize.calibration import calibration_of
    from lenet_edge.quantize.checks import tolerances_for
    from lenet_edge.runtime.files import read_json
    from lenet_edge.workflow import data_source

    p = parser("quantize.tflite", __doc__)
    add_model_flags(p)
    p.add_argument(
        "--onnx-dir", type=path_arg, default=Path("build/onnx"), help="input ONNX and output .tflite folder"
    )
    p.add_argument("--data-dir", type=path_arg, default=None)
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check the .tflite files in both interpreters against ONNX (default on)",
    )
    args = p.parse_args(argv)
    names = selected(args.model, args.workflow)
    failures = []
    for name in names:
        # the model's own data, calibration subset and tolerances (its workflow's)
        data = args.data_dir or data_source(name)
        calibration = calibration_of(name, data)
        tol = tolerances_for(name)
        fp32 = args.onnx_dir / f"{name}.fp32.onnx"
        if is_up_to_date(fp32, args.onnx_dir, name, calibration):
            rec = read_json(args.onnx_dir / f"{name}.tflite.json")
            print(f"{name}: .tflite files up to date (same export, calibration, code); checked when made:")
            for interp, c in rec["checks"].items():
                print(
                    f"  {interp}: FP32 max |Δ| {c['fp32']['max_abs_diff_vs_onnx']:.1e}, full-int8 drop "
                    f"{c['int8_full']['accuracy_drop_pp']:+.2f} pp, agreement {100 * c['int8_full']['agreement_with_fp32']:.2f} %"
                )
            failures += rec["failures"]
            continue
        with owned_temp_dir("tflite-stage") as staged:
            rec = convert_tflite(fp32, staged, calibration, data)
            outs = ", ".join(f"{o['file']} {o['bytes']:,} B" for o in rec["outputs"].values())
            print(f"{name}: {outs}")
            res = check_tflite(name, args.onnx_dir, tol, tflite_dir=staged, data=data) if args.check else None
            if res is not None and res["failures"]:
                # checked before publishing: the previous .tflite files and record stay as they were
                failures += [f"{f} (nothing written)" for f in res["failures"]]
                continue
            if res is not None:
                rec.update(res)
            _settle_int8_full(staged, name, rec)
            publish(staged, args.onnx_dir, name, rec)
        if res is not None:
            form = res["int8_full_form"]
            print(
                f"  full-int8: normalisation {form['normalisation']}"
                + (f" ({form['why']})" if "why" in form else "")
            )
            for interp, c in res["checks"].items():
                f, i = c["fp32"], c["int8_full"]
                cross = c.get("ort_int8_vs_tflite_int8_same_correctness")
                print(
                    f"  {interp}: FP32 top-1 {100 * f['top1']:.2f} % (vs ONNX max |Δ| {f['max_abs_diff_vs_onnx']:.1e}, "
                    f"agreement {100 * f['agreement_with_onnx']:.2f} %); full-int8 top-1 {100 * i['top1']:.2f} % "
                    f"(drop {i['accuracy_drop_pp']:+.2f} pp, agreement {100 * i['agreement_with_fp32']:.2f} %, "
                    f"McNemar p {i['mcnemar']['p_new_worse']:.2g})"
                    + (
                        f"; ORT INT8 and TFLite INT8 right/wrong on the same images: {100 * cross:.2f} %"
                        if cross
                        else ""
                    )
                    + "".join(
                        f"; float-front twin {t} top-1 {100 * c[_key(t)]['top1']:.2f} % "
                        f"(agreement {100 * c[_key(t)]['agreement_with_fp32']:.2f} %)"
                        for t in FRONTS
                        if _key(t) in c
                    )
                    + (
                        f"; dynamic-range top-1 {100 * c['int8_dynamic']['top1']:.2f} % "
                        f"(drop {c['int8_dynamic']['accuracy_drop_pp']:+.2f} pp)"
                        if isinstance(c.get("int8_dynamic"), dict)
                        else ""
                    )
                )
            failures += res["failures"]
    if failures:
        raise ConversionError("; ".join(failures))
    return 0


if __name__ == "__main__":
    import sys

    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
