#!/usr/bin/env python3
"""Validate the cycle estimate on the machine we have: the same method on x86 against measured p50.

For each model: the host's Python + onnxruntime run under qemu-x86_64 with arm/bb_plugin.c
(`count_insns.py`: warm-up, empty marker regions, then marked regions of batch-1 `session.run`
calls), the block counts go through arm/mca.py with llvm-mca's model of this machine's core
(LLVM's host CPU name), cycles become microseconds at this machine's clock, and the estimate is
set beside the measured p50 of the same file and call path (`run`, batch 1, one thread) from a
`make bench` result of this machine. Reports per-artifact error and the Spearman rank correlation.

The emulated CPU (qemu `-cpu max`) and the host may offer different ISA extensions, and
onnxruntime/XNNPACK pick kernels by CPUID: the result records both feature sets, and when they
differ (AVX-512 host, AVX2 emulation) it says the validation compares different kernels. Both sides
run the same kernels on an AVX2-only machine, or when the benchmark ran under `lenet-edge --isa avx2`
(AVX-512/AVX-VNNI/AMX hidden from CPUID; its environment records `isa_mask`): the host is then
probed under the same mask.

    python3 arm/validate_x86.py --bench results/bench/MACHINE.json build/onnx/*.onnx --json build/arm/validate-x86.json
    .venv-device/bin/lenet-edge --isa avx2 bench MODELS... --json build/bench/bench-avx2.json   # AVX-512 host

Stdlib only on the host side; needs qemu-user (qemu-x86_64), llvm-19 and build/arm/libbb.so
(arm/build_plugin.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import mca  # noqa: E402
from arm_files import write_text_atomic  # noqa: E402

FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512_SKX", "AVX512_CNL", "AVX512_ICL", "AVX512_SPR")
PROBE = (
    "from numpy.core._multiarray_umath import __cpu_features__ as f; import json; "
    f"print(json.dumps({{k: bool(f.get(k)) for k in {FEATURES!r}}}))"
)


def _env() -> dict:
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return {**keep, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


MASK_ENV = (
    "import json; from lenet_edge.isa import masked_env; e = masked_env({mask!r}); "
    "print(json.dumps({{k: e[k] for k in ('LD_PRELOAD', 'LENET_EDGE_ISA_MASK')}}))"
)


def mask_env(python: str, mask: str) -> dict:
    """The environment variables that start a process under `lenet-edge --isa MASK`."""
    p = subprocess.run(
        [python, "-c", MASK_ENV.format(mask=mask)], capture_output=True, text=True, timeout=300
    )
    if p.returncode != 0:
        raise mca.McaError(f"cannot set up the CPUID mask {mask!r}: {p.stderr.strip()[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def isa(python: str, emulated: bool, extra_env: dict | None = None) -> dict:
    cmd = (["qemu-x86_64", "-cpu", "max"] if emulated else []) + [python, "-c", PROBE]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), **(extra_env or {})}, timeout=300)
    if p.returncode != 0:
        raise mca.McaError(f"cannot probe CPU features ({'qemu' if emulated else 'host'}): {p.stderr[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def host_core() -> tuple[str, float]:
    """LLVM's name for this machine's core, and its clock (GHz, the highest `cpu MHz` listed)."""
    p = subprocess.run([str(mca.LLVM_BIN / "llc"), "--version"], capture_output=True, text=True)
    m = re.search(r"Host CPU:\s*(\S+)", p.stdout)
    if not m:
        raise mca.McaError("llc --version names no host CPU")
    mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)]
    if not mhz:
        raise mca.McaError("/proc/cpuinfo lists no cpu MHz; pass --ghz")
    return m.group(1), max(mhz) / 1e3


def count_blocks(python: str, model: Path, out: Path, runs: int, regions: int) -> None:
    plugin = ROOT / "build" / "arm" / "libbb.so"
    if not plugin.is_file():
        raise mca.McaError(f"{plugin} missing: run arm/build_plugin.sh")
    cmd = ["qemu-x86_64", "-cpu", "max", "-plugin", f"{plugin},out={out}", python, str(HERE / "count_insns.py"),
           str(model), "--runs", str(runs), "--warmup", "20", "--regions", str(regions)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1800)
    if p.returncode != 0 or not out.is_file():
        raise mca.McaError(f"{model.name}: counting under qemu-x86_64 failed: {p.stderr.strip()[-300:]}")


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):  # average ranks of ties
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def _median(v: list[float]) -> float:
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _fit(rows: list[dict]) -> tuple[float, float] | None:
    """Factors (SIMD, scalar) minimising the relative error sum(((a*simd + b*scalar) / measured - 1)^2);
    None when the two kinds cannot be told apart or a factor would be negative."""
    w = [
        (r["estimate_simd_us"] / r["measured_p50_us"], r["estimate_scalar_us"] / r["measured_p50_us"])
        for r in rows
    ]
    saa = sum(x * x for x, _ in w)
    sbb = sum(y * y for _, y in w)
    sab = sum(x * y for x, y in w)
    sa, sb = sum(x for x, _ in w), sum(y for _, y in w)
    det = saa * sbb - sab * sab
    if len(rows) < 3 or det <= 1e-12 * saa * sbb:
        return None
    a, b = (sa * sbb - sb * sab) / det, (sb * saa - sa * sab) / det
    return (a, b) if a > 0 and b > 0 else None


def calibrate(rows: list[dict]) -> dict:
    """Calibrate the method on this machine, with its error told honestly by leave-one-out (each
    artifact predicted by factors fitted on the others). Two factors, one for SIMD blocks (kernels)
    and one for scalar blocks (glue): llvm-mca's throughput model overstates short scalar blocks
    more than vector loops, and artifacts differ in their mix (an ORT QDQ graph is mostly glue, a
    LiteRT FP32 one mostly kernel). One factor (the median of measured / estimate) where the two
    cannot be fitted; it is recorded in any case for comparison."""
    ratios = [r["measured_p50_us"] / r["estimate_us"] for r in rows]
    single = _median(ratios)
    two = _fit(rows)

    def predict(r: dict, fit: tuple[float, float] | None, f: float) -> float:
        return (
            fit[0] * r["estimate_simd_us"] + fit[1] * r["estimate_scalar_us"] if fit else r["estimate_us"] * f
        )

    for i, r in enumerate(rows):
        others = rows[:i] + rows[i + 1 :]
        loo_two = _fit(others) if two else None
        loo_single = _median(ratios[:i] + ratios[i + 1 :]) if others else single
        r["calibrated_us"] = predict(r, two, single)
        r["loo_predicted_us"] = predict(r, loo_two, loo_single)
        r["loo_error"] = r["loo_predicted_us"] / r["measured_p50_us"] - 1
        r["loo_error_single_factor"] = r["estimate_us"] * loo_single / r["measured_p50_us"] - 1
    loo = [r["loo_error"] for r in rows]
    single_loo = [r["loo_error_single_factor"] for r in rows]
    return {
        "model": "simd+scalar" if two else "single",
        "factor": single,
        "factor_simd": two[0] if two else None,
        "factor_scalar": two[1] if two else None,
        "loo_min": min(loo),
        "loo_max": max(loo),
        "loo_max_abs": max(map(abs, loo)),
        "spearman_loo": spearman([r["loo_predicted_us"] for r in rows], [r["measured_p50_us"] for r in rows])
        if len(rows) > 1
        else None,
        "single_factor_loo_min": min(single_loo),
        "single_factor_loo_max": max(single_loo),
    }


def measured_p50(bench: dict, name: str) -> float | None:
    for r in bench.get("results", []):
        if r.get("file") == name and r.get("batch") == 1 and r.get("threads") == 1 and r.get("call") == "run":
            return 1e3 * float(r["latency_ms_p50"])
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help="ONNX files measured in --bench")
    p.add_argument("--bench", type=Path, required=True, help="a `make bench` result of this machine")
    p.add_argument("--python", default=str(ROOT / ".venv-device" / "bin" / "python"))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--regions", type=int, default=2)
    p.add_argument("--ghz", type=float, default=None, help="clock for microseconds (default: /proc/cpuinfo)")
    p.add_argument("--json", type=Path, default=ROOT / "build" / "arm" / "validate-x86.json")
    p.add_argument("--reuse", action="store_true", help="reuse block reports newer than their model")
    a = p.parse_args(argv)
    try:
        try:
            bench = json.loads(a.bench.read_text())
        except json.JSONDecodeError as e:
            raise mca.McaError(f"{a.bench}: not a bench result (JSON: {e})") from None
        if not isinstance(bench, dict):
            raise mca.McaError(f"{a.bench}: not a bench result (a JSON object is expected)")
        core, ghz = host_core()
        ghz = a.ghz or ghz
        mask = (bench.get("environment", {}).get("cpu") or {}).get("isa_mask")
        host = isa(a.python, False, mask_env(a.python, mask) if mask else None)
        emu = isa(a.python, True)
        same = host == emu
        rows, cache = [], {}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        for m in a.models:
            meas = measured_p50(bench, m.name)
            if meas is None:
                raise mca.McaError(f"{m.name}: no batch-1, one-thread `run` row in {a.bench}")
            rep_path = a.json.parent / f"bb-x86.{m.name}.txt"
            fresh = a.reuse and rep_path.is_file() and rep_path.stat().st_mtime > m.stat().st_mtime
            if not fresh:
                count_blocks(a.python, m, rep_path, a.runs, a.regions)
            e = mca.estimate(mca.parse_report(rep_path.read_text()), a.runs, "x86_64", core, cache=cache)
            est = e["cycles_per_inference"] / (ghz * 1e3)
            rows.append({"model": m.name, "estimate_us": est, "measured_p50_us": meas,
                         "estimate_simd_us": e["cycles_simd"] / (ghz * 1e3),
                         "estimate_scalar_us": e["cycles_scalar"] / (ghz * 1e3),
                         "simd_insn_share": e["simd_insn_share"],
                         "error": est / meas - 1, "insns_per_inference": e["insns_per_inference"],
                         "hot_blocks": e["hot_blocks"], "unmodelled_share": e["unmodelled_share"]})  # fmt: skip
            print(
                f"{m.name}: estimate {est:.1f} µs, measured {meas:.1f} µs ({100 * (est / meas - 1):+.0f} %)"
            )
    except (mca.McaError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cal = calibrate(rows)
    rho = (
        spearman([r["estimate_us"] for r in rows], [r["measured_p50_us"] for r in rows])
        if len(rows) > 1
        else None
    )
    res = {
        "method": "bb_plugin under qemu-x86_64 -cpu max + llvm-mca (estimate) vs make bench p50 (`run`, batch 1, 1 thread)",
        "llvm_mcpu": core,
        "ghz": ghz,
        "model_fingerprint": mca.model_fingerprint("x86_64", core),
        "isa_mask": mask,
        "isa_host": host,
        "isa_emulated": emu,
        "same_kernels": same,
        "note": None
        if same
        else "host and emulated CPU offer different ISA extensions: onnxruntime runs "
        "different kernels in the two, so this compares different code (validate on an AVX2-only machine, "
        "or bench under `lenet-edge --isa avx2`)",
        "rows": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
        "calibration": cal,
        "spearman": rho,
        "bench": str(a.bench),
    }
    write_text_atomic(a.json, json.dumps(res, indent=1) + "\n")
    fit = (
        f"factors SIMD {cal['factor_simd']:.3f} / scalar {cal['factor_scalar']:.3f}"
        if cal["model"] == "simd+scalar"
        else f"factor {cal['factor']:.3f} (median measured/estimate)"
    )
    print(
        f"calibration {fit}; leave-one-out error {100 * cal['loo_min']:+.0f} % .. {100 * cal['loo_max']:+.0f} %, "
        f"Spearman of the leave-one-out predictions {cal['spearman_loo'] or float('nan'):.3f} (one factor: "
        f"{100 * cal['single_factor_loo_min']:+.0f} % .. {100 * cal['single_factor_loo_max']:+.0f} %)"
    )
    print(f"raw estimates: max |error| {100 * res['max_abs_error']:.0f} %, Spearman {rho if rho is None else round(rho, 3)}"
          f"{'' if same else '; ' + res['note']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
