"""Multi-seed study: both models trained, exported, quantized and evaluated with N seeds.

`python -m report.study --seeds 5` (`make study SEEDS=5`) runs one job per (seed, model) through
the pipeline's own CLIs (train -> export -> quantize), then evaluates FP32 and INT8 on the test
set and under the invariance transforms. Jobs run in parallel (`--jobs`, default one per core),
each with one thread, in this process (`--backend local`) or as Ray tasks (`--backend ray`,
lenet_edge/jobs.py). A finished job's record goes to build/study/<key hash>.json, so an
interrupted study resumes where it stopped. The aggregate, with statistics, goes to
results/study.json, which `make report` reads.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.jobs import Job, add_backend_flags, check_jobs, data_arg, data_inputs, describe, run_jobs
from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.errors import ConfigError, LenetEdgeError
from lenet_edge.runtime.files import read_json, sha256_file, write_json_atomic
from lenet_edge.runtime.progress import Progress
from lenet_edge.train import recipe_problem
from lenet_edge.workflow import comparison, model_names

SCHEMA = "lenet-edge/study/v1"
MAX_SEEDS = 1000  # seeds 0..N-1; each trains both models (~1 min each here)
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


STEP_MODULES = ("train.loop", "train.__main__", "export.__main__", "quantize.__main__")


def _step(cmd: list[str], log: Path, what: str) -> None:
    env = {**os.environ, **ONE_THREAD}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        last = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:]
        raise StudyError(f"{what} failed (exit {proc.returncode}): {last[0] if last else ''}")


def study_jobs(
    seeds: list[int], models: tuple[str, ...], epochs: int, train_limit: int | None, data_dir: Path | None
) -> list[Job]:
    """One job per (seed, model). Its key: model, seed, epochs, training limit; the engine adds
    the data files' and the code's hashes (a 1-epoch smoke study never stands in for the real one)."""
    inputs = data_inputs(data_dir)
    return [
        Job(
            "study",
            {"model": m, "seed": s, "epochs": epochs, "train_limit": train_limit},
            "lenet_edge.report.study:study_job",
            {"model": m, "seed": s, "epochs": epochs, "train_limit": train_limit},
            inputs,
            code_modules=STEP_MODULES,
            label=f"seed {s} {m}",
        )
        for m in models
        for s in seeds
    ]


def study_job(payload: dict[str, Any], inputs: dict[str, Path], work: Path) -> dict[str, Any]:
    """train -> export -> quantize -> evaluate for one (seed, model), each step a process with one
    thread; the record carries the accuracies and the per-image correctness the statistics need."""
    model, seed, epochs, limit = payload["model"], payload["seed"], payload["epochs"], payload["train_limit"]
    d = work / f"seed{seed}"
    onnx_dir = d / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    log = d / f"{model}.log"
    py = sys.executable
    data = ["--data-dir", str(data_arg(inputs))]
    lim = ["--train-limit", str(limit)] if limit else []
    t0 = time.time()
    train = ["--model", model, "--seed", str(seed), "--epochs", str(epochs), "--out-dir", str(d)]
    _step([py, "-m", "lenet_edge.train", *train, "--no-progress", *lim, *data], log, "training")
    t_train = time.time() - t0
    export = ["--model", model, "--checkpoint-dir", str(d), "--out-dir", str(onnx_dir)]
    _step([py, "-m", "lenet_edge.export", *export, *data], log, "export")
    quant = ["--model", model, "--onnx-dir", str(onnx_dir), "--no-check", "--no-progress"]
    _step([py, "-m", "lenet_edge.quantize", *quant, *data], log, "quantization")
    evaluate = ["--evaluate-job", str(d), "--model", model]
    _step([py, "-m", "lenet_edge.report.study", *evaluate, *data], log, "evaluation")
    res = read_json(d / f"{model}.eval.json")
    correct = np.load(d / f"{model}.correct.npz")
    res["correct"] = {k: pack_bits(correct[k]) for k in ("fp32", "int8")}
    res["epochs"] = epochs
    # wall-clock times, all under "seconds": the one part of a record that differs between runs
    res["seconds"] |= {"train": round(t_train, 1), "total": round(time.time() - t0, 1)}
    return res


def pack_bits(a: np.ndarray) -> dict[str, Any]:
    return {"n": int(a.size), "bits": base64.b64encode(np.packbits(a.astype(bool))).decode()}


def unpack_bits(d: dict[str, Any]) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(d["bits"]), np.uint8))[: d["n"]].astype(bool)


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
    res["seconds"] = {"train_per_epoch": train_rec.get("seconds_per_epoch")}
    q = read_json(onnx_dir / f"{model}.int8.qdq.quantize.json")
    res["int8"]["agreement_with_fp32"] = q["agreement_with_fp32"]
    res["int8"]["accuracy_drop_pp"] = q["accuracy_drop_pp"]
    res["int8"]["mcnemar"] = q["mcnemar"]
    res["invariance"] = evaluate_invariance([fp32, int8], data_dir, progress=False)
    res["seconds"]["invariance"] = res["invariance"].pop("seconds")  # timings apart from results
    # file names, not the job's temporary folder: a record must not depend on where it ran
    res["invariance"]["models"] = {k: Path(v).name for k, v in res["invariance"]["models"].items()}
    np.savez_compressed(d / f"{model}.correct.npz", **correct)
    write_json_atomic(d / f"{model}.eval.json", res)


def aggregate(records: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """Per-seed rows (each model's job records, in seed order) plus the statistics the report prints."""
    from lenet_edge.quantize.stats import mcnemar_exact
    from lenet_edge.report.invariance import curves
    from lenet_edge.report.stats import paired_t, summary, wilcoxon_exact

    # the pair the study compares: the workflow that names a [study] baseline, and that baseline
    # (result keys keep the blog's names: "stride_minus_pool" = candidate - baseline)
    pool, stride = comparison()
    models = (pool, stride)
    rows = {m: records[m] for m in models}
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
    for s, ra, rb in zip(seeds, rows[pool], rows[stride], strict=True):
        a = {k: unpack_bits(v) for k, v in ra["correct"].items()}
        b = {k: unpack_bits(v) for k, v in rb["correct"].items()}
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
    add_backend_flags(p, default_parallel=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=10, help="default 10 (the blog's recipe)")
    add_common(
        p,
        "out_dir",
        "json",
        out_dir={
            "default": Path("build/study"),
            "help": "the jobs' records, the cache (default build/study)",
        },
        json={"default": Path("results/study.json"), "help": "default results/study.json"},
    )
    p.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke tests)")
    p.add_argument("--data-dir", type=path_arg, default=None)
    p.add_argument("--evaluate-job", type=path_arg, default=None, help=argparse.SUPPRESS)
    add_common(p, "model", model={"default": None, "help": argparse.SUPPRESS})  # an --evaluate-job's model
    a = p.parse_args(argv)
    if a.evaluate_job is not None:  # the job's own process; typed by hand, checked (was a ValueError)
        if not a.evaluate_job.name.removeprefix("seed").isdigit() or a.model not in model_names():
            raise ConfigError(
                "--evaluate-job: an internal flag of a study's jobs (a seedN folder and a model)"
            )
        evaluate_job(a.evaluate_job, a.model, a.data_dir)
        return 0
    if a.seeds < 2:
        raise LenetEdgeError(f"--seeds {a.seeds}: a paired comparison needs at least 2 seeds")
    if a.seeds > MAX_SEEDS:
        raise LenetEdgeError(f"--seeds {a.seeds}: must be <= {MAX_SEEDS} (each trains both models)")
    problem = recipe_problem(epochs=a.epochs, limits=(a.train_limit,))
    if problem:  # before a job starts (each job's training would refuse it on its own)
        raise LenetEdgeError(f"--epochs/--train-limit: {problem}")
    seeds = list(range(a.seeds))
    # Candidate first (the stride-2 net trains ~2x slower), so the last job is not a lone long one.
    models = tuple(reversed(comparison()))
    jobs = study_jobs(seeds, models, a.epochs, a.train_limit, a.data_dir)
    check_jobs(jobs, a.backend)  # Ray missing, data files missing: one line before the plan
    print(f"study: {len(jobs)} jobs ({a.seeds} seeds x {len(models)} models), {a.backend} backend")

    def said(job: Job, r: dict[str, Any]) -> None:
        bar.set_postfix_str(
            f"{job.label}: FP32 {100 * r['fp32']['top1']:.2f} %, INT8 {100 * r['int8']['top1']:.2f} %"
        )

    with Progress(len(jobs), "study", "job", every=1 / len(jobs)) as bar:  # a line per job in a log
        records, stats = run_jobs(jobs, a.out_dir, a.backend, a.jobs, on_record=said, progress=bar)
    print(f"study jobs: {describe(stats)}")
    by_model = {m: [r for j, r in zip(jobs, records, strict=True) if j.key["model"] == m] for m in models}
    res = aggregate(by_model, seeds)
    res["wall_seconds_this_run"] = round(stats.seconds, 1)
    res["jobs_run_this_run"] = stats.ran
    res["jobs_in_parallel"] = a.jobs
    res["backend"] = a.backend
    # The study's wall time is the one of a run that did every job; a resumed or re-aggregated run
    # keeps the figure of the earlier full run with the same seeds.
    prev = read_json(a.json) if a.json.is_file() else {}
    if stats.cached == 0:
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
