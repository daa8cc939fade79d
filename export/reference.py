"""Committed reference results: adopts trained checkpoints, checks exports, renders the README table.

Reads build/train/*.train.json and build/onnx/*.export.json; writes results/checkpoints/* and
results/reference.json (`write`), compares exports with it (`check`), fills README.md (`readme`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import parser, path_arg, run
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import read_json, sha256_file, write_bytes_atomic, write_json_atomic
from lenet_edge.workflow import model_names, workflows

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference.json"
REF_CKPT_DIR = ROOT / "results" / "checkpoints"
README = ROOT / "README.md"


def published() -> dict[str, dict[str, Any]]:
    """Per model, the published figures its workflow reproduces (the blog's)."""
    return {n: {"params": wf.params, "test_top1": wf.published_top1} for n, wf in workflows().items()}


TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"
QUANT_START, QUANT_END = "<!-- quant:start -->", "<!-- quant:end -->"


def write_reference(train_dir: Path, onnx_dir: Path) -> dict[str, Any]:
    """Copy the trained checkpoints into results/ and record what their exports measured.

    With train_dir = results/checkpoints nothing is copied: the committed checkpoints' export and
    INT8 figures are recorded again from the current code (`make reference TRAIN_DIR=results/checkpoints`
    after a change to what export or quantize write)."""
    models: dict[str, Any] = {}
    for name in model_names():
        ckpt, rec_file = train_dir / f"{name}.npz", train_dir / f"{name}.train.json"
        train_rec = read_json(rec_file)
        exp = read_json(onnx_dir / f"{name}.fp32.export.json")
        if (
            exp["checkpoint_sha256"] != sha256_file(ckpt)
            or train_rec["checkpoint_sha256"] != exp["checkpoint_sha256"]
        ):
            raise LenetEdgeError(
                f"{onnx_dir}/{name}.fp32.onnx was not exported from {ckpt}; run "
                f"`make export CKPT_DIR={train_dir}` first"
            )
        REF_CKPT_DIR.mkdir(parents=True, exist_ok=True)
        if ckpt.resolve() != (REF_CKPT_DIR / ckpt.name).resolve():  # else: re-recording the committed ones
            shutil.copyfile(ckpt, REF_CKPT_DIR / ckpt.name)
            write_bytes_atomic(REF_CKPT_DIR / rec_file.name, rec_file.read_bytes())
        models[name] = {
            "params": exp["params"],
            "checkpoint": f"results/checkpoints/{ckpt.name}",
            "checkpoint_sha256": exp["checkpoint_sha256"],
            "training": {
                "config": train_rec["config"],
                "seconds_per_epoch": round(train_rec["seconds_per_epoch"], 2),
                "paddle_test_top1": train_rec["test_top1"],
                "paddle_test_top2": train_rec["test_top2"],
            },
            "fp32": {
                "test_top1": exp["test_top1"],
                "test_top2": exp["test_top2"],
                "onnx_bytes": exp["onnx_bytes"],
                "parity_max_abs_logit_diff": exp["parity"]["max_abs_logit_diff"],
            },
        }
        int8 = _default_int8_record(onnx_dir, name, exp["onnx_sha256"])
        if int8 is not None:
            models[name]["int8"] = {
                "onnx": int8["onnx"],
                "recipe": int8["recipe"],
                "recipe_name": int8["recipe_name"],
                "test_top1": int8["test_top1"],
                "test_top2": int8["test_top2"],
                "accuracy_drop_pp": int8["accuracy_drop_pp"],
                "agreement_with_fp32": int8["agreement_with_fp32"],
                "mcnemar": int8["mcnemar"],
                "onnx_bytes": int8["onnx_bytes"],
                "bytes_per_param": int8["bytes_per_param"],
                "size_ratio_vs_fp32": int8["size_ratio_vs_fp32"],
                "calibration_sha256": int8["calibration"]["sha256"],
                "nodes": {k: int8["nodes"][k] for k in ("exported_total", "clean_total", "int8_total")},
            }
    train_recs = [read_json(train_dir / f"{name}.train.json") for name in model_names()]
    ref = {
        "training_environment": _kept_environment(models) or reference_environment(train_recs),
        "about": "Accuracy regression baseline: the committed checkpoints, exported, on the 10,000 "
        "MNIST test images. Produced by `make train && make export CKPT_DIR=build/train && make reference`.",
        "data_sha256": exp["data_sha256"],
        "versions": exp["versions"],
        "blog": published(),
        "models": models,
    }
    write_json_atomic(REFERENCE, ref)
    return ref


def _kept_environment(models: dict[str, Any]) -> dict[str, Any] | None:
    """Re-recording the committed checkpoints: the committed reference's training environment
    (its records may predate the field), if it is the reference of these very checkpoints."""
    if not REFERENCE.is_file():
        return None
    old = read_json(REFERENCE)
    same = all(
        old.get("models", {}).get(n, {}).get("checkpoint_sha256") == m["checkpoint_sha256"]
        for n, m in models.items()
    )
    return old.get("training_environment") if same else None


def _default_int8_record(onnx_dir: Path, name: str, fp32_sha: str) -> dict[str, Any] | None:
    """The quantize record made with the model's default recipe from this very FP32 file."""
    for path in sorted(onnx_dir.glob(f"{name}.int8.*.quantize.json")):
        rec = read_json(path)
        if rec.get("default_recipe") and rec["fp32"]["onnx_sha256"] == fp32_sha:
            return rec
    return None


def reference_environment(train_recs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the reference checkpoints were trained with: CPU class and library versions."""
    envs = [{**r.get("environment", {}), "versions": r.get("versions", {})} for r in train_recs]
    if not envs or any(e != envs[0] for e in envs) or "cpu_model" not in envs[0]:
        raise LenetEdgeError(
            "the training records disagree on (or lack) their environment; retrain with this code"
        )
    return envs[0]


CLASS_KEYS = ("cpu_model", "isa_flags", "machine")


def _differences(env: dict[str, Any], ref_env: dict[str, Any]) -> list[str]:
    """What differs between two training environments (CPU class, library versions), in words."""
    out = [f"{k} {env.get(k)!r} vs {ref_env.get(k)!r}" for k in CLASS_KEYS if env.get(k) != ref_env.get(k)]
    ev, rv = env.get("versions", {}), ref_env.get("versions", {})
    said = {"conv_kernel": "not recorded (Paddle's kernel)"}  # references older than train/fastconv.py
    out += [
        f"{k} {ev.get(k, 'not recorded')} vs {rv.get(k, said.get(k, 'not recorded'))}"
        for k in sorted(set(ev) | set(rv))
        if ev.get(k) != rv.get(k)
    ]
    return out


def _train_record(train_dir: Path | None, name: str, checkpoint_sha: str) -> dict[str, Any] | None:
    if train_dir is None:
        return None
    path = train_dir / f"{name}.train.json"
    if not path.is_file():
        return None
    rec = read_json(path)
    return rec if isinstance(rec, dict) and rec.get("checkpoint_sha256") == checkpoint_sha else None


def compare_model(
    name: str, exp: dict[str, Any], ref: dict[str, Any], train_rec: dict[str, Any] | None, tol_pp: float
) -> tuple[bool, str]:
    """One model's verdict against the reference: (passed, one line saying why).

    Same weights: the accuracy must be identical. Other weights trained on the reference's CPU
    class with its library versions and config: they must be the same weights (training is bitwise
    reproducible there), so any difference fails. Other CPU class or versions: say what differs and
    require top-1 and top-2 within `tol_pp` of the reference."""
    from lenet_edge.runtime.numeric import exceeds

    r = ref["models"][name]
    d1 = 100 * (exp["test_top1"] - r["fp32"]["test_top1"])
    d2 = 100 * (exp["test_top2"] - r["fp32"]["test_top2"])
    acc = f"top-1 {100 * exp['test_top1']:.2f} % ({d1:+.2f} pp), top-2 {100 * exp['test_top2']:.2f} % ({d2:+.2f} pp)"
    if exp["checkpoint_sha256"] == r["checkpoint_sha256"]:
        same = d1 == 0 and d2 == 0
        return (
            same,
            f"{acc}; the reference weights, so {'identical as required' if same else 'it must be identical'}",
        )
    if train_rec is None:
        return (
            False,
            f"{acc}; weights differ and no training record says where they came from (pass --train-dir)",
        )
    if train_rec.get("config") != r["training"]["config"]:
        keys = sorted(
            k
            for k in r["training"]["config"]
            if train_rec.get("config", {}).get(k) != r["training"]["config"][k]
        )
        return (
            False,
            f"{acc}; trained with a different config ({', '.join(keys) or 'fields'}): not comparable",
        )
    ref_env = ref.get("training_environment")
    env = {**train_rec.get("environment", {}), "versions": train_rec.get("versions", {})}
    if ref_env is None or "cpu_model" not in env:
        return False, f"{acc}; weights differ and the reference or the training record lacks its CPU class"
    diff = _differences(env, ref_env)
    if not diff:
        return (
            False,
            f"{acc}; same CPU class and versions as the reference, yet the weights differ (not reproducible)",
        )
    within = not (exceeds(abs(d1), tol_pp) or exceeds(abs(d2), tol_pp))
    return within, (
        f"{acc}; trained on another CPU class or versions ({'; '.join(diff)}), so weights differ; "
        f"accuracy {'within' if within else 'OUTSIDE'} ±{tol_pp:g} pp of the reference"
    )


def check_exports(onnx_dir: Path, train_dir: Path | None = None, strict: bool = True) -> int:
    """Compare exported models with the reference (see compare_model); non-zero exit on any failure."""
    from lenet_edge.export.onnx_export import read_export_record
    from lenet_edge.quantize.checks import load_tolerances

    ref = read_json(REFERENCE)
    tol = load_tolerances()["fp32_top1_cross_machine_pp_max"]
    failed = []
    for name in model_names():
        exp = read_export_record(onnx_dir / f"{name}.fp32.onnx")
        ok, why = compare_model(name, exp, ref, _train_record(train_dir, name, exp["checkpoint_sha256"]), tol)
        print(f"{name}: {'ok' if ok else 'FAILED'}: {why}")
        if not ok:
            failed.append(name)
    if failed and strict:
        raise LenetEdgeError(
            f"{onnx_dir}: {', '.join(failed)} fail the check against {REFERENCE.relative_to(ROOT)}"
        )
    return 0


def render_table(ref: dict[str, Any]) -> str:
    rows = [
        "| model | params | FP32 top-1 | FP32 top-2 | blog top-1 | FP32 bytes | parity max \\|Δlogit\\| "
        "| INT8 top-1 | INT8 agreement | INT8 bytes (B/param) | s/epoch (train) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in model_names():
        m = ref["models"][name]
        rows.append(
            f"| `{name}` | {m['params']:,} | {100 * m['fp32']['test_top1']:.2f} % | {100 * m['fp32']['test_top2']:.2f} % "
            f"| {100 * ref['blog'][name]['test_top1']:.2f} % | {m['fp32']['onnx_bytes']:,} "
            f"| {m['fp32']['parity_max_abs_logit_diff']:.1e} | {_int8_cells(m.get('int8'))} "
            f"| {m['training']['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(rows)


def _int8_cells(i: dict[str, Any] | None) -> str:
    if i is None:
        return "– | – | –"
    return (
        f"{100 * i['test_top1']:.2f} % ({-i['accuracy_drop_pp']:+.2f} pp) | {100 * i['agreement_with_fp32']:.2f} % "
        f"| {i['onnx_bytes']:,} ({i['bytes_per_param']:.2f})"
    )


def render_quant_table(ref: dict[str, Any]) -> str:
    """Default INT8 recipe per model with its checks and the graph clean-up's node counts."""
    rows = [
        "| model | default recipe | top-1 drop | agreement | McNemar b/c, one-sided p | INT8 / FP32 size "
        "| nodes: exported → clean → INT8 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in model_names():
        i = ref["models"][name].get("int8")
        if i is None:
            continue
        mc, n = i["mcnemar"], i["nodes"]
        rows.append(
            f"| `{name}` | `{i['recipe_name']}` | {i['accuracy_drop_pp']:+.2f} pp | {100 * i['agreement_with_fp32']:.2f} % "
            f"| {mc['ref_only_correct']}/{mc['new_only_correct']}, p = {mc['p_new_worse']:.2f} "
            f"| {i['size_ratio_vs_fp32']:.3f} | {n['exported_total']} → {n['clean_total']} → {n['int8_total']} |"
        )
    return "\n".join(rows)


def _replace_between(text: str, start: str, end: str, body: str, readme: Path) -> str:
    if start not in text or end not in text:
        raise LenetEdgeError(f"{readme}: markers {start} / {end} missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(ref: dict[str, Any], readme: Path = README) -> bool:
    text = readme.read_text()
    new = _replace_between(text, TABLE_START, TABLE_END, render_table(ref), readme)
    new = _replace_between(new, QUANT_START, QUANT_END, render_quant_table(ref), readme)
    if new != text:
        write_bytes_atomic(readme, new.encode())
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = parser("export.reference", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="adopt trained checkpoints + exports as results/reference.json")
    w.add_argument("--train-dir", type=path_arg, default=Path("build/train"))
    w.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"))
    c = sub.add_parser("check", help="compare exported models with results/reference.json")
    c.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"))
    c.add_argument(
        "--train-dir",
        type=path_arg,
        default=None,
        help="where the exported checkpoints were trained (their .train.json says on which CPU class)",
    )
    c.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="exit non-zero on any failure (default; --no-strict only reports)",
    )
    sub.add_parser("readme", help="refresh the README results table from results/reference.json")
    args = p.parse_args(argv)
    if args.cmd == "write":
        ref = write_reference(args.train_dir, args.onnx_dir)
        update_readme(ref)
        print(f"wrote {REFERENCE.relative_to(ROOT)} and the README table")
    elif args.cmd == "check":
        return check_exports(args.onnx_dir, args.train_dir, args.strict)
    else:
        changed = update_readme(read_json(REFERENCE))
        print("README table " + ("updated" if changed else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
