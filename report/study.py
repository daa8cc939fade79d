"""Multi-seed study: both models trained, exported, quantized and evaluated with N seeds.

`python -m report.study --seeds 5` (`make study SEEDS=5`) runs one job per (seed, model) through
the pipeline's own CLIs (train -> export -> quantize), then evaluates FP32 and INT8 on the test
set and under the invariance transforms. Jobs run in parallel, one per core, each with one
thread; a finished job leaves build/study/seed<S>/<model>.study.json (written last, atomically),
so an interrupted study resumes where it stopped. The aggregate, with statistics, goes to
results/study.json, which `make report` reads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.cli import add_common, parser, run
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import read_json, sha256_file, write_json_atomic
from lenet_edge.runtime.progress import Progress
from lenet_edge.workflow import comparison

SCHEMA = "lenet-edge/study/v1"
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "FLAGS_paddle_num_threads": "1",
    "CPU_NUM": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "POLYGRAPHY_AUTOINSTALL_DEPS": "0",
}


class StudyError(LenetEdgeError):
    """A study job failed; the message names the step and its log."""


def job_dir(root: Path, seed: int) -> Path:
    return root / f"seed{seed}"


def job_result(root: Path, seed: int, model: str) -> Path:
    return job_dir(root, seed) / f"{model}.study.json"


def _step(cmd: list[str], log: Path, what: str) -> None:
    env = {**os.environ, **ONE_THREAD}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        last = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:]
        raise StudyError(f"{log}: {what} failed (exit {proc.returncode}): {last[0] if last else ''}")


def job_key(seed: int, model: str, epochs: int, train_limit: int | None) -> dict[str, Any]:
    """Everything that decides a job's result: a cached result with another key is not reused
    (a 1-epoch smoke study must never stand in for the real one)."""
    from lenet_edge.runtime.files import code_sha256

    return {
        "model": model,
        "seed": seed,
        "epochs": epochs,
        "train_limit": train_limit,
        "code_sha256": code_sha256(
            "report.study", "train.loop", "train.__main__", "export.__main__", "quantize.__main__"
        ),
    }


def cached_result(root: Path, seed: int, model: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The job's result if it exists and was made with this very key, else None."""
    out = job_result(root, seed, model)
    if not out.is_file():
        return None
    try:
        res = read_json(out)
    except LenetEdgeError:
        return None
    return res if isinstance(res, dict) and res.get("job_key") == key else None


def run_job(
    root: Path, seed: int, model: str, epochs: int, data_dir: Path | None, train_limit: int | None = None
) -> dict[str, Any]:
    """train -> export -> quantize -> evaluate for one (seed, model); cached by its key."""
    out = job_result(root, seed, model)
    key = job_key(seed, model, epochs, train_limit)
    if (res := cached_result(root, seed, model, key)) is not None:
        return res
    d = job_dir(root, seed)
    onnx_dir = d / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    log = d / f"{model}.log"
    py = sys.executable
    data = ["--data-dir", str(data_dir)] if data_dir else []
    limit = ["--train-limit", str(train_limit)] if train_limit else []
    t0 = time.time()
    _step(
        [
            py,
            "-m",
            "lenet_edge.train",
            "--model",
            model,
            "--seed",
            str(seed),
            "--epochs",
            str(epochs),
            "--out-dir",
            str(d),
            "--no-progress",
            *limit,
            *data,
        ],
        log,
        "training",
    )
    t_train = time.time() - t0
    _step(
        [
            py,
            "-m",
            "lenet_edge.export",
            "--model",
            model,
            "--checkpoint-dir",
            str(d),
            "--out-dir",
            str(onnx_dir),
            *data,
        ],
        log,
        "export",
    )
    _step(
        [
            py,
            "-m",
            "lenet_edge.quantize",
            "--model",
            model,
            "--onnx-dir",
            str(onnx_dir),
            "--no-check",
            "--no-progress",
            *data,
        ],
        log,
        "quantization",
    )
    _step(
        [py, "-m", "lenet_edge.report.study", "--evaluate-job", str(d), "--model", model, *data],
        log,
        "evaluation",
    )
    res = read_json(d / f"{model}.eval.json")
    res["epochs"] = epochs
    res["job_key"] = key
    res["seconds"] = {"train": round(t_train, 1), "total": round(time.time() - t0, 1)}
    write_json_atomic(out, res)
    return res


def evaluate_job(d: Path, model: str, data_dir: Path | None) -> None:
    """In the job's process: accuracies, per-image correctness and the invariance curves."""
    from lenet_edge.report.invariance import evaluate_invariance
    from lenet_edge.runtime.evaluate import topk_accuracy
    from lenet_edge.runtime.mnist import load_split
    from lenet_edge.runtime.runner import load_runner

    onnx_dir = d / "onnx"
    fp32, int8 = onnx_dir / f"{model}.fp32.onnx", onnx_dir / f"{model}.int8.qdq.onnx"
    test = load_split("test", data_dir)
    pixels = test.images.reshape(-1, 1, 28, 28).astype(np.float32)
    res: dict[str, Any] = {"model": model, "seed": int(d.name.removeprefix("seed"))}
    correct = {}
    for prec, path in (("fp32", fp32), ("int8", int8)):
        logits = load_runner(path).predict_batched(pixels)
        res[prec] = topk_accuracy(logits, test.labels).as_dict() | {
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        correct[prec] = logits.argmax(-1) == test.labels
    train_rec = read_json(d / f"{model}.train.json")
    res["checkpoint_sha256"] = sha256_file(d / f"{model}.npz")
    res["train_seconds_per_epoch"] = train_rec.get("seconds_per_epoch")
    q = read_json(onnx_dir / f"{model}.int8.qdq.quantize.json")
    res["int8"]["agreement_with_fp32"] = q["agreement_with_fp32"]
    res["int8"]["accuracy_drop_pp"] = q["accuracy_drop_pp"]
    res["int8"]["mcnemar"] = q["mcnemar"]
    res["invariance"] = evaluate_invariance([fp32, int8], data_dir, progress=False)
    np.savez_compressed(d / f"{model}.correct.npz", **correct)
    write_json_atomic(d / f"{model}.eval.json", res)


def aggregate(root: Path, seeds: list[int]) -> dict[str, Any]:
    """Per-seed rows plus the statistics the report prints."""
    from lenet_edge.quantize.stats import mcnemar_exact
    from lenet_edge.report.invariance import curves
    from lenet_edge.report.stats import paired_t, summary, wilcoxon_exact

    # the pair the study compares: the workflow that names a [study] baseline, and that baseline
    # (result keys keep the blog's names: "stride_minus_pool" = candidate - baseline)
    pool, stride = comparison()
    models = (pool, stride)
    rows = {m: [read_json(job_result(root, s, m)) for s in seeds] for m in models}
    per_model = {}
    for m in models:
        fp = [100 * r["fp32"]["top1"] for r in rows[m]]
        q8 = [100 * r["int8"]["top1"] for r in rows[m]]
        per_model[m] = {
            "fp32_top1_pct": summary(fp),
            "fp32_top2_pct": summary([100 * r["fp32"]["top2"] for r in rows[m]]),
            "int8_top1_pct": summary(q8),
            "int8_drop_pp": summary([a - b for a, b in zip(fp, q8, strict=True)]),
            "int8_vs_fp32_paired": paired_t(q8, fp),
        }
    fp_pool = [100 * r["fp32"]["top1"] for r in rows[pool]]
    fp_stride = [100 * r["fp32"]["top1"] for r in rows[stride]]
    q_pool = [100 * r["int8"]["top1"] for r in rows[pool]]
    q_stride = [100 * r["int8"]["top1"] for r in rows[stride]]
    per_seed_mcnemar = []
    for s in seeds:
        a = np.load(job_dir(root, s) / f"{pool}.correct.npz")
        b = np.load(job_dir(root, s) / f"{stride}.correct.npz")
        per_seed_mcnemar.append(
            {
                "seed": s,
                "fp32": mcnemar_exact(a["fp32"], b["fp32"]),
                "int8": mcnemar_exact(a["int8"], b["int8"]),
            }
        )
    inv: dict[str, dict[str, Any]] = {}
    for m in models:
        per_seed = [curves(r["invariance"]) for r in rows[m]]
        for prec, key in (("fp32", f"{m}.fp32"), ("int8", f"{m}.int8.qdq")):
            inv[f"{m}.{prec}"] = {}
            for fam, pts in per_seed[0][key].items():
                vals = 100 * np.array([[y for _, y in c[key][fam]] for c in per_seed])
                inv[f"{m}.{prec}"][fam] = {
                    "magnitude": [x for x, _ in pts],
                    "mean": vals.mean(0).round(3).tolist(),
                    "sd": vals.std(0, ddof=1).round(3).tolist(),
                }
    # stride - pool under each transform, paired by seed (the blog's invariance argument)
    inv_paired: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for prec, suffix in (("fp32", "fp32"), ("int8", "int8.qdq")):
        cp = [curves(r["invariance"])[f"{pool}.{suffix}"] for r in rows[pool]]
        cs = [curves(r["invariance"])[f"{stride}.{suffix}"] for r in rows[stride]]
        inv_paired[prec] = {}
        for fam in cp[0]:
            out = []
            for i, (mag, _) in enumerate(cp[0][fam]):
                t = paired_t([100 * c[fam][i][1] for c in cs], [100 * c[fam][i][1] for c in cp])
                out.append({"magnitude": mag, **t})
            inv_paired[prec][fam] = out
    return {
        "schema": SCHEMA,
        "seeds": seeds,
        "recipe": "Adam 1e-3, batch 64, cross-entropy, input scaled to [-1, 1]; the seed sets initialisation "
        "and data order; one thread per job",
        "epochs": rows[pool][0]["epochs"],
        "rows": rows_slim(rows),
        "models": per_model,
        "stride_minus_pool": {
            "fp32_top1_pp": paired_t(fp_stride, fp_pool),
            "fp32_wilcoxon": wilcoxon_exact(fp_stride, fp_pool),
            "int8_top1_pp": paired_t(q_stride, q_pool),
            "int8_wilcoxon": wilcoxon_exact(q_stride, q_pool),
            "seeds_stride_better_fp32": int(sum(s > p for s, p in zip(fp_stride, fp_pool, strict=True))),
            "per_seed_mcnemar": per_seed_mcnemar,
        },
        "invariance": inv,
        "invariance_stride_minus_pool_pp": inv_paired,
    }


def rows_slim(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for m, rs in rows.items():
        for r in rs:
            out.append(
                {
                    "model": m,
                    "seed": r["seed"],
                    "fp32_top1": r["fp32"]["top1"],
                    "fp32_top2": r["fp32"]["top2"],
                    "int8_top1": r["int8"]["top1"],
                    "int8_agreement": r["int8"]["agreement_with_fp32"],
                    "int8_mcnemar_p_worse": r["int8"]["mcnemar"]["p_new_worse"],
                    "fp32_bytes": r["fp32"]["bytes"],
                    "int8_bytes": r["int8"]["bytes"],
                    "checkpoint_sha256": r["checkpoint_sha256"],
                    "seconds": r["seconds"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("report.study", __doc__)
    p.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel jobs (default: cores)")
    p.add_argument("--epochs", type=int, default=10, help="default 10 (the blog's recipe)")
    add_common(
        p,
        "out_dir",
        "json",
        out_dir={
            "default": Path("build/study"),
            "help": "per-seed jobs and their cache (default build/study)",
        },
        json={"default": Path("results/study.json"), "help": "default results/study.json"},
    )
    p.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke tests)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--evaluate-job", type=Path, default=None, help=argparse.SUPPRESS)
    add_common(p, "model", model={"default": None, "help": argparse.SUPPRESS})  # an --evaluate-job's model
    a = p.parse_args(argv)
    if a.evaluate_job is not None:
        evaluate_job(a.evaluate_job, a.model, a.data_dir)
        return 0
    if a.seeds < 2:
        raise LenetEdgeError(f"--seeds {a.seeds}: a paired comparison needs at least 2 seeds")
    seeds = list(range(a.seeds))
    # Candidate first (the stride-2 net trains ~2x slower), so the last job is not a lone long one.
    models = tuple(reversed(comparison()))
    jobs = [(s, m) for m in models for s in seeds]
    keys = {(s, m): job_key(s, m, a.epochs, a.train_limit) for s, m in jobs}
    done = sum(cached_result(a.out_dir, s, m, keys[s, m]) is not None for s, m in jobs)
    print(
        f"study: {len(jobs)} jobs ({a.seeds} seeds x {len(models)} models), {done} cached in {a.out_dir}, {a.jobs} in parallel"
    )
    t0 = time.time()
    with (
        ThreadPoolExecutor(max_workers=a.jobs) as pool,
        Progress(
            len(jobs), "study", "job", initial=done, every=1 / len(jobs)
        ) as bar,  # a line per job in a log
    ):
        pending: dict[Future, tuple[int, str]] = {}
        for s, m in jobs:
            if cached_result(a.out_dir, s, m, keys[s, m]) is None:
                pending[pool.submit(run_job, a.out_dir, s, m, a.epochs, a.data_dir, a.train_limit)] = (s, m)
        try:
            while pending:
                finished, _ = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
                for f in finished:
                    s, m = pending.pop(f)
                    r = f.result()
                    bar.update(1)
                    bar.set_postfix_str(
                        f"seed {s} {m}: FP32 {100 * r['fp32']['top1']:.2f} %, "
                        f"INT8 {100 * r['int8']['top1']:.2f} %"
                    )
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    res = aggregate(a.out_dir, seeds)
    res["wall_seconds_this_run"] = round(time.time() - t0, 1)
    res["jobs_run_this_run"] = len(jobs) - done
    res["jobs_in_parallel"] = a.jobs
    # The study's wall time is the one of a run that did every job; a resumed or re-aggregated run
    # keeps the figure of the earlier full run with the same seeds.
    prev = read_json(a.json) if a.json.is_file() else {}
    if done == 0:
        res["wall_seconds_full_run"] = res["wall_seconds_this_run"]
    elif prev.get("seeds") == seeds and prev.get("wall_seconds_full_run"):
        res["wall_seconds_full_run"] = prev["wall_seconds_full_run"]
        res["jobs_in_parallel"] = prev.get("jobs_in_parallel", a.jobs)
    write_json_atomic(a.json, res)
    d = res["stride_minus_pool"]["fp32_top1_pp"]
    print(
        f"wrote {a.json}: stride - pool FP32 top-1 {d['mean_diff']:+.3f} pp "
        f"(95 % CI {d['ci_low']:+.3f}..{d['ci_high']:+.3f}, paired t p={d['p_two_sided']:.3g}) "
        f"in {res['wall_seconds_this_run']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
