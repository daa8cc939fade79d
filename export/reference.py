"""Committed reference results: adopts trained checkpoints, checks exports, renders the README table.

Reads build/train/*.train.json and build/onnx/*.export.json; writes results/checkpoints/* and
results/reference.json (`write`), compares exports with it (`check`), fills README.md (`readme`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import parser, path_arg, run
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import read_json, sha256_bytes, write_bytes_atomic, write_json_atomic
from lenet_edge.runtime.numeric import finite
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


# --- what this module reads, checked: one error naming the file and the field -------------------
def _get(doc: Any, path: Path, *keys: str) -> Any:
    """doc[k0][k1]...; a level that is not an object, or a missing key, is one error naming both."""
    cur = doc
    for i, k in enumerate(keys):
        if not isinstance(cur, dict):
            where = ".".join(keys[:i]) or "the file"
            raise LenetEdgeError(f"{path}: {where} must be a JSON object, got {cur!r:.60}")
        if k not in cur:
            raise LenetEdgeError(f"{path}: missing {'.'.join(keys[: i + 1])}")
        cur = cur[k]
    return cur


def _bad(path: Path, keys: tuple[str, ...], need: str, value: Any) -> LenetEdgeError:
    return LenetEdgeError(f"{path}: {'.'.join(keys)} must be {need}, got {value!r:.60}")


def _object(doc: Any, path: Path, *keys: str) -> dict[str, Any]:
    v = _get(doc, path, *keys)
    if not isinstance(v, dict):
        raise _bad(path, keys, "a JSON object", v)
    return v


def _text(doc: Any, path: Path, *keys: str, plain: bool = False) -> str:
    """A non-empty string; `plain`: a name a Markdown table shows (no '|', '`' or line break)."""
    v = _get(doc, path, *keys)
    if not isinstance(v, str) or not v.strip() or (plain and not re.fullmatch(r"[A-Za-z0-9._+-]{1,100}", v)):
        raise _bad(path, keys, "a plain name" if plain else "a non-empty string", v)
    return v


def _number(doc: Any, path: Path, *keys: str, signed: bool = False) -> float:
    """A finite number, >= 0 unless `signed` (NaN rendered as "nan %" in the README)."""
    v = _get(doc, path, *keys)
    if not (finite(v) and (signed or v >= 0)):
        raise _bad(path, keys, "a finite number" if signed else "a finite number >= 0", v)
    return v


def _fraction(doc: Any, path: Path, *keys: str) -> float:
    v = _get(doc, path, *keys)
    if not (finite(v) and 0 <= v <= 1):
        raise _bad(path, keys, "a fraction in [0, 1]", v)
    return v


def _count(doc: Any, path: Path, *keys: str) -> int:
    v = _get(doc, path, *keys)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _bad(path, keys, "an integer >= 0", v)
    return v


def _check_int8(doc: Any, path: Path, *at: str) -> None:
    """The INT8 figures the reference keeps and the README shows: a quantize record's top level, or
    a reference model's "int8" (`at`)."""
    for k in ("test_top1", "test_top2", "agreement_with_fp32"):
        _fraction(doc, path, *at, k)
    _fraction(doc, path, *at, "mcnemar", "p_new_worse")
    _number(doc, path, *at, "accuracy_drop_pp", signed=True)
    for k in ("bytes_per_param", "size_ratio_vs_fp32"):
        _number(doc, path, *at, k)
    _count(doc, path, *at, "onnx_bytes")
    for k in ("ref_only_correct", "new_only_correct"):
        _count(doc, path, *at, "mcnemar", k)
    for k in ("exported_total", "clean_total", "int8_total"):
        _count(doc, path, *at, "nodes", k)
    _text(doc, path, *at, "recipe_name", plain=True)


def _check_environment(doc: Any, path: Path, key: str) -> None:
    """An optional environment object (and its optional versions object), spread into dicts."""
    if isinstance(doc, dict) and doc.get(key) is not None:
        _object(doc, path, key)
        if "versions" in doc[key]:
            _object(doc, path, key, "versions")


def validate_reference(ref: Any, path: Path, table: bool = True) -> dict[str, Any]:
    """reference.json as `check` (table=False) or the README tables (table=True) read it: every
    model's fields, typed and finite, else one LenetEdgeError naming the file and the field."""
    _object(ref, path, "models")
    _check_environment(ref, path, "training_environment")
    for name in model_names():
        m = ("models", name)
        _text(ref, path, *m, "checkpoint_sha256")
        _object(ref, path, *m, "training", "config")
        for k in ("test_top1", "test_top2"):
            _fraction(ref, path, *m, "fp32", k)
        if not table:
            continue
        _count(ref, path, *m, "params")
        _count(ref, path, *m, "fp32", "onnx_bytes")
        _number(ref, path, *m, "fp32", "parity_max_abs_logit_diff")
        _number(ref, path, *m, "training", "seconds_per_epoch")
        if _get(ref, path, "blog", name, "test_top1") is not None:  # a workflow may publish none
            _fraction(ref, path, "blog", name, "test_top1")
        if ref["models"][name].get("int8") is not None:
            _check_int8(ref, path, *m, "int8")
    return ref


def _train_input(path: Path) -> dict[str, Any]:
    """A training record `write` adopts, checked."""
    rec = read_json(path)
    _text(rec, path, "checkpoint_sha256")
    _object(rec, path, "config")
    _number(rec, path, "seconds_per_epoch")
    for k in ("test_top1", "test_top2"):
        _fraction(rec, path, k)
    for k in ("environment", "versions"):
        _check_environment({k: rec.get(k)}, path, k)
    return rec


def _export_input(path: Path) -> dict[str, Any]:
    """An export record `write` records, checked."""
    rec = read_json(path)
    for k in ("checkpoint_sha256", "onnx_sha256", "data_sha256"):
        _text(rec, path, k)
    for k in ("test_top1", "test_top2"):
        _fraction(rec, path, k)
    _count(rec, path, "params")
    _count(rec, path, "onnx_bytes")
    _number(rec, path, "parity", "max_abs_logit_diff")
    _object(rec, path, "versions")
    return rec


def write_reference(train_dir: Path, onnx_dir: Path, readme: Path | None = None) -> dict[str, Any]:
    """Copy the trained checkpoints into results/ and record what their exports measured (and,
    with `readme`, refresh its tables). Every record is checked and the README rendered before
    anything is written, so a malformed input leaves results/ and the README as they were.

    With train_dir = results/checkpoints nothing is copied: the committed checkpoints' export and
    INT8 figures are recorded again from the current code (`make reference TRAIN_DIR=results/checkpoints`
    after a change to what export or quantize write)."""
    models: dict[str, Any] = {}
    train_recs: list[dict[str, Any]] = []
    copies: list[tuple[Path, bytes]] = []
    for name in model_names():
        ckpt, rec_file = train_dir / f"{name}.npz", train_dir / f"{name}.train.json"
        train_rec = _train_input(rec_file)
        exp = _export_input(onnx_dir / f"{name}.fp32.export.json")
        ckpt_bytes = ckpt.read_bytes()
        if (
            exp["checkpoint_sha256"] != sha256_bytes(ckpt_bytes)
            or train_rec["checkpoint_sha256"] != exp["checkpoint_sha256"]
        ):
            raise LenetEdgeError(
                f"{onnx_dir}/{name}.fp32.onnx was not exported from {ckpt}; run "
                f"`make export CKPT_DIR={train_dir}` first"
            )
        if ckpt.resolve() != (REF_CKPT_DIR / ckpt.name).resolve():  # else: re-recording the committed ones
            copies += [
                (REF_CKPT_DIR / ckpt.name, ckpt_bytes),
                (REF_CKPT_DIR / rec_file.name, rec_file.read_bytes()),
            ]
        train_recs.append(train_rec)
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
    ref = {
        "training_environment": _kept_environment(models) or reference_environment(train_recs),
        "about": "Accuracy regression baseline: the committed checkpoints, exported, on the 10,000 "
        "MNIST test images. Produced by `make train && make export CKPT_DIR=build/train && make reference`.",
        "data_sha256": exp["data_sha256"],
        "versions": exp["versions"],
        "blog": published(),
        "models": models,
    }
    readme_text = _readme_text(ref, readme) if readme is not None else None
    for dest, data in copies:
        write_bytes_atomic(dest, data)
    write_json_atomic(REFERENCE, ref)
    if readme_text is not None and readme_text[0] != readme_text[1]:
        write_bytes_atomic(readme, readme_text[1].encode())
    return ref


def _kept_environment(models: dict[str, Any]) -> dict[str, Any] | None:
    """Re-recording the committed checkpoints: the committed reference's training environment
    (its records may predate the field), if it is the reference of these very checkpoints."""
    if not REFERENCE.is_file():
        return None
    old = read_json(REFERENCE)
    old_models = old.get("models") if isinstance(old, dict) else None
    if not isinstance(old_models, dict):
        return None  # not a reference of these checkpoints: the one being written replaces it
    same = all(
        isinstance(old_models.get(n), dict)
        and old_models[n].get("checkpoint_sha256") == m["checkpoint_sha256"]
        for n, m in models.items()
    )
    if not same:
        return None
    _check_environment(old, REFERENCE, "training_environment")
    return old.get("training_environment")


def _default_int8_record(onnx_dir: Path, name: str, fp32_sha: str) -> dict[str, Any] | None:
    """The quantize record made with the model's default recipe from this very FP32 file, checked."""
    for path in sorted(onnx_dir.glob(f"{name}.int8.*.quantize.json")):
        rec = read_json(path)
        if not isinstance(rec, dict):
            raise LenetEdgeError(
                f"{path}: not a quantize record (a JSON object is expected), got {rec!r:.60}"
            )
        if rec.get("default_recipe") and _text(rec, path, "fp32", "onnx_sha256") == fp32_sha:
            _check_int8(rec, path)
            _text(rec, path, "onnx")
            _object(rec, path, "recipe")
            _text(rec, path, "calibration", "sha256")
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
    if not isinstance(rec, dict) or rec.get("checkpoint_sha256") != checkpoint_sha:
        return None
    _object(rec, path, "config")  # compare_model reads these
    for k in ("environment", "versions"):
        _check_environment({k: rec.get(k)}, path, k)
    return rec


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

    ref = validate_reference(read_json(REFERENCE), REFERENCE, table=False)
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
            f"| {_percent(ref['blog'][name]['test_top1'])} | {m['fp32']['onnx_bytes']:,} "
            f"| {m['fp32']['parity_max_abs_logit_diff']:.1e} | {_int8_cells(m.get('int8'))} "
            f"| {m['training']['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(rows)


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.2f} %"


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


def _readme_text(ref: dict[str, Any], readme: Path) -> tuple[str, str]:
    """The README's text and the text with the reference's tables in it."""
    text = readme.read_text()
    new = _replace_between(text, TABLE_START, TABLE_END, render_table(ref), readme)
    return text, _replace_between(new, QUANT_START, QUANT_END, render_quant_table(ref), readme)


def update_readme(ref: dict[str, Any], readme: Path | None = None) -> bool:
    readme = README if readme is None else readme  # looked up when called, not when defined
    text, new = _readme_text(ref, readme)
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
        write_reference(args.train_dir, args.onnx_dir, readme=README)
        print(f"wrote {REFERENCE.relative_to(ROOT)} and the README table")
    elif args.cmd == "check":
        return check_exports(args.onnx_dir, args.train_dir, args.strict)
    else:
        changed = update_readme(validate_reference(read_json(REFERENCE), REFERENCE), README)
        print("README table " + ("updated" if changed else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
