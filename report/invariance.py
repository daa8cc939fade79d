"""Invariance study: top-1 of exported models on shifted, rotated and scaled test images.

`python -m report.invariance MODEL... --json results/invariance.json` evaluates every model
(ONNX or TFLite, through runtime/) on the clean test set and on each transformed copy of it
(report/transforms.py). The blog's argument is that max-pooling buys invariance to small
translations; this measures whether learned stride-2 downsampling loses it, in FP32 and INT8.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.jobs import Job, add_backend_flags, check_jobs, data_arg, data_inputs, describe, run_jobs
from lenet_edge.report.transforms import conditions
from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.errors import ContractError, LenetEdgeError
from lenet_edge.runtime.files import write_json_atomic
from lenet_edge.runtime.mnist import load_split
from lenet_edge.runtime.progress import Progress
from lenet_edge.runtime.runner import load_runner

SCHEMA = "lenet-edge/invariance/v1"


def model_key(path: Path) -> str:
    """lenet_pool.int8.qdq.onnx -> 'lenet_pool.int8.qdq.onnx' minus suffix: 'lenet_pool.int8.qdq'."""
    return path.name.rsplit(".", 1)[0] if path.suffix in (".onnx", ".tflite") else path.name


def evaluate_invariance(
    models: list[Path], data_dir: Path | None = None, limit: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Accuracy of each model under every condition; per condition one transformed test set."""
    test = load_split("test", data_dir)
    images, labels = test.images[:limit], test.labels[:limit]
    runners = {}
    for m in models:
        key = model_key(m) + (".tflite" if m.suffix == ".tflite" else "")
        try:
            runners[key] = load_runner(m)
        except ContractError as e:
            raise LenetEdgeError(str(e)) from e
    conds = conditions()
    acc: dict[str, list[float]] = {k: [] for k in runners}
    t0 = time.perf_counter()
    bar = Progress(len(conds), "invariance", "condition", enabled=progress)
    for _family, _mag, _label, fn in conds:
        pixels = fn(images)[:, None]  # [N,1,28,28] float32 0..255
        for key, r in runners.items():
            if r.static_batch is None:
                logits = r.predict_batched(pixels)
            else:
                logits = np.concatenate([r.predict(pixels[i : i + 1]) for i in range(len(pixels))])
            acc[key].append(float((logits.argmax(-1) == labels).mean()))
        bar.update(1)
    bar.close()
    return {
        "schema": SCHEMA,
        "images": int(len(labels)),
        "conditions": [{"family": f, "magnitude": m, "label": lb} for f, m, lb, _ in conds],
        "top1": acc,
        "models": {k: str(m) for k, m in zip(runners, models, strict=True)},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def curves(result: dict[str, Any]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per model and family: [(magnitude, mean top-1 over directions)], starting at the clean set."""
    conds = result["conditions"]
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key, accs in result["top1"].items():
        clean = next(a for c, a in zip(conds, accs, strict=True) if c["family"] == "none")
        fam: dict[str, dict[float, list[float]]] = {}
        for c, a in zip(conds, accs, strict=True):
            if c["family"] != "none":
                fam.setdefault(c["family"], {}).setdefault(c["magnitude"], []).append(a)
        out[key] = {}
        for f, by_mag in fam.items():
            pts = sorted((m, float(np.mean(v))) for m, v in by_mag.items())
            # the clean set is shift 0, rotation 0 and scale 1.0
            pts = sorted([*pts, (1.0, clean)]) if f == "scale" else [(0.0, clean), *pts]
            out[key][f] = pts
    return out


def invariance_job(payload: dict[str, Any], inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    """One model under every condition (a job of `--backend local|ray`)."""
    res = evaluate_invariance([inputs["model"]], data_arg(inputs), payload["limit"], progress=False)
    (key,) = res["top1"]
    return {"key": key, "top1": res["top1"][key], "images": res["images"], "conditions": res["conditions"]}


def main(argv: list[str] | None = None) -> int:
    p = parser("report.invariance", __doc__)
    p.add_argument("models", nargs="+", type=path_arg, help="model files (.onnx or .tflite)")
    add_common(
        p,
        "out_dir",
        "json",
        out_dir={
            "default": Path("build/invariance"),
            "help": "the jobs' records, the cache (default build/invariance)",
        },
        json={"default": Path("results/invariance.json"), "help": "default results/invariance.json"},
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--data-dir", type=path_arg, default=None)
    add_backend_flags(p)
    a = p.parse_args(argv)
    for m in a.models:
        if not m.is_file():
            raise LenetEdgeError(f"{m}: model file not found (run `make quantize`)")
    if a.limit is not None and a.limit < 1:
        raise LenetEdgeError(f"--limit {a.limit}: must be >= 1")
    names: dict[str, Path] = {}
    for m in a.models:  # results are keyed by file name: found before any job runs (was after all)
        if model_key(m) in names:
            raise LenetEdgeError(
                f"{m}: a model named {model_key(m)!r} is given already ({names[model_key(m)]}): give each model once"
            )
        names[model_key(m)] = m
    data = data_inputs(a.data_dir)
    jobs = [
        Job(
            "invariance",
            {"model": m.name, "limit": a.limit},
            "lenet_edge.report.invariance:invariance_job",
            {"limit": a.limit},
            {"model": str(m), **data},
            label=m.name,
        )
        for m in a.models
    ]
    check_jobs(jobs, a.backend)  # Ray or data files missing: one line before the progress bar
    with Progress(len(jobs), "invariance", "model", every=1 / len(jobs)) as bar:
        recs, stats = run_jobs(jobs, a.out_dir, a.backend, a.jobs, progress=bar)
    res = {
        "schema": SCHEMA,
        "images": recs[0]["images"],
        "conditions": recs[0]["conditions"],
        "top1": {r["key"]: r["top1"] for r in recs},
        "models": {r["key"]: str(m) for r, m in zip(recs, a.models, strict=True)},
        "seconds": round(stats.seconds, 1),
    }
    write_json_atomic(a.json, res)
    print(
        f"wrote {a.json}: {len(res['conditions'])} conditions x {len(res['top1'])} models ({describe(stats)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
