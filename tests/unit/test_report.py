"""The report's statistics, image transforms, study aggregation and report builder (no training)."""

import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats as sps

from lenet_edge.report import stats, transforms
from lenet_edge.report.build import build
from lenet_edge.report.study import aggregate, pack_bits
from lenet_edge.workflow import comparison
from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit


# -- statistics against known values ---------------------------------------------------------


def test_summary_known_values():
    s = stats.summary([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2)
    assert s["ci_low"] == pytest.approx(2 - half) and s["ci_high"] == pytest.approx(2 + half)


def test_paired_t_hand_case_and_scipy():
    # differences 1, 1, 1, 3: mean 1.5, sd 1, t = 1.5 / (1 / 2) = 3, df 3
    r = stats.paired_t([2, 3, 4, 7], [1, 2, 3, 4])
    assert r["mean_diff"] == 1.5 and r["sd_diff"] == 1.0 and r["t"] == pytest.approx(3.0) and r["df"] == 3
    assert r["p_two_sided"] == pytest.approx(sps.ttest_rel([2, 3, 4, 7], [1, 2, 3, 4]).pvalue)
    assert r["ci_low"] < 1.5 < r["ci_high"]


def test_paired_t_rejects_unpaired_input():
    with pytest.raises(ValueError):
        stats.paired_t([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        stats.paired_t([1], [2])


def test_wilcoxon_exact_matches_scipy():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.normal(size=6), rng.normal(size=6)
        want = sps.wilcoxon(a, b, method="exact").pvalue
        assert stats.wilcoxon_exact(a, b)["p_two_sided"] == pytest.approx(want)
    assert stats.wilcoxon_exact([1, 2, 3, 4, 5], [0] * 5)["p_two_sided"] == pytest.approx(2 / 32)


def test_mcnemar_hand_case():
    # 3 images only the first gets right, 0 the other way: P(X >= 3 | n=3) = 1/8
    a = np.array([1, 1, 1, 1, 0], bool)
    b = np.array([0, 0, 0, 1, 0], bool)
    r = stats.mcnemar_exact(a, b)
    assert (r["ref_only_correct"], r["new_only_correct"]) == (3, 0)
    assert r["p_new_worse"] == pytest.approx(1 / 8) and r["p_two_sided"] == pytest.approx(1 / 4)


def test_binomial_standard_error():
    assert stats.binomial_se_pp(0.98, 10000) == pytest.approx(0.14, abs=0.001)


# -- transforms --------------------------------------------------------------------------------


def _blob():
    im = np.zeros((1, 28, 28), np.float32)
    im[0, 10:15, 11:16] = 200
    im[0, 12, 13] = 255
    return im


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_shift_moves_mass_by_k(k):
    im = _blob()
    c0 = transforms.centre_of_mass(im)[0]
    for dx, dy in ((k, 0), (-k, 0), (0, k), (0, -k)):
        c = transforms.centre_of_mass(transforms.shift(im, dx, dy))[0]
        assert c == pytest.approx(c0 + [dy, dx])
        assert transforms.shift(im, dx, dy).sum() == im.sum()  # nothing fell off the edge


def test_shift_past_the_edge_loses_pixels_and_zero_is_identity():
    im = _blob()
    assert np.array_equal(transforms.shift(im, 0, 0), im)
    assert transforms.shift(im, 20, 0).sum() == 0
    assert transforms.shift(im, 30, 0).sum() == 0


def test_rotation_and_scale():
    im = _blob()
    assert np.allclose(transforms.rotate(im, 0), im, atol=1e-3)
    assert np.allclose(transforms.scale(im, 1.0), im, atol=1e-3)
    # 90° counter-clockwise (y down): a point above the centre moves to its left
    top = np.zeros((1, 28, 28), np.float32)
    top[0, 5, 13:15] = 255
    r, c = transforms.centre_of_mass(transforms.rotate(top, 90))[0]
    assert r == pytest.approx(13.5, abs=0.6) and c < 8
    # scaling about the centre scales the offset of the centroid
    off = transforms.centre_of_mass(im)[0] - 13.5
    assert transforms.centre_of_mass(transforms.scale(im, 1.2))[0] - 13.5 == pytest.approx(1.2 * off, abs=0.1)
    out = transforms.rotate(im, 17)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    with pytest.raises(ValueError):
        transforms.scale(im, 0)


def test_condition_list():
    conds = transforms.conditions()
    fams = [c[0] for c in conds]
    assert fams.count("none") == 1 and fams.count("shift") == 16 and fams.count("rotate") == 8
    assert fams.count("scale") == 4


# -- study aggregation and the report on fixture results ----------------------------------------


def _fake_invariance(base):
    conds = transforms.conditions()
    top1 = {}
    for key, drop in ((".fp32", 0.0), (".int8.qdq", 0.001)):
        accs = [base - drop - (0.02 * c[1] if c[0] in ("shift",) else 0.001 * abs(c[1] - 1)) for c in conds]
        top1[key] = accs
    return {"conditions": [{"family": f, "magnitude": m, "label": lb} for f, m, lb, _ in conds], "top1": top1}


def _fake_records(seeds, gap, epochs=10):
    rng = np.random.default_rng(0)
    out = {}
    for m in comparison():
        out[m] = []
        for s in seeds:
            base = 0.987 + (gap if m == "lenet_stride" else 0) + 0.0005 * s
            inv = _fake_invariance(base)
            inv["top1"] = {f"{m}{k}": v for k, v in inv["top1"].items()}
            correct = rng.random(10000) < base
            out[m].append(
                {
                    "model": m,
                    "seed": s,
                    "epochs": epochs,
                    "fp32": {"top1": base, "top2": 0.997, "bytes": 250000},
                    "int8": {
                        "top1": base - 0.0001,
                        "top2": 0.997,
                        "bytes": 70000,
                        "agreement_with_fp32": 0.9993,
                        "accuracy_drop_pp": 0.01,
                        "mcnemar": {"p_new_worse": 0.5},
                    },
                    "checkpoint_sha256": "0" * 64,
                    "seconds": {"train": 1, "total": 2},
                    "invariance": inv,
                    "correct": {"fp32": pack_bits(correct), "int8": pack_bits(correct)},
                }
            )
    return out


def _fake_study(root, seeds, gap, epochs=10, train_limit=None):
    """Cached job records as a finished study leaves them (the engine's own files)."""
    from lenet_edge import jobs
    from lenet_edge.report.study import study_jobs

    recs = _fake_records(seeds, gap, epochs)
    root.mkdir(parents=True, exist_ok=True)
    for p in jobs.prepare(study_jobs(seeds, tuple(comparison()), epochs, train_limit, None)):
        rec = recs[p.job.key["model"]][seeds.index(p.job.key["seed"])]
        body = {"schema": jobs.SCHEMA, "key": p.key, "record": rec}
        jobs.record_path(root, p).write_text(json.dumps(body))
    return recs


def test_aggregate_detects_a_real_gap(tmp_path):
    res = aggregate(_fake_records([0, 1, 2, 3, 4], gap=0.002), [0, 1, 2, 3, 4])
    t = res["stride_minus_pool"]["fp32_top1_pp"]
    assert t["mean_diff"] == pytest.approx(0.2) and t["sd_diff"] == pytest.approx(0, abs=1e-9)
    assert res["stride_minus_pool"]["seeds_stride_better_fp32"] == 5
    assert res["models"]["lenet_pool"]["int8_drop_pp"]["mean"] == pytest.approx(0.01)
    curve = res["invariance"]["lenet_pool.fp32"]["shift"]
    assert curve["magnitude"] == [0, 1, 2, 3, 4] and curve["mean"][0] > curve["mean"][-1]


def _results_dir(tmp_path, with_study=True):
    res = tmp_path / "results"
    res.mkdir()
    shutil.copy(ROOT / "results" / "reference.json", res / "reference.json")
    if with_study:
        agg = aggregate(_fake_records([0, 1, 2], gap=0.001), [0, 1, 2])
        agg["jobs_in_parallel"] = 2
        (res / "study.json").write_text(json.dumps(agg))
    return res


def test_report_builds_from_fixture_results(tmp_path):
    res = _results_dir(tmp_path)
    md = build(res, tmp_path / "no-onnx", tmp_path / "out")
    text = md.read_text()
    assert "The blog's table, reproduced" in text and "61,706" in text and "98.10 %" in text
    assert "Stride − pool, FP32 top-1: +0.100 pp" in text
    assert "make arm-check" in text and "make tflite" in text  # missing inputs are named
    for png in ("pareto.png", "seeds.png", "invariance.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "What to deploy" in text and "On a Raspberry Pi we would ship" in text


def test_report_without_study_says_how_to_make_it(tmp_path):
    md = build(_results_dir(tmp_path, with_study=False), tmp_path / "none", tmp_path / "out")
    assert "make study SEEDS=5" in md.read_text()


def test_report_corrupt_result_file_is_one_line(tmp_path):
    res = _results_dir(tmp_path, with_study=False)
    (res / "study.json").write_text("{not json")
    proc = run_cli("-m", "lenet_edge.report", "--results", str(res), "--out-dir", str(tmp_path / "out"))
    assert_one_line_error(proc, "study.json", "not a readable result file")
    assert not (tmp_path / "out" / "REPORT.md").exists()


def test_study_needs_two_seeds():
    assert_one_line_error(run_cli("-m", "lenet_edge.report.study", "--seeds", "1"), "--seeds 1")


def test_study_resumes_from_cached_jobs_without_training(tmp_path):
    _fake_study(tmp_path / "study", [0, 1, 2], gap=0.001)
    out = tmp_path / "study.json"
    proc = run_cli(
        "-m",
        "lenet_edge.report.study",
        "--seeds",
        "3",
        "--out-dir",
        str(tmp_path / "study"),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 cached" in proc.stdout
    res = json.loads(out.read_text())
    assert res["seeds"] == [0, 1, 2] and res["stride_minus_pool"]["fp32_top1_pp"][
        "mean_diff"
    ] == pytest.approx(0.1)


def test_study_cache_key_covers_epochs_limit_data_and_code(tmp_path, monkeypatch):
    """A short smoke study's cached jobs must never stand in for the real study's."""
    from lenet_edge import jobs
    from lenet_edge.report.study import study_jobs

    def one(epochs, limit):
        return jobs.prepare(study_jobs([0], ("lenet_pool",), epochs, limit, None))[0]

    _fake_study(tmp_path / "smoke", [0], gap=0.0, epochs=1, train_limit=1280)
    assert jobs.cached(tmp_path / "smoke", one(10, None)) is None
    smoke = one(1, 1280)
    assert jobs.cached(tmp_path / "smoke", smoke) is not None
    assert one(1, None).id != smoke.id  # the limit alone changes the key
    assert set(smoke.key["inputs"]) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }
    monkeypatch.setattr(jobs, "code_sha256", lambda *m: "other code")
    assert one(1, 1280).id != smoke.id


def test_report_is_reproducible_byte_for_byte(tmp_path):
    res = _results_dir(tmp_path)
    a = build(res, tmp_path / "no-onnx", tmp_path / "a").read_bytes()
    b = build(res, tmp_path / "no-onnx", tmp_path / "b").read_bytes()
    assert a == b
    assert (tmp_path / "a" / "seeds.png").read_bytes() == (tmp_path / "b" / "seeds.png").read_bytes()


def test_board_estimates_are_labelled_as_estimates_with_their_band():
    from lenet_edge.report.build import estimate_lines

    assert estimate_lines(None) == [] and estimate_lines({"cycle_estimates": None}) == []
    rows = [
        {
            "cpu": "cortex-a76",
            "model": "m.int8.onnx",
            "us_estimate_raw": 96.0,
            "us_estimate_calibrated": 33.8,
        },
        {
            "cpu": "cortex-a72",
            "model": "m.int8.onnx",
            "us_estimate_raw": 158.0,
            "us_estimate_calibrated": None,
        },
    ]
    cal = {"factor": 0.352, "loo_min": -0.09, "loo_max": 0.06}
    text = "\n".join(estimate_lines({"cycle_estimates": {"rows": rows, "calibration": cal}}))
    assert "**estimates**" in text and "not measurements" in text and "-9 % .. +6 %" in text
    assert "| `m.int8.onnx` | 158 / – | 96 / 34 |" in text
    two = {**cal, "model": "simd+scalar", "factor_simd": 0.486, "factor_scalar": 0.261}
    text = "\n".join(estimate_lines({"cycle_estimates": {"rows": rows, "calibration": two}}))
    assert "× 0.486 SIMD blocks, × 0.261 scalar blocks" in text and "0.352" not in text


def test_real_boards_sit_beside_the_estimate_for_their_core():
    from lenet_edge.report.build import board_lines
    from lenet_edge.runtime.env import cpu_info

    pi4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd crc32\nCPU implementer\t: 0x41\n"
    pi4 += "CPU part\t: 0xd08\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    cpu = cpu_info(pi4)
    assert cpu["core"] == "cortex-a72" and cpu["model"].startswith("Raspberry Pi 4")
    assert "core" not in cpu_info("model name\t: Intel(R) Xeon(R)\nflags\t: avx2\n")
    arm = {
        "cycle_estimates": {
            "rows": [
                {
                    "cpu": "cortex-a72",
                    "model": "m.int8.onnx",
                    "us_estimate_raw": 158.0,
                    "us_estimate_calibrated": 55.0,
                },
                {
                    "cpu": "cortex-a76",
                    "model": "m.int8.onnx",
                    "us_estimate_raw": 96.0,
                    "us_estimate_calibrated": 34.0,
                },
            ]
        }
    }
    result = {"m.int8.onnx": 0.050, "other.onnx": 0.010}
    dev = {
        "environment": {"cpu": cpu},
        "results": [
            {"file": f, "batch": 1, "threads": 1, "latency_ms_p50": ms + extra}
            for f, ms in result.items()
            for extra in (0.0, 0.005)  # two call paths: the fastest counts
        ]
        + [{"file": "m.int8.onnx", "batch": 64, "threads": 1, "latency_ms_p50": 0.001}],
    }
    text = "\n".join(board_lines(arm, {"pi4.json": dev}))
    assert "| pi4.json | cortex-a72 | `m.int8.onnx` | 50 | 158 (+216 %) | 55 (+10 %) |" in text
    assert "cortex-a76" not in text and "+10 % .. +10 % over 1 artifact(s)" in text
    assert board_lines(arm, {}) == [] and board_lines(None, {"pi4.json": dev}) == []


def _bench(created, *, mask=None, amx="on", summary=True, runtime="onnxruntime"):
    """A minimal benchmark result: per model, one INT8 row and a goal summary at batch 1, one thread."""
    rows, sums = [], []
    for m in ("lenet_pool", "lenet_stride"):
        best = {"file": f"{m}.int8.search.{created}.onnx", "call": "run", "latency_ms_p50": 0.01}
        fp32 = {**best, "file": f"{m}.fp32.onnx", "latency_ms_p50": 0.02}
        rows.append(
            {"model": m, "format": "int8.search", "file": best["file"], "file_bytes": 70_000}
            | {"runtime": runtime, "batch": 1, "threads": 1, "latency_ms_p50": 0.01}
        )
        side = {"best_int8": best, "best_fp32": fp32, "int8_over_fp32": 0.5}
        sums.append(
            {"model": m, "batch": 1, "threads": 1, "best_stock": None, "lenet_edge_over_stock": None}
            | {"per_runtime": {runtime: side | {"int8_over_fp32_paired": {"ratio": 0.55}}}}
            | {"best_lenet_edge": best | {"runtime": runtime}}
        )
    cpu = {"model": "X", "isa_flags": ["avx2"], **({"isa_mask": mask} if mask else {})}
    return {
        "schema": "lenet-edge/bench/v1",
        "created_unix": created,
        "environment": {"cpu": cpu},
        "settings": {"amx": amx},
        "results": rows,
        **({"summary": sums} if summary else {}),
    }


def test_report_quotes_the_newest_whole_isa_benchmark_and_ships_its_fastest_artifact(tmp_path):
    """Of results/bench/, the newest run on the CPU's whole ISA with a goal summary (not a masked or
    AMX-refused run, not a search or targets file, not an older run); the deployment sentence then
    names its fastest lenet-edge artifact with the paired INT8 / FP32 ratio."""
    from pathlib import Path

    from lenet_edge.report.build import reference_bench

    res = _results_dir(tmp_path)
    b = res / "bench"
    b.mkdir()
    files = {
        "a-old.json": _bench(100),
        "b-new.json": _bench(300),
        "c-masked.json": _bench(900, mask="avx2"),
        "d-amx-off.json": _bench(800, amx="off"),
        "e-tflite-runtime.json": _bench(700, runtime="tflite-runtime"),
        "f-no-summary.json": _bench(600, summary=False),
        "g.search.json": {"models": [], "created_unix": 999},
    }
    for name, data in files.items():
        (b / name).write_text(json.dumps(data))
    f, bench = reference_bench(b)
    assert Path(f).name == "b-new.json" and bench["created_unix"] == 300
    (b / "b-new.json").unlink()
    (b / "a-old.json").unlink()  # no whole-ISA run left: the newest benchmark of any kind
    assert Path(reference_bench(b)[0]).name == "c-masked.json"
    assert reference_bench(tmp_path / "none") == (None, None)
    (b / "b-new.json").write_text(json.dumps(_bench(300)))
    text = build(res, tmp_path / "no-onnx", tmp_path / "out").read_text()
    assert "b-new.json" in text
    # the fixture's study ranks stride-2 first
    assert "ship `lenet_stride` as `lenet_stride.int8.search.300.onnx` (onnxruntime)" in text
    assert "best INT8 / best FP32 on onnxruntime 0.55 (paired)" in text


def test_a_default_row_quotes_a_latency_only_for_a_file_of_its_own_size():
    """Section 2's default rows take size and top-1 from reference.json and latency from the
    benchmark: before, the INT8 row showed 70,100 B (the file of an older quantize) beside the p50
    of the 70,150 B file the run timed."""
    from lenet_edge.report.build import best_latency

    bench = _bench(300)
    row = bench["results"][0]
    m, fmt = row["model"], row["format"]
    assert best_latency(bench, m, fmt, 70_000) == pytest.approx(10.0)
    assert best_latency(bench, m, fmt) == pytest.approx(10.0)
    assert best_latency(bench, m, fmt, 70_050) is None
    del row["file_bytes"]  # runs older than the field: nothing to compare
    assert best_latency(bench, m, fmt, 70_050) == pytest.approx(10.0)


def test_report_takes_a_local_stage_record_only_if_it_was_made_from_the_reference_checkpoint(tmp_path):
    """A plain `make` converts its own checkpoints to TFLite: those records describe other weights
    than reference.json, so the report takes the committed copy; a record made from this checkout's
    export of the reference checkpoint is taken as it is."""
    from lenet_edge.report.build import _record

    ref = {"models": {"lenet_pool": {"checkpoint_sha256": "ckpt"}}}
    onnx, res = tmp_path / "onnx", tmp_path / "results"
    (res / "records").mkdir(parents=True)
    onnx.mkdir()
    committed = {"source": {"export_sha256": "old"}, "tag": "committed"}
    (res / "records" / "lenet_pool.tflite.json").write_text(json.dumps(committed))
    export = onnx / "lenet_pool.fp32.export.json"
    local = onnx / "lenet_pool.tflite.json"
    export.write_text(json.dumps({"checkpoint_sha256": "ckpt", "onnx_sha256": "e1"}))
    local.write_text(json.dumps({"source": {"export_sha256": "own-training"}, "tag": "local"}))
    assert _record(onnx, res, "lenet_pool.tflite.json", "lenet_pool", ref)["tag"] == "committed"
    local.write_text(json.dumps({"source": {"export_sha256": "e1"}, "tag": "local"}))
    assert _record(onnx, res, "lenet_pool.tflite.json", "lenet_pool", ref)["tag"] == "local"
    export.write_text(json.dumps({"checkpoint_sha256": "other", "onnx_sha256": "e1"}))  # another checkpoint
    assert _record(onnx, res, "lenet_pool.tflite.json", "lenet_pool", ref)["tag"] == "committed"
    q = {"fp32": {"onnx_sha256": "e1"}, "tag": "local"}  # a quantize record names its source the other way
    (onnx / "lenet_pool.int8.qdq.quantize.json").write_text(json.dumps(q))
    export.write_text(json.dumps({"checkpoint_sha256": "ckpt", "onnx_sha256": "e1"}))
    assert _record(onnx, res, "lenet_pool.int8.qdq.quantize.json", "lenet_pool", ref)["tag"] == "local"
    assert _record(onnx, res, "lenet_stride.tflite.json", "lenet_stride", ref) is None  # neither exists


def test_report_lists_the_runs_fastest_files_with_a_top1_only_from_a_record_of_that_very_file(tmp_path):
    """Section 2 adds the reference run's best INT8 and FP32 file per runtime (the search choice,
    the optimized FP32 graph); a top-1 is quoted only from a record whose sha256 is the timed file's
    (this checkout's, else the committed copy), and for an optimized FP32 graph only if its record
    shows the export's top-1 on every test image, for the export this run timed."""
    from lenet_edge.report.build import ReportError, fastest_files

    ref = json.loads((ROOT / "results" / "reference.json").read_text())
    m, fp32_top1 = "lenet_pool", ref["models"]["lenet_pool"]["fp32"]["test_top1"]
    bench = _bench(300)
    for r in bench["results"]:
        r["file_sha256"] = f"q-{r['model']}"
    row = {"runtime": "onnxruntime", "batch": 1, "threads": 1, "latency_ms_p50": 0.02, "file_bytes": 250_000}
    bench["results"] += [
        row | {"model": m, "format": "fp32.s2d", "file": f"{m}.fp32.s2d.onnx", "file_sha256": "s2d"},
        row | {"model": m, "format": "fp32", "file": f"{m}.fp32.onnx", "file_sha256": "export"},
        row
        | {"model": "lenet_stride", "format": "fp32.opt.b1", "file": "lenet_stride.fp32.opt.b1.onnx"}
        | {"file_sha256": "b1"},
        row
        | {"model": "lenet_stride", "format": "fp32", "file": "lenet_stride.fp32.onnx", "file_sha256": "e2"},
    ]
    sides = {s["model"]: s["per_runtime"]["onnxruntime"] for s in bench["summary"]}
    sides[m]["best_fp32"]["file"] = f"{m}.fp32.s2d.onnx"
    sides["lenet_stride"]["best_fp32"]["file"] = "lenet_stride.fp32.opt.b1.onnx"
    sides[m]["int8_over_fp32_settled"] = False
    onnx, res = tmp_path / "onnx", _results_dir(tmp_path)
    (res / "records").mkdir()
    onnx.mkdir()
    q = f"{m}.int8.search.300.quantize.json"
    (onnx / q).write_text(json.dumps({"onnx_sha256": "another build", "test_top1": 0.5}))
    (res / "records" / q).write_text(json.dumps({"onnx_sha256": f"q-{m}", "test_top1": 0.9877}))
    opt = {"onnx_sha256": "s2d", "fp32": {"onnx_sha256": "export"}}
    opt["check"] = {"passed": True, "images": 10000, "top1_identical": 10000}
    variants = {"fp32": {"sha256": "e2"}, "variants": {"fp32.opt.b1": {"sha256": "b1"}}}
    variants |= {"images": 10000, "top1_identical": 10000}
    (onnx / "lenet_stride.fp32.variants.json").write_text(json.dumps(variants))

    def top1s():
        (res / "records" / f"{m}.fp32.s2d.optimize.json").write_text(json.dumps(opt))
        got = fastest_files(onnx, res, ref, bench)
        return {r["file"]: r["top1"] for rows in got.values() for r in rows}

    t = top1s()
    assert t[f"{m}.int8.search.300.onnx"] == 0.9877  # the committed record of the very file timed
    assert t["lenet_stride.int8.search.300.onnx"] is None  # no record of it
    assert t[f"{m}.fp32.s2d.onnx"] == fp32_top1
    assert t["lenet_stride.fp32.opt.b1.onnx"] == ref["models"]["lenet_stride"]["fp32"]["test_top1"]
    opt["check"]["top1_identical"] = 9999
    assert top1s()[f"{m}.fp32.s2d.onnx"] is None
    opt["check"]["top1_identical"], opt["fp32"]["onnx_sha256"] = 10000, "another export"
    assert top1s()[f"{m}.fp32.s2d.onnx"] is None
    (res / "records" / q).write_text(json.dumps({"onnx_sha256": f"q-{m}", "test_top1": float("nan")}))
    with pytest.raises(ReportError, match="holds NaN or Infinity at test_top1"):  # no command writes one
        top1s()
    # hand-edited records of the wrong shape match nothing, and say so by "–", not a traceback
    (res / "records" / q).write_text(json.dumps({"onnx_sha256": f"q-{m}", "test_top1": "98.77"}))
    opt["fp32"]["onnx_sha256"], opt["check"] = "export", 5
    (onnx / "lenet_stride.fp32.variants.json").write_text(json.dumps(variants | {"variants": [1]}))
    t = top1s()
    assert t[f"{m}.int8.search.300.onnx"] is None and t[f"{m}.fp32.s2d.onnx"] is None
    assert t["lenet_stride.fp32.opt.b1.onnx"] is None
    # a file name that is not a plain name never becomes a record path
    sides["lenet_stride"]["best_int8"]["file"] = "../../outside.onnx"
    bench["results"].append(row | {"model": "lenet_stride", "format": "x", "file": "../../outside.onnx"})
    assert "../../outside.onnx" not in top1s()
    sides["lenet_stride"]["best_int8"]["file"] = "lenet_stride.int8.search.300.onnx"
    (res / "records" / q).write_text(json.dumps({"onnx_sha256": f"q-{m}", "test_top1": 0.9877}))
    opt["check"] = {"passed": True, "images": 10000, "top1_identical": 10000}
    top1s()

    (res / "bench").mkdir()
    (res / "bench" / "run.json").write_text(json.dumps(bench))
    text = build(res, onnx, tmp_path / "out").read_text()
    assert f"| {m} | fastest INT8 on ORT: `int8.search` ONNX | 98.77 % | 70,000 | 1.134 | 10.0 |" in text
    assert f"| {m} | fastest FP32 on ORT: `fp32.s2d` ONNX | {100 * fp32_top1:.2f} % | 250,000 |" in text
    assert "| lenet_stride | fastest INT8 on ORT: `int8.search` ONNX | – | 70,000 |" in text
    # a pair the benchmark did not settle is quoted as such
    assert (
        f"{m}: fastest artifact `{m}.int8.search.300.onnx` (onnxruntime) at 10.0 µs; best INT8 / best "
        in text
    )
    assert "onnxruntime 0.55 (not settled)" in text


def test_a_fastest_tflite_file_of_make_tflite_takes_its_top1_from_the_conversion_record(tmp_path):
    """On the Zen 3 run (2026-12-06) LiteRT's fastest INT8 file was `make tflite`'s `int8.fc.tflite`,
    not the search choice, and the report listed it (and shipped it) with top-1 "–" although the
    committed `<model>.tflite.json` had checked it: the top-1 is now read from that record's output
    of the very file timed (same sha256), in the interpreter timed, stock outputs from its stock
    checks, else "–"."""
    from lenet_edge.report.build import fastest_files

    ref = json.loads((ROOT / "results" / "reference.json").read_text())
    m = "lenet_pool"
    bench = _bench(300, runtime="ai-edge-litert")
    row = {
        "runtime": "ai-edge-litert",
        "batch": 1,
        "threads": 1,
        "latency_ms_p50": 0.02,
        "file_bytes": 69_000,
    }
    bench["results"] += [
        row | {"model": m, "format": "int8.fc", "file": f"{m}.int8.fc.tflite", "file_sha256": "fc"},
        row | {"model": m, "format": "stock.fp16", "file": f"{m}.stock.fp16.tflite", "file_sha256": "f16"},
    ]
    side = next(s for s in bench["summary"] if s["model"] == m)["per_runtime"]["ai-edge-litert"]
    side["best_int8"]["file"], side["best_fp32"]["file"] = f"{m}.int8.fc.tflite", f"{m}.stock.fp16.tflite"
    outputs = {"int8.fc": {"file": f"{m}.int8.fc.tflite", "sha256": "fc"}}
    outputs["stock.fp16"] = {"file": f"{m}.stock.fp16.tflite", "sha256": "f16"}
    checks = {
        "int8_fc": {"top1": 0.9869},
        "int8_full": {"top1": 0.5},
        "stock": {"stock.fp16": {"top1": 0.9871}},
    }
    other = {"int8_fc": {"top1": 0.1}, "stock": {"stock.fp16": {"top1": 0.1}}}  # the other interpreter's
    rec = {"outputs": outputs, "checks": {"tflite-runtime": other, "ai-edge-litert": checks}}
    onnx, res = tmp_path / "onnx", _results_dir(tmp_path)
    onnx.mkdir()
    (res / "records").mkdir()

    def top1s():
        (res / "records" / f"{m}.tflite.json").write_text(json.dumps(rec))
        return {r["file"]: r["top1"] for r in fastest_files(onnx, res, ref, bench)[m]}

    assert top1s() == {f"{m}.int8.fc.tflite": 0.9869, f"{m}.stock.fp16.tflite": 0.9871}
    outputs["int8.fc"]["sha256"] = "another conversion"  # a record of other bytes under that name
    assert top1s()[f"{m}.int8.fc.tflite"] is None
    outputs["int8.fc"]["sha256"], checks["int8_fc"] = "fc", "98.69"  # a hand-edited record: "–"
    assert top1s()[f"{m}.int8.fc.tflite"] is None
    checks["int8_fc"] = {"top1": 0.9869}
    (onnx / f"{m}.tflite.json").write_text(json.dumps({"outputs": {}}))  # this checkout's: not of it
    assert top1s()[f"{m}.int8.fc.tflite"] == 0.9869  # so the committed copy's figure


def test_report_refuses_nan_and_other_shapes_and_keeps_the_old_report(tmp_path):
    """No command writes NaN into a result, so one there is refused by name (it became "+nan pp"
    verdicts); a result file of another shape is one error naming it; a report that fails halfway
    leaves the previous report and plots as they were (no new plots beside an old report)."""
    from lenet_edge.report.build import ReportError

    res, out = _results_dir(tmp_path), tmp_path / "out"
    build(res, tmp_path / "no-onnx", out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    good = json.loads((res / "study.json").read_text())
    for edit, why in (
        (
            lambda s: s.update(jobs_in_parallel=float("nan")),
            "study.json: holds NaN or Infinity at jobs_in_parallel",
        ),
        (lambda s: s["models"].update(x=[1.0, float("inf")]), r"holds NaN or Infinity at models\.x\[1\]"),
        (lambda s: s.pop("jobs_in_parallel"), "study.json: not the shape the pipeline writes"),
        (lambda s: s.update(seeds="0,1,2"), "study.json: not the shape the pipeline writes"),
    ):
        s = json.loads(json.dumps(good))
        edit(s)
        (res / "study.json").write_text(json.dumps(s))
        with pytest.raises(ReportError, match=why):
            build(res, tmp_path / "no-onnx", out)
        assert {
            f.name: f.read_bytes() for f in out.iterdir()
        } == before  # nothing half-replaced, no staging left
    proc = run_cli("-m", "lenet_edge.report", "--results", str(res), "--out-dir", str(out))
    assert_one_line_error(proc, "study.json", "not the shape the pipeline writes")
    # a staging folder left by a killed run (its PID gone) is removed by the next run
    stale = out / ".REPORT.md.4194303.abc.tmp"
    stale.mkdir()
    (res / "study.json").write_text(json.dumps(good))
    build(res, tmp_path / "no-onnx", out)
    assert not stale.exists() and not [f for f in out.iterdir() if f.name.startswith(".")]
    # a place the report cannot take (a folder named REPORT.md) is found before the first rename:
    # the plots were replaced first, then the rename of the report failed
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (out / "REPORT.md").unlink()
    (out / "REPORT.md").mkdir()
    (out / "REPORT.md" / "x").write_text("in the way")
    with pytest.raises(ReportError, match="REPORT.md: is a directory.*previous report is unchanged"):
        build(res, tmp_path / "no-onnx", out)
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == {
        k: v for k, v in before.items() if k != "REPORT.md"
    }
