"""ONNX -> TFLite (FP32 and full-integer INT8 with uint8 input) with onnx2tf, wrapped once.

Reads build/onnx/<model>.fp32.onnx (+ export record) and the committed calibration subset;
writes <model>.fp32.tflite and <model>.int8.full.tflite with a .tflite.json record. onnx2tf runs
in its own environment (.venv-tflite: TensorFlow 2.19, onnx 1.19.1) as a subprocess, on a copy
of the input (it overwrites its input file), with a few fixed flags.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from quantize.calibration import Calibration
from runtime.contract import INPUT_NAME
from runtime.errors import ConversionError, LenetEdgeError
from runtime.files import owned_temp_dir, sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic
from runtime.numeric import exceeds, max_abs_diff

ROOT = Path(__file__).resolve().parent.parent
TFLITE_VENV = ROOT / ".venv-tflite"


def tflite_source(fp32: Path, data_dir: Path | None = None, atol: float = 1e-4) -> bytes:
    """The graph onnx2tf gets: the export, cleaned, normalisation as a 1x1 Conv, checked equal.

    onnx2tf fails on the export's leading scalar Add/Mul (a tf.nn.convolution error), and the
    conv1-folded variant pads with 127.5, which full-integer TFLite cannot hold on a uint8 grid
    (measured: -0.08 pp, McNemar p 0.004 on lenet_pool).
    """
    import onnx
    import onnxslim

    from export.variants import normalisation_as_conv
    from runtime.contract import to_pixels
    from runtime.mnist import load_split
    from runtime.runner import OnnxRunner

    model = normalisation_as_conv(onnxslim.slim(onnx.load(str(fp32))))
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
    from runtime.files import code_sha256

    return code_sha256("quantize.tflite")


def is_up_to_date(fp32: Path, out_dir: Path, name: str, calibration: Calibration) -> bool:
    """Same export bytes, calibration subset and code, outputs unchanged, and checked in both interpreters."""
    from runtime.files import read_json

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


def convert_tflite(
    fp32: Path,
    out_dir: Path,
    calibration: Calibration,
    data_dir: Path | None = None,
    venv: Path = TFLITE_VENV,
) -> dict[str, Any]:
    from quantize.ort_quant import load_fp32

    _, exp_rec = load_fp32(fp32)  # our export, unchanged since, honouring the contract
    name = exp_rec["model"]
    source = tflite_source(fp32, data_dir)
    onnx2tf = venv / "bin" / "onnx2tf"
    if not onnx2tf.is_file():
        raise ConversionError(f"{onnx2tf}: converter environment missing (run `make setup-tflite`)")
    with owned_temp_dir("tflite") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "model.onnx").write_bytes(source)  # a copy: onnx2tf overwrites its input
        # Calibration in the converted model's layout (NHWC) and scale (raw 0..255 pixels: the
        # normalisation is inside the graph, so mean 0 and std 1).
        np.save(tmp / "calib.npy", calibration.pixels(data_dir).transpose(0, 2, 3, 1).astype(np.float32))
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
        made = {
            "fp32": tmp / "out" / "model_float32.tflite",
            "int8.full": tmp / "out" / "model_full_integer_quant.tflite",
        }
        missing = [p.name for p in made.values() if not p.is_file()]
        if proc.returncode != 0 or missing:
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "rror" in ln] or [
                "no error text"
            ]
            raise ConversionError(
                f"{fp32}: onnx2tf failed (exit {proc.returncode}, missing {missing}): {lines[-1][:300]}"
            )
        outputs = {}
        for tag, src in made.items():
            dest = out_dir / f"{name}.{tag}.tflite"  # out_dir is the caller's staging folder
            shutil.copyfile(src, dest)
            outputs[tag] = {"file": dest.name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size}
    record = {
        "model": name,
        "source": {
            "export": fp32.name,
            "export_sha256": exp_rec["onnx_sha256"],
            "graph": "onnxslim clean-up, normalisation as a 1x1 Conv (export.variants.normalisation_as_conv)",
            "sha256": sha256_bytes(source),
        },
        "converter": "onnx2tf 1.29.24 (TensorFlow 2.19.0)",
        "source_sha256": source_sha256(),
        "command": " ".join(cmd),
        "calibration": {
            "sha256": calibration.sha256,
            "images": int(calibration.indices.size),
            "layout": "NHWC",
            "scale": "raw pixels 0..255 (mean 0, std 1)",
        },
        "int8_input": "uint8, scale 1, zero point 0: raw camera bytes, no float conversion",
        "outputs": outputs,
    }
    return record


def publish(staged: Path, out_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Move checked .tflite files from the staging folder into place (each an atomic rename of
    a complete copy), then write the record that vouches for them (by sha256)."""
    for o in record["outputs"].values():
        write_bytes_atomic(out_dir / o["file"], (staged / o["file"]).read_bytes())
    write_json_atomic(out_dir / f"{name}.tflite.json", record)


DEVICE_VENV = ROOT / ".venv-device"
INTERPRETERS = ("ai-edge-litert", "tflite-runtime")


def _evaluate_in_device_env(
    models: list[Path], against: Path, interpreter: str, venv: Path
) -> dict[str, Any]:
    """Run runtime.evaluate in the device-like environment (numpy 1.26, both interpreters)."""
    import json

    py = venv / "bin" / "python"
    if not py.is_file():
        raise ConversionError(f"{py}: device environment missing (run `make setup-device`)")
    env = {**os.environ, "LENET_EDGE_TFLITE": interpreter, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(py), "-m", "runtime.evaluate", "--json", "--against", str(against), *map(str, models)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConversionError(f"{interpreter}: evaluation failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_tflite(
    name: str, onnx_dir: Path, tol: dict[str, Any], venv: Path = DEVICE_VENV, tflite_dir: Path | None = None
) -> dict[str, Any]:
    """TFLite FP32 vs ONNX FP32, TFLite INT8 vs FP32, ORT INT8 vs TFLite INT8, in both interpreters.

    The .tflite files are read from `tflite_dir` (the staging folder, before they are published)."""
    from quantize.checks import int8_failures
    from quantize.stats import mcnemar_exact

    tflite_dir = tflite_dir or onnx_dir
    fp32_onnx = onnx_dir / f"{name}.fp32.onnx"
    files = [tflite_dir / f"{name}.fp32.tflite", tflite_dir / f"{name}.int8.full.tflite"]
    ort_int8 = onnx_dir / f"{name}.int8.qdq.onnx"
    checks: dict[str, Any] = {}
    failures: list[str] = []
    for interp in INTERPRETERS:
        res = _evaluate_in_device_env(
            files + ([ort_int8] if ort_int8.is_file() else []), fp32_onnx, interp, venv
        )
        fp, i8 = res[str(files[0])], res[str(files[1])]
        fp32_correct, i8_correct = np.array(fp["correct"], bool), np.array(i8["correct"], bool)
        entry = {
            "fp32": {
                "top1": fp["top1"],
                "top2": fp["top2"],
                "max_abs_diff_vs_onnx": fp["max_abs_diff"],
                "agreement_with_onnx": fp["agreement"],
            },
            "int8_full": {
                "top1": i8["top1"],
                "top2": i8["top2"],
                "agreement_with_fp32": i8["agreement"],
                "accuracy_drop_pp": round(100 * (fp["top1"] - i8["top1"]), 4),
                "mcnemar": mcnemar_exact(fp32_correct, i8_correct),
            },
        }
        if str(ort_int8) in res:
            o8 = np.array(res[str(ort_int8)]["correct"], bool)
            entry["ort_int8_vs_tflite_int8_same_correctness"] = float((o8 == i8_correct).mean())
        checks[interp] = entry
        if exceeds(fp["max_abs_diff"], tol["tflite_fp32_max_abs_diff"]) or fp["agreement"] != 1.0:
            failures.append(
                f"{name} {interp}: TFLite FP32 vs ONNX max |Δ| {fp['max_abs_diff']:.2e}, "
                f"agreement {100 * fp['agreement']:.2f} %"
            )
        fake = {
            "model": f"{name} ({interp} full-int8)",
            "accuracy_drop_pp": entry["int8_full"]["accuracy_drop_pp"],
            "agreement_with_fp32": i8["agreement"],
            "mcnemar": {"p_new_worse": entry["int8_full"]["mcnemar"]["p_new_worse"]},
            "size_ratio_vs_fp32": files[1].stat().st_size / files[0].stat().st_size,
        }
        failures += int8_failures(fake, tol)
    return {"checks": checks, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from quantize.calibration import CALIBRATION_FILE, load_calibration
    from quantize.checks import load_tolerances
    from runtime.files import read_json

    p = argparse.ArgumentParser(prog="python -m quantize.tflite", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="all", choices=["lenet_pool", "lenet_stride", "all"])
    p.add_argument(
        "--onnx-dir", type=Path, default=Path("build/onnx"), help="input ONNX and output .tflite folder"
    )
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check the .tflite files in both interpreters against ONNX (default on)",
    )
    args = p.parse_args(argv)
    names = ["lenet_pool", "lenet_stride"] if args.model == "all" else [args.model]
    calibration = load_calibration(CALIBRATION_FILE)
    tol = load_tolerances()
    failures = []
    for name in names:
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
            rec = convert_tflite(fp32, staged, calibration, args.data_dir)
            outs = ", ".join(f"{o['file']} {o['bytes']:,} B" for o in rec["outputs"].values())
            print(f"{name}: {outs}")
            res = check_tflite(name, args.onnx_dir, tol, tflite_dir=staged) if args.check else None
            if res is not None and res["failures"]:
                # checked before publishing: the previous .tflite files and record stay as they were
                failures += [f"{f} (nothing written)" for f in res["failures"]]
                continue
            if res is not None:
                rec.update(res)
            publish(staged, args.onnx_dir, name, rec)
        if res is not None:
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
                )
            failures += res["failures"]
    if failures:
        raise ConversionError("; ".join(failures))
    return 0


if __name__ == "__main__":
    import sys

    from runtime.cli import run

    sys.exit(run(main))
