#!/usr/bin/env python3
"""make arm-check: the device bundle on emulated aarch64 (qemu-user, cortex-a72 = Pi 4, cortex-a76 = Pi 5).

Reads build/lenet-edge-bundle.tar.gz; writes build/arm/arm-check.{json,md}. For each CPU it runs the
bundle's own self-check inside the emulated Python (FP32 within 1e-4 with identical predictions,
INT8 with identical predictions and bit-exact with the reference kernels) and counts aarch64 instructions per batch-1 inference with the TCG
plugin. Instruction counts are emulated, not latency; emulated wall time is never reported.
Stdlib only (the host side needs no project environment).
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import arm_setup  # beside this script, in arm/
from arm_files import arm_build, folder_problem, remove_dead_staging, write_text_atomic

try:  # the commit a result was made from; stdlib only without it (run by hand outside the project)
    from lenet_edge.runtime.env import code_version, provenance_text
except ImportError:
    code_version = provenance_text = None

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARM_BUILD = arm_build()
CPUS = ("cortex-a72", "cortex-a76")
LABEL = "aarch64 instructions per inference (emulated), not latency"
# Cycle estimates: the clocks of the boards these cores stand for (Pi 4, Pi 5), and the artifacts
# estimated (the ones the per-target choice picks from; each costs one emulated run per core).
CLOCK_GHZ = {"cortex-a72": 1.8, "cortex-a76": 2.4}
ESTIMATED = (
    "fp32.onnx",
    "fp32.s2d.onnx",
    "int8.s2d.qdq.onnx",
    "int8.s2d.ort.onnx",
    "fp32.tflite",
    "int8.full.tflite",
    "int8.mixed.tflite",
    "int8.fc.tflite",
)


class BundleError(Exception):
    """The tarball is not a bundle this can check; the message names it and the problem."""


BUNDLE_DIR = "lenet-edge-bundle"  # the tarball's one top-level folder (runtime/bundle.py)


def unpack(tarball: Path) -> tuple[Path, dict]:
    """The bundle unpacked into ARM_BUILD/bundle and its manifest, read before any set-up. A
    tarball that is not one (unreadable, members leaving the folder or linking outside it, a
    manifest that is not JSON or lists no model files) is one BundleError naming it; it is
    unpacked into a staging folder first, so a failure leaves no half-unpacked bundle."""
    dest = ARM_BUILD / "bundle"
    ARM_BUILD.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(ARM_BUILD, ".bundle")  # a killed run's half-unpacked bundle
    staging = ARM_BUILD / f".bundle.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            with tarfile.open(tarball) as tar:
                # "data": no absolute names, no '..', no links out of the folder, no devices
                tar.extractall(staging, filter="data")
        except tarfile.FilterError as e:  # OutsideDestinationError, AbsoluteLinkError, ...
            raise BundleError(f"{tarball}: refused, not a bundle ({_line(e)})") from e
        except tarfile.ReadError as e:  # its message lists every compression it tried
            raise BundleError(f"{tarball}: cannot unpack: not a tar(.gz) archive, or a truncated one") from e
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:  # not gzip/tar, truncated
            raise BundleError(f"{tarball}: cannot unpack ({e.__class__.__name__}: {_line(e)})") from e
        manifest = read_manifest(staging / BUNDLE_DIR, tarball)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest / BUNDLE_DIR, manifest


def _line(e: BaseException) -> str:
    """An exception's message as one short line (tarfile's ReadError lists every method it tried)."""
    text = str(e).strip()
    return (text.splitlines() or [e.__class__.__name__])[0][:200]


def read_manifest(bundle: Path, tarball: Path) -> dict:
    """The bundle's manifest, as far as this script reads it: models[].file, plain relative names
    of files in the bundle (the bundle's own self-check validates the rest)."""
    path = bundle / "manifest.json"
    where = f"{tarball}: {BUNDLE_DIR}/manifest.json"
    if not path.is_file():
        raise BundleError(f"{where} missing (not a bundle from `make bundle`)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{where}: not valid JSON ({_line(e)})") from e
    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, list) or not models:
        raise BundleError(f"{where}: 'models' must list at least one model")
    for i, m in enumerate(models):
        name = m.get("file") if isinstance(m, dict) else None
        if (
            not isinstance(name, str)
            or not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", name)
            or ".." in name.split("/")
            or len(name) > 255
        ):
            raise BundleError(f"{where}: models[{i}].file must be a plain relative path, got {name!r:.80}")
        if not (bundle / name).is_file():
            raise BundleError(f"{where}: models[{i}].file {name} is not in the bundle")
    return manifest


def bundle_check(bundle: Path, cpu: str, site: Path) -> dict:
    out = ARM_BUILD / f"check-{cpu}.json"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DEST": str(ARM_BUILD / "sysroot"),
        "GUEST_ENV": f"PYTHONPATH={site}:{site}-litert:{bundle} PYTHONDONTWRITEBYTECODE=1",
    }
    proc = subprocess.run(
        [
            str(HERE / "qemu_py.sh"),
            "--cpu",
            cpu,
            "--site",
            str(site),
            "-m",
            "runtime.bundle",
            "check",
            str(bundle),
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if not out.is_file():
        sys.exit(
            f"error: bundle check under qemu {cpu} produced no result: {proc.stderr.strip().splitlines()[-1:]}"
        )
    res = json.loads(out.read_text())
    res["exit_code"] = proc.returncode
    res["error"] = next((ln for ln in proc.stderr.splitlines() if ln.startswith("error:")), None)
    return res


def counts(bundle: Path, site: Path, models: list[Path], reps: int) -> dict:
    outdir = ARM_BUILD / "counts"
    cmd = [
        sys.executable,
        str(HERE / "run_counts.py"),
        "--sysroot",
        str(ARM_BUILD / "sysroot"),
        "--site",
        str(site),
        "--reps",
        str(reps),
        "--out-dir",
        str(outdir),
        "--models",
        *map(str, models),
    ]
    (outdir / "counts.json").unlink(missing_ok=True)  # never report a previous run's counts
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = outdir / "counts.json"
    # rc 1 with a complete counts.json = repeats differ beyond tolerance: reported, not fatal.
    # Anything else (a model that fails to run, rc 1 from sys.exit) is an error.
    got = json.loads(out.read_text()) if out.is_file() and proc.returncode in (0, 1) else None
    want = {(cpu, m.name) for cpu in CPUS for m in models}
    have = {(r["cpu"], r["model"]) for r in got["rows"]} if got else set()
    if not want <= have:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        sys.exit(f"error: instruction counting failed for {sorted(want - have)[:3]}: {last}")
    return got


def _bb_run(bundle: Path, site: Path, cpu: str, model: Path) -> Path:
    out = ARM_BUILD / "bb" / f"{cpu}.{model.name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    if model.suffix == ".tflite":  # LiteRT lives in its own folder beside the main site
        site = site.with_name(site.name + "-litert")
    cmd = [str(HERE / "qemu_py.sh"), "--cpu", cpu, "--site", str(site), "--plugin",
           f"{ARM_BUILD / 'libbb.so'},out={out}", str(HERE / "count_insns.py"), str(model),
           "--runs", "30", "--warmup", "20", "--regions", "2"]  # fmt: skip
    p = subprocess.run(
        cmd, env={**os.environ, "DEST": str(ARM_BUILD / "sysroot")}, capture_output=True, text=True
    )
    if p.returncode != 0 or not out.is_file():
        sys.exit(
            f"error: block counting failed for {model.name} on {cpu}: {(p.stderr.strip() or 'no output')[-300:]}"
        )
    return out


def _mca_available() -> bool:
    sys.path.insert(0, str(HERE))
    import mca

    return (mca.LLVM_BIN / "llvm-mca").is_file() and (ARM_BUILD / "libbb.so").is_file()


def _estimate_lines(est: dict | None) -> list[str]:
    if est is None:
        return [
            "",
            "No cycle estimates: llvm-19 or build/arm/libbb.so missing (make setup-llvm; arm/build_plugin.sh).",
        ]
    models = est["scheduling_models"]
    same = len(set(models.values())) < len(models)
    cal = est["calibration"]
    band = (
        f"x86-calibrated: {describe_calibration(cal)} from `{cal['file']}` (leave-one-out error on x86 "
        f"{100 * cal['loo_min']:+.0f} % .. {100 * cal['loo_max']:+.0f} %"
        + (
            ""
            if cal["same_kernels"]
            else "; that validation compared AVX2-emulated with AVX-512 native kernels"
        )
        + "; on real boards the error is unknown until measurements are ingested)"
        if cal
        else "no x86 calibration committed"
    )
    out = [
        "",
        "## Latency estimates per inference (estimate, not a measurement)",
        "",
        "Per-block execution counts (arm/bb_plugin.c, 2 × 30 runs after 20 warm-up) × llvm-mca 19 cycles per "
        f"block for the core, at {', '.join(f'{c} {g} GHz' for c, g in CLOCK_GHZ.items())}. Raw, and {band}. "
        + (
            "LLVM 19 uses **one scheduling model for both cores** (same fingerprint): the cores differ here only by "
            "the code they run (the a76 has dot-product kernels) and the clock."
            if same
            else ""
        ),
        "",
        "| model | " + " | ".join(f"{c} µs raw / calibrated" for c in CPUS) + " |",
        "|---|" + "---:|" * len(CPUS),
    ]
    for m in sorted({r["model"] for r in est["rows"]}):
        cells = []
        for c in CPUS:
            r = next(r for r in est["rows"] if r["cpu"] == c and r["model"] == m)
            calib = f"{r['us_estimate_calibrated']:.1f}" if r["us_estimate_calibrated"] is not None else "–"
            cells.append(f"{r['us_estimate_raw']:.1f} / {calib}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def x86_calibration() -> dict | None:
    """The committed x86 validation (arm/validate_x86.py) to calibrate with: one whose measured and
    emulated runs used the same kernels if there is one (then by file name: no dependence on file
    times, which a checkout sets in any order); its factors and error band."""
    found = []
    for f in sorted((ROOT / "results" / "arm").glob("validate-x86*.json")):
        v = json.loads(f.read_text())
        found.append((bool(v.get("same_kernels")), f.name, v))
    if not found:
        return None
    same, name, v = max(found, key=lambda t: (t[0], t[1]))
    return {"file": f"results/arm/{name}", **v["calibration"], "same_kernels": same}


def calibrated(cal: dict | None, us: float, us_simd: float, us_scalar: float) -> float | None:
    """The x86-calibrated estimate: one factor per kind of block when the validation fitted two."""
    if not cal:
        return None
    if cal.get("model") == "simd+scalar":
        return cal["factor_simd"] * us_simd + cal["factor_scalar"] * us_scalar
    return us * cal["factor"]


def describe_calibration(cal: dict) -> str:
    if cal.get("model") == "simd+scalar":
        return f"× {cal['factor_simd']:.3f} (SIMD blocks) / × {cal['factor_scalar']:.3f} (scalar blocks)"
    return f"× {cal['factor']:.3f}"


def cycle_estimates(bundle: Path, site: Path, models: list[Path]) -> dict:
    """Per core and artifact: cycles per inference from block counts + llvm-mca (arm/mca.py),
    microseconds at the board's clock, raw and with the x86 calibration factor. Estimates."""
    from concurrent.futures import ThreadPoolExecutor

    import mca

    jobs = [(cpu, m) for cpu in CPUS for m in models]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        reports = list(pool.map(lambda j: _bb_run(bundle, site, *j), jobs))
    cal = x86_calibration()
    rows, cache = [], {}
    for (cpu, m), rep_path in zip(jobs, reports, strict=True):
        e = mca.estimate(mca.parse_report(rep_path.read_text()), 30, "aarch64", cpu, cache=cache)
        us, us_simd = (e[k] / (CLOCK_GHZ[cpu] * 1e3) for k in ("cycles_per_inference", "cycles_simd"))
        rows.append({"cpu": cpu, "model": m.name, "ghz": CLOCK_GHZ[cpu], "cycles_estimate": e["cycles_per_inference"],
                     "cycles_simd": e["cycles_simd"], "simd_insn_share": e["simd_insn_share"],
                     "us_estimate_raw": us, "us_estimate_calibrated": calibrated(cal, us, us_simd, us - us_simd),
                     "insns_per_inference": e["insns_per_inference"], "coverage": e["coverage"],
                     "unmodelled_share": e["unmodelled_share"]})  # fmt: skip
    return {
        "label": "estimate: llvm-mca 19 throughput model of the executed blocks, not a measurement",
        "scheduling_models": {cpu: mca.model_fingerprint("aarch64", cpu) for cpu in CPUS},
        "calibration": cal,
        "rows": rows,
    }


RUNTIME = {".onnx": "onnxruntime", ".tflite": "ai-edge-litert"}


def best_ratios(insns: dict[str, float]) -> list[dict]:
    """Per model, CPU and runtime: the INT8 file with the fewest instructions over the FP32 file
    with the fewest (`insns` keys are 'cpu|<model>.<format>.onnx' or '….tflite'; a format starting
    'int8' is INT8, 'fp32' FP32; the runtime is the file's: onnxruntime or LiteRT)."""
    out = []
    for cpu in sorted({k.split("|")[0] for k in insns}):
        for suffix, runtime in RUNTIME.items():
            files = {
                k.split("|")[1]: v for k, v in insns.items() if k.startswith(cpu + "|") and k.endswith(suffix)
            }
            for model in sorted({f.partition(".")[0] for f in files}):
                kind = {
                    f: f.removesuffix(suffix).partition(".")[2] for f in files if f.startswith(model + ".")
                }
                i8 = [f for f, k in kind.items() if k.startswith("int8")]
                f32 = [f for f, k in kind.items() if k.startswith("fp32")]
                if i8 and f32:
                    bi, bf = min(i8, key=files.get), min(f32, key=files.get)
                    out.append(
                        {
                            "model": model,
                            "cpu": cpu,
                            "runtime": runtime,
                            "best_int8": bi,
                            "int8": files[bi],
                            "best_fp32": bf,
                            "fp32": files[bf],
                            "ratio": files[bi] / files[bf],
                        }
                    )
    return out


def provenance(argv: list[str]) -> dict:
    """The command as typed and the lenet-edge commit it ran (`lenet-edge publish --arm` checks
    it); the commit only where lenet_edge imports, as under `lenet-edge arm-check`."""
    code = code_version() if code_version else None
    return {
        "command": shlex.join(["lenet-edge", "arm-check", *argv]),
        "environment": {"machine": platform.machine(), **({"lenet_edge_code": code} if code else {})},
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog=os.environ.get("LENET_EDGE_PROG"), description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="the tarball from `make bundle`")
    ap.add_argument("--reps", type=int, default=1, help="counting repeats per model and CPU (default 1)")
    a = ap.parse_args()
    # repeats of a deterministic count: 0 gave no row to summarise, after minutes of set-up
    # the set-up after the arguments and the bundle: a user mistake costs no minutes of sysroot work
    # and exits 2 like every other command's (the tool's own failures below exit 1)
    problem = None
    if not 1 <= a.reps <= 10:
        problem = f"--reps {a.reps}: must be 1..10"
    elif not a.bundle.is_file():
        problem = f"{a.bundle}: not found (run `make bundle`)"
    elif where := folder_problem(ARM_BUILD):  # a file, /proc: was a traceback
        problem = f"ARM_BUILD={ARM_BUILD}: {where}"
    else:
        try:
            bundle, manifest = unpack(a.bundle)
        except BundleError as e:
            problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    os.environ["ARM_BUILD"] = str(ARM_BUILD)  # the set-up scripts and the counting use this folder too
    rc = arm_setup.ensure()
    if rc != 0:
        return rc
    site = ARM_BUILD / "sysroot" / "opt" / "armlab" / "site"
    checks = {cpu: bundle_check(bundle, cpu, site) for cpu in CPUS}
    onnx_models = [bundle / m["file"] for m in manifest["models"] if m["file"].endswith(".onnx")]
    cnt = counts(bundle, site, onnx_models, a.reps)
    per = {}
    for r in cnt["rows"]:
        per.setdefault((r["cpu"], r["model"]), []).append(r["insns_per_inference"])
    insns = {f"{cpu}|{m}": statistics.mean(v) for (cpu, m), v in per.items()}
    est_models = [bundle / m["file"] for m in manifest["models"] if m["file"].split(".", 1)[-1] in ESTIMATED]
    estimates = cycle_estimates(bundle, site, est_models) if _mca_available() else None

    made = provenance(sys.argv[1:])
    lines = [
        "# aarch64 check (qemu-user; cortex-a72 = Raspberry Pi 4, cortex-a76 = Raspberry Pi 5)",
        "",
        provenance_text(made) if provenance_text else f"Command: `{made['command']}`.",
        "",
        "## The bundle's self-check, run inside the emulated Python",
        "",
        "| CPU | model | max \\|Δ\\| vs x86 | predictions identical | bit-exact | bit-exact, reference kernels | passed |",
        "|---|---|---:|---|---|---|---|",
    ]
    for cpu, res in checks.items():
        for m in res["models"]:
            agree = (
                "–"
                if m["agreement"] is None
                else ("yes" if m["agreement"] == 1.0 else f"{100 * m['agreement']:.2f} %")
            )
            lines.append(
                f"| {cpu} | {m['file'].removeprefix('models/')} | {m['max_abs_diff']:.2e} | {agree} "
                f"| {'yes' if m['bit_exact'] else 'no'} "
                f"| {'–' if m.get('bit_exact_reference_kernels') is None else ('yes' if m['bit_exact_reference_kernels'] else 'NO')} "
                f"| {'yes' if m['passed'] else 'NO'} |"
            )
    lines += [
        "",
        f"## {LABEL}",
        "",
        "One `sess.run` on a batch-1 input, after 20 warm-up runs, mean of 3 × 50 runs, marker cost "
        "subtracted (arm/insn_plugin.c). Not cycles, not time.",
        "",
        "| model | format | "
        + " | ".join(CPUS)
        + " | INT8 / FP32 ("
        + ", ".join(c.split("-")[1] for c in CPUS)
        + ") |",
        "|---|---|" + "---:|" * len(CPUS) + "---:|",
    ]
    for f in sorted({k.split("|")[1] for k in insns}):
        model, _, fmt = f.removesuffix(".onnx").partition(".")
        ratio = ""
        if fmt.startswith("int8"):
            ratio = ", ".join(f"{insns[f'{c}|{f}'] / insns[f'{c}|{model}.fp32.onnx']:.2f}" for c in CPUS)
        lines.append(
            f"| {model} | {fmt or model} | "
            + " | ".join(f"{insns[f'{c}|{f}']:,.0f}" for c in CPUS)
            + f" | {ratio} |"
        )
    # the .tflite files are counted by their executed blocks (the estimates' runs): the same
    # quantity, which for the .onnx files agrees with the direct count to the marker's ~100
    tfl = {
        f"{r['cpu']}|{r['model']}": r["insns_per_inference"]
        for r in (estimates or {}).get("rows", [])
        if r["model"].endswith(".tflite")
    }
    goals = best_ratios({**insns, **tfl})
    lines += [
        "",
        "Goal ratio per model, core and runtime: the fewest-instruction INT8 file / the fewest-instruction "
        "FP32 file (goal ≤ 0.8 on cortex-a76, ≤ 1.0 on cortex-a72)."
        + (
            " onnxruntime: the counts above; LiteRT (the .tflite files): instructions from the executed-block "
            "counts of the estimates below (the same quantity: for the .onnx files the two agree to the "
            "marker's ~100 instructions)."
            if tfl
            else ""
        ),
        "",
        "| model | CPU | runtime | best INT8 | best FP32 | INT8 / FP32 |",
        "|---|---|---|---|---|---:|",
    ]
    for g in goals:
        lines.append(
            f"| {g['model']} | {g['cpu']} | {g['runtime']} | {g['best_int8']} {g['int8']:,.0f} | {g['best_fp32']} "
            f"{g['fp32']:,.0f} | {g['ratio']:.3f} |"
        )
    lines += _estimate_lines(estimates)
    md = "\n".join(lines) + "\n"
    report = {
        **made,
        "label": LABEL,
        "best_int8_over_best_fp32": goals,
        "checks": checks,
        "instructions_per_inference": insns,
        "counting": {k: v for k, v in cnt.items() if k != "rows"},
        "count_rows": cnt["rows"],
        "cycle_estimates": estimates,
    }
    fp32_bad = [
        f"{cpu}: {m['file']}"
        for cpu, r in checks.items()
        for m in r["models"]
        if m["precision"] == "fp32" and not m["passed"]
    ]
    int8_bad = [
        f"{cpu}: {m['file']}"
        for cpu, r in checks.items()
        for m in r["models"]
        if m["precision"] == "int8" and not m["passed"]
    ]
    written = write_report(ARM_BUILD, report, md, passed=not (fp32_bad or int8_bad))
    print(md)
    if fp32_bad or int8_bad:
        print(
            f"error: aarch64 results differ from x86: {', '.join(fp32_bad + int8_bad)} (see {written}; "
            "the last passing arm-check.json stays)",
            file=sys.stderr,
        )
        return 1
    return 0


def write_report(arm_dir: Path, report: dict, md: str, passed: bool) -> Path:
    """The run's two files: arm-check.{json,md}, which `publish --arm` files, or, when the bundle's
    self-check failed, arm-check.failed.{json,md}, so a failing run never replaces a passing one.
    Each file is written under a temporary name and renamed into place, the table before the JSON;
    the JSON records whether the run passed and the table's sha256, so a reader tells the pair
    from the halves of two runs (one stopped between the renames). Returns the table's path."""
    stem = "arm-check" if passed else "arm-check.failed"
    report = {**report, "passed": passed, "markdown_sha256": hashlib.sha256(md.encode()).hexdigest()}
    table = arm_dir / f"{stem}.md"
    arm_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(table, md)
    write_text_atomic(arm_dir / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    if passed:  # a later passing run: the failed pair of an earlier one no longer describes the bundle
        for suffix in (".json", ".md"):
            (arm_dir / f"arm-check.failed{suffix}").unlink(missing_ok=True)
    return table


if __name__ == "__main__":
    sys.exit(main())
