"""Device bundle: build a self-describing tarball on the host, check it on any device.

A bundle holds runtime/ (numpy + onnxruntime only), the models, a fixed input set with the
outputs this host computed, per-platform requirement files and manifest.json (sha256 of every
file). `python -m runtime.bundle check DIR` re-runs the inputs on the device and compares:
FP32 within 1e-4 with identical predictions. INT8 ONNX made with reduce_range: bit-exact with
ORT's reference kernels (graph optimisation "basic": QDQ ops run one by one), and identical
predictions with the fused integer kernels a device uses ("all"; those differ from x86 by an output
step or two on aarch64, measured by `make arm-check`). Other INT8 models are reported only.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .amx import recipe_amx
from .cli import add_common, parser, path_arg
from .contract import CONTRACT_TEXT, to_pixels
from .errors import ContractError, LenetEdgeError
from .files import inside, quantize_record_path, read_json, sha256_bytes, sha256_file, write_bytes_atomic
from .numeric import exceeds, finite, max_abs_diff

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_FILES = (
    "__init__.py",
    "amx.py",
    "bench.py",
    "bundle.py",
    "cli.py",
    "contract.py",
    "env.py",
    "errors.py",
    "evaluate.py",
    "files.py",
    "mnist.py",
    "numeric.py",
    "progress.py",
    "runner.py",
)
SCHEMA = "lenet-edge/bundle/v1"
FP32_ATOL = 1e-4
N_INPUTS = 200  # first 200 MNIST test images: small, fixed, with labels


class BundleError(LenetEdgeError):
    """A bundle is incomplete, altered, or its models disagree with the host's outputs."""


# INT8 QDQ models are also run with ORT's reference kernels, which are the same on every ISA.
REFERENCE_KERNELS = "basic"


BUNDLE_NAME = "lenet-edge-bundle"


def _precision(name: str) -> str:
    return "int8" if ".int8." in name else "fp32"


def _reduce_range(rec_path: Path) -> bool | None:
    """The recipe's reduce_range from a quantize record (true, false or null), or one error naming it."""
    rec = read_json(rec_path)
    recipe = rec.get("recipe") if isinstance(rec, dict) else None
    rr = recipe.get("reduce_range") if isinstance(recipe, dict) else "missing"
    if rr not in (None, True, False):
        raise BundleError(f"{rec_path}: recipe.reduce_range must be true, false or null, got {rr!r:.40}")
    return rr


def build_bundle(models: list[Path], out: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Tarball with runtime/, models, inputs + expected outputs and a manifest; written atomically."""
    from .env import environment
    from .mnist import load_split
    from .runner import SessionConfig, load_runner

    test = load_split("test", data_dir)
    images, labels = test.images[:N_INPUTS], test.labels[:N_INPUTS]
    pixels = to_pixels(images)
    files: dict[str, bytes] = {}
    entries = []
    expected = {}
    names = [m.name for m in models]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise BundleError(
            f"{', '.join(dup)}: two models of the same name (the bundle keeps one models/ folder)"
        )
    for m in models:
        if not m.is_file():
            raise BundleError(f"{m}: model not found (run `make export quantize variants`)")
        runner = load_runner(m)
        logits = runner.predict(pixels)
        data = m.read_bytes()
        files[f"models/{m.name}"] = data
        key = m.name.removesuffix(".onnx")
        expected[key] = logits
        rec_path = quantize_record_path(m)
        rr = _reduce_range(rec_path) if rec_path.is_file() else None
        ref_key = None
        if _precision(m.name) == "int8" and m.suffix == ".onnx":
            ref_key = f"{key}.reference_kernels"
            expected[ref_key] = load_runner(m, SessionConfig(graph_optimization=REFERENCE_KERNELS)).predict(
                pixels
            )
        entries.append(
            {
                "file": f"models/{m.name}",
                "sha256": sha256_bytes(data),
                "bytes": len(data),
                "precision": _precision(m.name),
                "reduce_range": rr,
                "expected_key": key,
                "expected_key_reference_kernels": ref_key,
                "static_batch": runner.static_batch,
                # a process-wide setting its search chose (runtime/amx.py): the device bench repeats it
                "amx": recipe_amx(m),
                "top1_on_inputs": float((logits.argmax(1) == labels).mean()),
            }
        )
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    files["data/inputs.npz"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, **expected)
    files["data/expected.npz"] = buf.getvalue()
    for f in RUNTIME_FILES:
        files[f"runtime/{f}"] = (ROOT / "runtime" / f).read_bytes()
    for req in sorted((ROOT / "requirements").glob("device-*.txt")):
        files[f"requirements/{req.name}"] = req.read_bytes()
    files["README.md"] = DEVICE_README.encode()
    manifest = {
        "schema": SCHEMA,
        "created_unix": int(time.time()),
        "input_contract": CONTRACT_TEXT,
        "inputs": {"file": "data/inputs.npz", "images": N_INPUTS, "source": "MNIST test images 0..199"},
        "expected": {"file": "data/expected.npz", "made_on": environment()},
        "tolerances": {
            "fp32_max_abs_diff": FP32_ATOL,
            "fp32_predictions": "identical",
            "int8_reduce_range": "bit-exact with reference kernels (ORT 'basic'); identical predictions "
            "with the default fused kernels ('all'), whose bit-exactness is reported",
            "int8_other": "agreement reported",
        },
        "models": entries,
        "files": {name: sha256_bytes(data) for name, data in sorted(files.items())},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{BUNDLE_NAME}/{name}")
            info.size, info.mtime, info.mode = len(data), manifest["created_unix"], 0o644
            tar.addfile(info, io.BytesIO(data))
    write_bytes_atomic(out, tar_buf.getvalue())
    return manifest


def validate_manifest(manifest: Any, source: Path) -> None:
    """Types, required keys and at least one model, so a malformed manifest is one clear line
    (not a KeyError) and an empty bundle cannot pass its check."""
    import re

    def bad(what: str) -> BundleError:
        return BundleError(f"{source}: {what}")

    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise bad(f"not a lenet-edge bundle manifest (schema must be {SCHEMA!r})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("'files' must be a non-empty object of file name -> sha256")
    for name, digest in files.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise bad(f"files[{name!r}] is not a sha256 hex digest")
        # Only the names a bundle is built with: portable characters, no '..', no absolute path,
        # no NUL or unencodable text, bounded length.
        parts = name.split("/")
        if (
            not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", name)
            or ".." in parts
            or len(name) > 255
            or any(len(p) > 100 for p in parts)
        ):
            raise bad(f"file name {name[:80]!r} leaves the bundle or is not a plain relative path")
    for need in ("data/inputs.npz", "data/expected.npz"):
        if need not in files:
            raise bad(f"{need} is not listed in 'files' (every file is verified by its sha256)")
    tol = manifest.get("tolerances")
    atol = tol.get("fp32_max_abs_diff") if isinstance(tol, dict) else None
    if not (finite(atol) and 0 <= atol <= 1e-2):  # 1e300 let any FP32 output pass
        raise bad("tolerances.fp32_max_abs_diff must be a finite number in 0..0.01")
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise bad("'models' must list at least one model (an empty bundle checks nothing)")
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise bad(f"models[{i}] is not an object")
        if not isinstance(m.get("file"), str) or m["file"] not in files:
            raise bad(f"models[{i}].file must name a file listed in 'files'")
        if any(isinstance(o, dict) and o.get("file") == m["file"] for o in models[:i]):
            raise bad(f"models[{i}].file {m['file']} is listed twice (it was counted twice)")
        if m.get("precision") not in ("fp32", "int8"):
            raise bad(f"models[{i}].precision must be 'fp32' or 'int8'")
        if not isinstance(m.get("expected_key"), str):
            raise bad(f"models[{i}].expected_key must be a string")
        ref = m.get("expected_key_reference_kernels")
        if ref is not None and not isinstance(ref, str):
            raise bad(f"models[{i}].expected_key_reference_kernels must be a string or null")
        if m.get("reduce_range") not in (None, True, False):
            raise bad(f"models[{i}].reduce_range must be true, false or null")
        if m.get("amx", "on") not in ("on", "off"):  # absent in bundles made before it was recorded
            raise bad(f"models[{i}].amx must be 'on' or 'off'")


def _load_data(bundle: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The fixed inputs and expected outputs, checked for shape and type."""
    try:
        with np.load(bundle / "data/inputs.npz", allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
        with np.load(bundle / "data/expected.npz", allow_pickle=False) as f:
            expected = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise BundleError(f"{bundle}/data: unreadable inputs or expected outputs ({e})") from e
    for k, v in expected.items():
        if v.dtype != np.float32 or v.ndim != 2:
            raise BundleError(
                f"{bundle}/data/expected.npz: {k} must be float32 [N,K], got {v.dtype} {v.shape}"
            )
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) < 1 or 0 in images.shape:
        raise BundleError(
            f"{bundle}/data/inputs.npz: images must be uint8 [N,H,W] or [N,C,H,W], got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),):
        raise BundleError(f"{bundle}/data/inputs.npz: {labels.shape} labels for {len(images)} images")
    return images, labels, expected


def self_check(bundle: Path, report: Path | None = None, writes: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Verify every file's sha256, then run the fixed inputs through every model and compare; write
    the result to `report`. Neither it nor `writes` (the caller's outputs) may be a bundle file."""
    from .env import environment
    from .runner import SessionConfig, load_runner

    bundle = Path(bundle)
    manifest_path = bundle / "manifest.json"
    if not bundle.exists():
        raise BundleError(f"{bundle}: not found")
    if not manifest_path.is_file():
        raise BundleError(
            f"{bundle}: not a bundle (no manifest.json); unpack the tarball and pass its folder"
        )
    manifest = read_json(manifest_path)
    validate_manifest(manifest, manifest_path)
    ours = {(bundle / name).resolve() for name in ["manifest.json", *manifest["files"]]}
    for out in [report, *writes]:  # `check B --json B/manifest.json` overwrote what it checks
        if out is not None and Path(out).resolve() in ours:
            raise BundleError(f"{out}: is a file of the bundle {bundle}; write the result elsewhere")
    unlisted = sorted(
        f"runtime/{p.name}"
        for p in (bundle / "runtime").glob("*.py")
        if f"runtime/{p.name}" not in manifest["files"]
    )
    if unlisted:  # code the check runs must be verified like the models (dropping it hid an edit)
        raise BundleError(f"{manifest_path}: {', '.join(unlisted)} not listed in 'files'")
    for name, want in manifest["files"].items():
        p = inside(bundle, bundle / name)
        if not p.is_file():
            raise BundleError(f"{bundle / name}: missing from the bundle")
        if sha256_file(p) != want:
            raise BundleError(f"{bundle / name}: sha256 differs from manifest.json (altered or truncated)")
    images, labels, expected = _load_data(bundle)
    pixels = to_pixels(images)
    for m in manifest["models"]:
        for key in (m["expected_key"], m.get("expected_key_reference_kernels")):
            if key is not None and key not in expected:
                raise BundleError(f"{bundle}/data/expected.npz: no expected outputs {key!r} for {m['file']}")
    rows = []
    for m in manifest["models"]:
        try:
            runner = load_runner(bundle / m["file"])
            got = runner.predict(pixels)
            ref = None
            if m.get("expected_key_reference_kernels"):
                ref_runner = load_runner(
                    bundle / m["file"], SessionConfig(graph_optimization=REFERENCE_KERNELS)
                )
                ref = ref_runner.predict(pixels)
        except ContractError as e:
            raise BundleError(str(e)) from e
        want = expected[m["expected_key"]]
        diff = max_abs_diff(got, want)
        agree = float((got.argmax(-1) == want.argmax(-1)).mean()) if got.shape == want.shape else 0.0
        row = {
            "file": m["file"],
            "precision": m["precision"],
            "max_abs_diff": diff,
            "agreement": agree,
            "bit_exact": bool(np.array_equal(got, want)),
            "bit_exact_reference_kernels": None,
            "top1_on_inputs": float((got.argmax(-1) == labels).mean()),
        }
        if ref is not None:
            row["bit_exact_reference_kernels"] = bool(
                np.array_equal(ref, expected[m["expected_key_reference_kernels"]])
            )
        if m["precision"] == "fp32":
            row["passed"] = not exceeds(diff, manifest["tolerances"]["fp32_max_abs_diff"]) and agree == 1.0
        elif m.get("reduce_range"):  # validate_manifest: true, false, null or absent
            # The fused integer kernels (QLinearConv, QGemm) differ between x86 and aarch64 by an
            # output step or two (make arm-check): their decisions must agree; the reference
            # kernels must give the very same numbers.
            row["passed"] = agree == 1.0 and row["bit_exact_reference_kernels"] in (None, True)
        else:
            row["passed"] = True  # reported, not required: 16-bit saturation differs by ISA
        rows.append(row)
    failed = [r for r in rows if not r["passed"]]
    summary = (
        f"bundle {bundle}: {len(rows) - len(failed)}/{len(rows)} models match the host "
        f"(FP32 max |Δ| {max((r['max_abs_diff'] for r in rows if r['precision'] == 'fp32'), default=0):.1e}; "
        f"INT8 bit-exact {sum(r['bit_exact'] for r in rows if r['precision'] == 'int8')}/"
        f"{sum(r['precision'] == 'int8' for r in rows)} with the default kernels, "
        f"{sum(bool(r['bit_exact_reference_kernels']) for r in rows)}/"
        f"{sum(r['bit_exact_reference_kernels'] is not None for r in rows)} with the reference kernels)"
    )
    result = {"summary": summary, "models": rows, "environment": environment(), "passed": not failed}
    if report is not None:
        from .files import write_json_atomic

        write_json_atomic(report, result)  # written before a failure is raised, so it can be read
    if failed:
        worst = failed[0]
        raise BundleError(
            f"{bundle}/{worst['file']}: disagrees with the host: max |Δ| {worst['max_abs_diff']:.3g}, "
            f"agreement {worst['agreement']}, bit-exact {worst['bit_exact']}"
        )
    return result


DEVICE_README = """# lenet-edge device bundle

    python3.11 -m venv venv && venv/bin/pip install -r requirements/device-linux-aarch64.txt
    venv/bin/python -m runtime.bundle check .      # the models give the host's outputs here
    venv/bin/python -m runtime.bench --bundle . --json result.json

Copy result.json back and run `make ingest RESULT=result.json` on the host.
Models take raw pixels: float32 [N,1,28,28], values 0..255; see manifest.json.
"""


def main(argv: list[str] | None = None) -> int:
    p = parser("runtime.bundle", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="make the tarball (host)")
    b.add_argument("models", nargs="+", type=path_arg)
    add_common(
        b,
        "out_dir",
        out_dir={
            "default": Path("build"),
            "help": f"the tarball goes here as {BUNDLE_NAME}.tar.gz (default build/)",
        },
    )
    b.add_argument("--data-dir", type=path_arg, default=None)
    c = sub.add_parser("check", help="verify an unpacked bundle on this machine")
    c.add_argument("dir", type=path_arg)
    add_common(c, "json", json={"help": "also write the check result here"})
    args = p.parse_args(argv)
    if args.cmd == "build":
        out = args.out_dir / f"{BUNDLE_NAME}.tar.gz"
        manifest = build_bundle(args.models, out, args.data_dir)
        print(
            f"{out}: {len(manifest['models'])} models, {len(manifest['files'])} files, "
            f"{out.stat().st_size:,} bytes"
        )
    else:
        print(self_check(args.dir, args.json)["summary"])
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main))
