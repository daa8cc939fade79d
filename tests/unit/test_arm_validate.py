"""The x86 validation's calibration (arm/validate_x86.py): two factors, SIMD and scalar blocks,
with a leave-one-out error that is honest about prediction."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

sys.path.insert(0, str(ROOT / "arm"))
spec = importlib.util.spec_from_file_location("arm_validate_x86", ROOT / "arm" / "validate_x86.py")
val = importlib.util.module_from_spec(spec)
spec.loader.exec_module(val)


def _rows(a: float, b: float, mixes, noise=()):
    rows = []
    for k, (simd, scalar) in enumerate(mixes):
        meas = (a * simd + b * scalar) * (1 + (noise[k] if k < len(noise) else 0))
        rows.append({"model": f"m{k}", "estimate_us": simd + scalar, "estimate_simd_us": simd,
                     "estimate_scalar_us": scalar, "measured_p50_us": meas})  # fmt: skip
    return rows


MIXES = [(60, 40), (20, 150), (50, 50), (10, 100), (80, 20), (30, 70), (45, 10)]  # no two alike


def test_two_factors_are_recovered_and_predict_left_out_artifacts():
    rows = _rows(0.5, 0.25, MIXES)
    cal = val.calibrate(rows)
    assert cal["model"] == "simd+scalar"
    assert cal["factor_simd"] == pytest.approx(0.5) and cal["factor_scalar"] == pytest.approx(0.25)
    assert cal["loo_max_abs"] < 1e-9 and cal["spearman_loo"] == pytest.approx(1.0)
    # one factor cannot describe different mixes: its leave-one-out error is large here
    assert max(abs(cal["single_factor_loo_min"]), cal["single_factor_loo_max"]) > 0.2


def test_leave_one_out_error_shows_noise_the_fit_cannot_hide():
    rows = _rows(0.5, 0.25, MIXES, noise=(0, 0, 0.3))
    cal = val.calibrate(rows)
    bad = next(r for r in rows if r["model"] == "m2")
    assert bad["loo_error"] < -0.15  # predicted from the others, the noisy one is off
    assert cal["loo_min"] == min(r["loo_error"] for r in rows)


def test_falls_back_to_one_factor_when_two_cannot_be_fitted():
    same_mix = _rows(0.5, 0.25, [(10, 10), (20, 20), (30, 30)])  # kinds never vary apart
    assert val.calibrate(same_mix)["model"] == "single"
    negative = _rows(1.0, 0.0, [(10, 100), (20, 10), (30, 50)], noise=(0.5, 0, 0))
    cal = val.calibrate(negative)
    assert cal["model"] in ("single", "simd+scalar")
    if cal["model"] == "simd+scalar":
        assert cal["factor_simd"] > 0 and cal["factor_scalar"] > 0


def test_a_bad_bench_file_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "bench.json"
    for text, why in (("{bad", "JSON"), ("[1]", "a JSON object is expected")):
        bad.write_text(text)
        assert (
            val.main([str(tmp_path / "m.onnx"), "--bench", str(bad), "--json", str(tmp_path / "v.json")]) == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and why in err[0]
    assert not (tmp_path / "v.json").exists()


def test_arm_check_goal_ratio_takes_the_best_of_each_precision_per_core():
    spec2 = importlib.util.spec_from_file_location("arm_check_mod", ROOT / "arm" / "arm_check.py")
    ac = importlib.util.module_from_spec(spec2)
    spec2.loader.exec_module(ac)
    insns = {
        "cortex-a76|m.fp32.onnx": 500.0,
        "cortex-a76|m.fp32.s2d.onnx": 400.0,
        "cortex-a76|m.int8.qdq.onnx": 700.0,
        "cortex-a76|m.int8.search.cortex-a76.onnx": 300.0,
        "cortex-a76|floor.onnx": 40.0,  # no INT8 twin: no ratio
        "cortex-a72|m.fp32.s2d.onnx": 400.0,
        "cortex-a72|m.int8.s2d.ort.onnx": 440.0,
        # LiteRT files are their own runtime: a fewer-instruction .tflite never stands in for ORT
        "cortex-a76|m.fp32.tflite": 200.0,
        "cortex-a76|m.int8.full.tflite": 250.0,
        "cortex-a76|m.int8.mixed.tflite": 180.0,
        "cortex-a72|m.int8.full.tflite": 100.0,  # no FP32 .tflite on this core: no LiteRT ratio
    }
    got = {(g["model"], g["cpu"], g["runtime"]): g for g in ac.best_ratios(insns)}
    assert set(got) == {
        ("m", "cortex-a76", "onnxruntime"),
        ("m", "cortex-a72", "onnxruntime"),
        ("m", "cortex-a76", "ai-edge-litert"),
    }
    a76 = got[("m", "cortex-a76", "onnxruntime")]
    assert a76["best_int8"] == "m.int8.search.cortex-a76.onnx" and a76["best_fp32"] == "m.fp32.s2d.onnx"
    assert a76["ratio"] == 0.75 and got[("m", "cortex-a72", "onnxruntime")]["ratio"] == 1.1
    lite = got[("m", "cortex-a76", "ai-edge-litert")]
    assert lite["best_int8"] == "m.int8.mixed.tflite" and lite["best_fp32"] == "m.fp32.tflite"
    assert lite["ratio"] == 0.9


def test_arm_check_records_its_command_and_commit():
    spec2 = importlib.util.spec_from_file_location("arm_check_prov", ROOT / "arm" / "arm_check.py")
    ac = importlib.util.module_from_spec(spec2)
    spec2.loader.exec_module(ac)
    made = ac.provenance(["build/lenet-edge-bundle.tar.gz", "--reps", "2"])
    assert made["command"] == "lenet-edge arm-check build/lenet-edge-bundle.tar.gz --reps 2"
    code = made["environment"]["lenet_edge_code"]  # this checkout is a git repository
    assert len(code["git_commit"]) == 40 and isinstance(code["dirty"], bool)
    assert ac.provenance_text(made).startswith("Command: `lenet-edge arm-check build/")


@pytest.mark.parametrize("reps", ["0", "-1", "11"])
def test_arm_check_refuses_a_repeat_count_before_its_set_up(reps, tmp_path):
    """--reps 0 set up the sysroot (minutes), counted nothing and failed summarising no rows."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(ROOT / "arm" / "arm_check.py"), "--reps", reps, str(tmp_path / "none.tar.gz")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --reps {reps}: must be 1..10"
    proc = subprocess.run(  # a user mistake exits 2 as in every other command (it was 1)
        [sys.executable, str(ROOT / "arm" / "arm_check.py"), str(tmp_path / "none.tar.gz")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"error: {tmp_path / 'none.tar.gz'}: not found (run `make bundle`)"
    )


def test_the_arm_tools_write_their_outputs_whole_or_not_at_all(tmp_path, monkeypatch):
    """run_counts.py, mca.py --json, validate_x86.py and arm_check.py wrote with plain writes: a
    stop mid-write left a truncated counts.json or report. They share arm/arm_files.py now."""
    sys.path.insert(0, str(ROOT / "arm"))
    import arm_files

    out = tmp_path / "counts.json"
    arm_files.write_text_atomic(out, "old")
    monkeypatch.setattr(arm_files.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        arm_files.write_text_atomic(out, "new, never renamed")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["counts.json"]
    for script in ("arm_check.py", "run_counts.py", "mca.py", "validate_x86.py"):
        text = (ROOT / "arm" / script).read_text()
        assert (
            "write_text_atomic(" in text
            and ".write_text(" not in text
            and "open(os.path.join(a.out_dir" not in text
        ), script
