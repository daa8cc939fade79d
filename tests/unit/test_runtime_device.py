"""The device side: runner input validation, benchmark schema, bundle self-check, ingest."""

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lenet_edge.runtime.contract import check_pixels
from lenet_edge.runtime.errors import ContractError
from lenet_edge.runtime.files import sha256_file
from tests.conftest import ROOT, assert_one_line_error, bench_row, run_cli

pytestmark = [pytest.mark.unit, pytest.mark.xdist_group("runtime_device")]
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    """The per-call floor model: scores = the first 10 pixels of each image."""
    from lenet_edge.export.variants import floor_model

    p = tmp_path_factory.mktemp("m") / "floor.onnx"
    p.write_bytes(floor_model().SerializeToString())
    return p


def first10(x):
    return x.reshape(len(x), -1)[:, :10]


BAD_INPUTS = {
    "int32": (np.zeros((1, 1, 28, 28), np.int32), "dtype must be float32 or uint8"),
    "float64": (np.zeros((1, 1, 28, 28)), "dtype must be float32"),
    "no-channel": (np.zeros((1, 28, 28), np.float32), "shape must be [N,1,28,28]"),
    "rgb": (np.zeros((1, 3, 28, 28), np.float32), "shape must be [N,1,28,28]"),
    "empty": (np.zeros((0, 1, 28, 28), np.float32), "N >= 1"),
    "nan": (np.full((1, 1, 28, 28), np.nan, np.float32), "NaN or Inf"),
    "inf": (np.full((1, 1, 28, 28), np.inf, np.float32), "NaN or Inf"),
    "normalised": (np.full((1, 1, 28, 28), -1.0, np.float32), "0..255"),
    "too-bright": (np.full((1, 1, 28, 28), 256.0, np.float32), "0..255"),
    "scaled-0-1": (np.full((1, 1, 28, 28), 0.5, np.float32), "scaled to"),
    "list": ([[0.0]], "numpy array"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_runner_rejects_bad_input(identity, case):
    from lenet_edge.runtime.runner import OnnxRunner

    x, msg = BAD_INPUTS[case]
    with pytest.raises(ContractError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        OnnxRunner(identity).predict(x)


def test_runner_fuzz_shapes_and_values(identity):
    """Random shapes/dtypes/value ranges: a valid batch round-trips, anything else is a ContractError.

    The value range is drawn as a whole (in range, below 0, above 255), so both branches occur;
    the counts at the end make sure they did."""
    from lenet_edge.runtime.runner import OnnxRunner, SessionConfig

    rng = np.random.default_rng(0)
    plain, bound = OnnxRunner(identity), OnnxRunner(identity, SessionConfig(io_binding=True))
    seen = {"valid": 0, "invalid": 0}
    for _ in range(200):
        ndim = int(rng.integers(2, 6))
        shape = tuple(int(v) for v in rng.integers(0, 4, ndim))
        if rng.random() < 0.6:
            shape = (int(rng.integers(1, 4)), 1, 28, 28)
        dtype = rng.choice([np.float32, np.float32, np.float64, np.uint8, np.int32])
        lo, hi = [(0, 255), (0, 255), (-50, 255), (0, 300)][int(rng.integers(0, 4))]
        x = np.rint(rng.uniform(lo, hi, shape)).astype(dtype)
        valid = (
            x.dtype in (np.float32, np.uint8)
            and x.ndim == 4
            and x.shape[1:] == (1, 28, 28)
            and x.shape[0] >= 1
            and x.min() >= 0
            and x.max() <= 255
        )
        seen["valid" if valid else "invalid"] += 1
        if valid:
            want = first10(x).astype(np.float32)
            assert np.array_equal(plain.predict(x), want) and np.array_equal(bound.predict(x), want)
        else:
            with pytest.raises(ContractError):
                plain.predict(x)
    assert seen["valid"] >= 20 and seen["invalid"] >= 20, seen


def test_static_batch_model_runs_in_its_batch_and_refuses_a_remainder(tmp_path, identity):
    from lenet_edge.export.variants import static_batch
    from lenet_edge.runtime.runner import OnnxRunner

    x = (np.arange(3 * 784, dtype=np.float32) % 256).reshape(3, 1, 28, 28)
    p = tmp_path / "b1.onnx"
    onnx.save(static_batch(onnx.load(str(identity)), 1), str(p))
    r = OnnxRunner(p)
    assert r.static_batch == 1 and np.array_equal(r.predict(x), first10(x))  # image by image
    onnx.save(static_batch(onnx.load(str(identity)), 2), str(p))
    r = OnnxRunner(p)
    assert np.array_equal(r.predict(x[:2]), first10(x[:2]))
    with pytest.raises(ContractError, match="static batch of 2, got 3"):
        r.predict(x)
    with pytest.raises(ContractError, match=f"^{p}: input shape must be"):  # the model is named
        r.predict(x[:, :, :27])


def test_run_sizes_beyond_any_workload_are_refused_before_anything_runs(tmp_path, identity):
    """A static-batch model profiled at another batch, threads past a C int, a batch of 10^11
    images: one clear error each, never onnxruntime's traceback or a 570 TiB allocation."""
    from lenet_edge.export.variants import static_batch
    from lenet_edge.runtime import bench
    from lenet_edge.runtime.bench import main as bench_main
    from lenet_edge.runtime.errors import ConfigError
    from lenet_edge.runtime.profile import main as profile_main
    from lenet_edge.runtime.profile import profile_ops
    from lenet_edge.runtime.runner import SessionConfig

    p = tmp_path / "b1.onnx"
    onnx.save(static_batch(onnx.load(str(identity)), 1), str(p))
    with pytest.raises(ConfigError, match="static batch of 1; --batch 2 cannot run it"):
        profile_ops(p, batch=2, runs=1)
    with pytest.raises(ConfigError, match="threads must be 1..1024"):
        SessionConfig(threads=2**31)
    for argv, why in (
        ([str(identity), "--threads", "2147483648"], "--threads 2147483648: must be <= 1024"),
        ([str(identity), "--batch", "99999999999"], "--batch 99999999999: must be <= 65536"),
        ([str(identity), "--runs", "1000001"], "--runs 1000001: must be <= 1000000"),
    ):
        with pytest.raises(ConfigError, match=why):
            profile_main(argv)
    for argv, why in (
        ([str(identity), "--threads", "2147483648"], "values must be 1..1024"),
        ([str(identity), "--batch", "1,99999999999"], "values must be 1..65536"),
        # a list of 10^11 samples per configuration, grown until memory ran out
        ([str(identity), "--runs", "99999999999"], "--runs 99999999999: must be <= 1,000,000"),
        ([str(identity), "--warmup", "1000001"], "--warmup 1000001: must be <= 1,000,000"),
    ):
        with pytest.raises(ConfigError, match=why):
            bench_main(argv)
    # at least one call per round: --rounds 1000000 timed 10^6 calls although --runs said 10
    parsed = bench.build_parser().parse_args([str(identity), "--runs", "10", "--rounds", "1000000"])
    assert bench.settings(parsed)["rounds"] == 10
    import argparse

    from lenet_edge.quantize.search import check_search_flags
    from lenet_edge.runtime.errors import LenetEdgeError

    for runs, rounds, why in (
        (99999999999, 20, "--runs 99999999999: must be <= 1,000,000"),
        (10, 0, "must be >= 1"),
        (10, 10**7, "--rounds 10000000: must be <= 1,000,000"),
    ):
        with pytest.raises(
            LenetEdgeError, match=why
        ):  # search and search-litert, before any candidate is built
            check_search_flags(argparse.Namespace(runs=runs, rounds=rounds))
    assert check_search_flags(argparse.Namespace(runs=10, rounds=20)) == 10  # as bench: clamped, not refused


@pytest.mark.parametrize(
    ("value", "threads", "warned"),
    [("1 (uint8-transpose)", 2, True), ("1 (uint8-transpose)", 1, False), ("2", 2, False), ("x", 4, False)],
)
def test_a_model_tuned_for_fewer_threads_warns_a_session_with_more(
    tmp_path, identity, caplog, value, threads, warned
):
    """A file whose metadata says it was tuned for one intra-op thread (the search's uint8-transpose
    form) warns once, naming the file and the pass, when a session gives it more; unreadable metadata
    is ignored, not an error."""
    import logging

    from lenet_edge.export.onnx_export import set_metadata
    from lenet_edge.runtime.runner import TUNED_FOR_THREADS, SessionConfig, load_runner

    m = onnx.load(identity)
    set_metadata(m, {TUNED_FOR_THREADS: value})
    f = tmp_path / "tuned.onnx"
    onnx.save(m, f)
    with caplog.at_level(logging.WARNING, logger="lenet_edge.runtime.runner"):
        r = load_runner(f, SessionConfig(threads=threads))
    said = [rec.getMessage() for rec in caplog.records]
    assert bool(said) == warned, said
    if warned:
        (line,) = said
        assert "tuned.onnx" in line and "uint8-transpose" in line and f"with {threads}" in line
    assert r.info()["tuned_for_threads"] == (int(value[0]) if value[0].isdigit() else None)
    x = np.zeros((2, 1, 28, 28), np.uint8)
    assert np.array_equal(r.predict(x), first10(x.astype(np.float32)))


@pytest.mark.parametrize("content", [b"", b"not onnx at all", None], ids=["empty", "garbage", "truncated"])
def test_runner_rejects_bad_model_files(tmp_path, identity, content):
    from lenet_edge.runtime.runner import OnnxRunner

    p = tmp_path / "m.onnx"
    p.write_bytes(content if content is not None else identity.read_bytes()[:40])
    with pytest.raises(ContractError, match=r"m.onnx: onnxruntime cannot load the model"):
        OnnxRunner(p)
    with pytest.raises(ContractError, match="model file not found"):
        OnnxRunner(tmp_path / "missing.onnx")


def test_bench_cli_bad_model_is_one_line(tmp_path):
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(b"\x08\x07")
    assert_one_line_error(
        run_cli(
            "-m",
            "runtime.bench",
            str(bad),
            "--batch",
            "1",
            "--threads",
            "1",
            "--runs",
            "10",
            "--json",
            str(tmp_path / "r.json"),
        ),
        "trunc.onnx",
    )
    assert not (tmp_path / "r.json").exists()
    assert_one_line_error(
        run_cli("-m", "runtime.bench", str(bad), "--batch", "x"), "--batch x", "comma-separated integers"
    )


def test_profile_counts_each_op_per_inference_at_the_threads_asked_and_refuses_zero(identity):
    from lenet_edge.runtime.profile import profile_ops

    r = profile_ops(identity, batch=3, runs=20, threads=2)
    assert (r["batch"], r["threads"], r["runs"]) == (3, 2, 20)
    assert r["ops"] and all(v["nodes"] >= 1 and v["us"] >= 0 for v in r["ops"].values())
    assert abs(sum(v["share"] for v in r["ops"].values()) - 1) < 1e-9
    for flag in ("--threads", "--batch", "--runs"):
        assert_one_line_error(run_cli("-m", "runtime.profile", str(identity), flag, "0"), "must be >= 1")


def test_profile_runs_past_the_profilers_event_limit_in_several_sessions(identity, monkeypatch):
    """onnxruntime's profiler keeps 1,000,000 events per session and drops the rest: 120,000 runs
    of `lenet_pool`'s INT8 search file gave 16.9 kernel µs (33.4 measured in sessions) and 0 nodes
    of most ops per run. A profile now runs in
    sessions of as many runs as the limit holds, each session's first run a warm-up left out,
    and a session whose profile lost a run is an error, never a smaller average."""
    from lenet_edge.runtime import profile
    from lenet_edge.runtime.errors import ConfigError

    r = profile.profile_ops(identity, runs=25, chunk=10, progress=False)
    assert (r["runs"], r["sessions"]) == (25, 3)
    one = profile.profile_ops(identity, runs=25, progress=False)
    assert one["sessions"] == 1 and {k: v["nodes"] for k, v in r["ops"].items()} == {
        k: v["nodes"] for k, v in one["ops"].items()
    }  # the same nodes per run, however the runs are split

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 10},
        {"cat": "Node", "name": "a_kernel_time", "ts": 2, "dur": 5, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 20, "dur": 4},
        {"cat": "Node", "name": "a_kernel_time", "ts": 21, "dur": 2, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "a_fence_before", "ts": 21, "dur": 0},
    ]
    runs, kernels = profile._steady_events(events)
    assert [e["ts"] for e in runs] == [20] and [e["ts"] for e in kernels] == [21]  # warm-up left out

    real = profile._steady_events
    monkeypatch.setattr(profile, "_steady_events", lambda ev: (real(ev)[0][1:], real(ev)[1]))
    with pytest.raises(ConfigError, match=r"profiler kept 9 of 10 runs of one session.*use fewer --runs"):
        profile.profile_ops(identity, runs=10, progress=False)


def test_bench_schema_and_ratios(tmp_path, identity):
    from lenet_edge.runtime.bench import SCHEMA, run_bench, to_markdown

    rep = run_bench(
        [identity], [1, 2], [1], ["run", "iobinding"], runs=40, warmup=5, rounds=4, progress=False
    )
    assert rep["schema"] == SCHEMA and set(rep["environment"]) >= {
        "cpu",
        "os",
        "python",
        "numpy",
        "onnxruntime",
    }
    assert rep["environment"]["cpu"]["model"] and isinstance(rep["environment"]["cpu"]["isa_flags"], list)
    assert len(rep["results"]) == 4
    for r in rep["results"]:
        assert (
            r["runs"] == 40
            and r["latency_ms_min"] <= r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        )
        assert r["session_init_ms"] > 0 and r["peak_rss_mb"] > 10 and r["throughput_images_per_s"] > 0
        assert r["session"]["threads"] == 1 and r["session"]["graph_optimization"] == "all"
        assert r["ratio_p50_vs_fp32"] is None  # the floor has no FP32 sibling
    assert "| floor | floor | lenet-edge | onnxruntime | iobinding | 1 | 1 |" in to_markdown(rep)
    assert {r["file_sha256"] for r in rep["results"]} == {sha256_file(identity)}  # the bytes timed


def test_bench_times_a_model_named_relative_to_the_users_folder(tmp_path, identity, monkeypatch):
    # every timing child (round-robin, paired in one process, two in lockstep, search's) runs in the
    # user's folder: a relative path means the user's file (it was "model file not found" from any
    # folder but the package's parent), and a package of the same name there does not shadow ours
    from lenet_edge.quantize.search import pair_files, time_files
    from lenet_edge.runtime.bench import pair_lockstep, paired_ratio, run_bench

    (tmp_path / "m.onnx").write_bytes(identity.read_bytes())
    for decoy in ("lenet_edge", "runtime"):
        (tmp_path / decoy).mkdir()
        (tmp_path / decoy / "__init__.py").write_text("raise SystemExit('decoy imported')\n")
    monkeypatch.chdir(tmp_path)
    rep = run_bench([Path("m.onnx")], [1], [1], ["run"], runs=10, warmup=2, rounds=2, progress=False)
    assert [(r["file"], r["file_sha256"]) for r in rep["results"]] == [("m.onnx", sha256_file(identity))]
    m = pair_lockstep((Path("m.onnx"), "run", "on"), (Path("m.onnx"), "run", "off"), 1, 1, 2, 2, launches=1)
    assert paired_ratio(m["a"], m["b"]) is not None
    assert set(time_files([Path("m.onnx")], runs=10, rounds=2, call="run")) == {"m.onnx"}
    assert pair_files([Path("m.onnx")], Path("m.onnx"), rounds=2, call="run")["m.onnx"] is not None


def test_bench_refuses_two_models_with_one_name_and_a_model_changed_while_timed(
    tmp_path, identity, monkeypatch
):
    import shutil

    from lenet_edge.runtime import bench
    from lenet_edge.runtime.errors import ConfigError

    other = tmp_path / "d" / identity.name
    other.parent.mkdir()
    shutil.copyfile(identity, other)
    with pytest.raises(ConfigError, match="same file name"):
        bench.run_bench([identity, other], [1], [1], ["run"], runs=10, warmup=1, rounds=1, progress=False)
    timed = bench._measure_all

    def rewrite_while_timed(models, *args):
        out = timed(models, *args)
        models[0].write_bytes(models[0].read_bytes() + b" ")  # e.g. a `make search` re-publishing it
        return out

    monkeypatch.setattr(bench, "_measure_all", rewrite_while_timed)
    with pytest.raises(ConfigError, match="changed while it was timed"):
        bench.run_bench([other], [1], [1], ["run"], runs=10, warmup=1, rounds=1, progress=False)


def test_paired_ratio_and_interval():
    from lenet_edge.runtime.bench import paired_ratio

    # a host that is twice as slow for half the rounds moves both sides alike: the ratio stays
    r = paired_ratio([110] * 50 + [220] * 50, [100] * 50 + [200] * 50)
    assert r["ratio"] == pytest.approx(1.1) and r["ci95"] == pytest.approx([1.1, 1.1]) and r["rounds"] == 100
    assert r["p50_us"] == pytest.approx([0.165, 0.15])
    # spread: the order-statistic interval holds the median, and is narrower with more rounds
    q = paired_ratio(list(range(101, 201)), [100] * 100)
    assert q["ci95"][0] < q["ratio"] < q["ci95"][1] and q["ratio"] == pytest.approx(1.505)
    q4 = paired_ratio(list(range(101, 201)) * 4, [100] * 400)
    assert q4["ci95"][1] - q4["ci95"][0] < q["ci95"][1] - q["ci95"][0]
    # a zero, NaN or infinite block, or sides of different length, is no ratio at all
    assert paired_ratio([0, 1], [1, 1]) is None and paired_ratio([1], [0]) is None
    assert paired_ratio([1, 2], [1]) is None and paired_ratio([], []) is None
    assert paired_ratio([float("nan")], [1]) is None


def test_bench_pairs_each_goal_ratio(tmp_path, identity):
    import shutil

    from lenet_edge.runtime.bench import measure_paired, run_bench, to_markdown

    m = measure_paired([((identity, "run"), (identity, "iobinding"))], 1, 1, rounds=4, warmup=2)
    assert len(m) == 1 and len(m[0]["a"]) == len(m[0]["b"]) == 4 and min(m[0]["a"] + m[0]["b"]) > 0
    fp32, int8 = tmp_path / "m.fp32.onnx", tmp_path / "m.int8.qdq.onnx"  # stock FP32, our INT8
    shutil.copyfile(identity, fp32)
    shutil.copyfile(identity, int8)
    rep = run_bench([fp32, int8], [1], [1], ["iobinding"], runs=40, warmup=5, rounds=4, progress=False)
    (s,) = rep["summary"]
    for p in (s["per_runtime"]["onnxruntime"]["int8_over_fp32_paired"], s["lenet_edge_over_stock_paired"]):
        assert p["rounds"] == 20 and p["ci95"][0] <= p["ratio"] <= p["ci95"][1], p
    assert rep["settings"]["paired_rounds"] == 20 and "] at " in to_markdown(rep)


def test_a_goal_ratio_whose_two_measurements_disagree_is_marked_not_settled(tmp_path, identity):
    """`settled`: the pair within 10 % of the round-robin and an interval narrower than 10 % of it;
    missing sides say nothing, NaN/inf never pass; the table marks an unsettled figure and says why."""
    import shutil

    from lenet_edge.runtime.bench import run_bench, settled, to_markdown

    def pair(ratio, lo, hi):
        return {"ratio": ratio, "ci95": [lo, hi], "rounds": 20, "p50_us": [1.0, 1.0]}

    assert settled(0.86, pair(0.855, 0.849, 0.862)) is True
    assert settled(0.76, pair(1.173, 1.146, 1.200)) is False  # the batch-1 two-thread case
    assert settled(1.02, pair(1.055, 0.976, 1.187)) is False  # agrees, but too wide an interval
    assert settled(None, pair(1.0, 0.99, 1.01)) is None and settled(1.0, None) is None
    for bad in (float("nan"), float("inf"), 0.0):
        assert settled(bad, pair(1.0, 0.99, 1.01)) is False and settled(1.0, pair(bad, 0.99, 1.01)) is False
        assert settled(1.0, pair(1.0, 0.99, bad)) is False
    fp32, int8 = tmp_path / "m.fp32.onnx", tmp_path / "m.int8.qdq.onnx"
    shutil.copyfile(identity, fp32)
    shutil.copyfile(identity, int8)
    rep = run_bench([fp32, int8], [1], [1], ["iobinding"], runs=40, warmup=5, rounds=4, progress=False)
    (s,) = rep["summary"]
    v = s["per_runtime"]["onnxruntime"]
    assert v["int8_over_fp32_settled"] == settled(v["int8_over_fp32"], v["int8_over_fp32_paired"])
    v["int8_over_fp32_paired"] = pair(1.5, 1.4, 1.6)  # as if the pair had found otherwise
    v["int8_over_fp32_settled"] = False
    md = to_markdown(rep)
    assert (
        "1.500 [1.400, 1.600] at 1.0 / 1.0 µs ‡ |" in md
        and "‡ not settled" in md
        and "(batch 1 threads 1): the figure" in md
    )
    v["int8_over_fp32_settled"] = s["lenet_edge_over_stock_settled"] = True
    assert "‡" not in to_markdown(rep)


def test_a_recipe_that_refuses_amx_is_timed_in_its_own_process_and_paired_across_two(tmp_path, identity):
    """A file whose record says `search.amx: off` gets its own latency process and row `amx: off`;
    its goal pairs run in two processes in lockstep; a server child with --amx off has refused AMX;
    a broken record is one clear error."""
    import shutil
    import subprocess
    import sys

    from lenet_edge.runtime import amx
    from lenet_edge.runtime.amx import recipe_amx
    from lenet_edge.runtime.bench import run_bench, to_markdown
    from lenet_edge.runtime.errors import ConfigError
    from lenet_edge.runtime.files import quantize_record_path

    fp32, int8 = tmp_path / "m.fp32.onnx", tmp_path / "m.int8.search.onnx"
    shutil.copyfile(identity, fp32)
    shutil.copyfile(identity, int8)
    rec = quantize_record_path(int8)
    assert recipe_amx(int8) == "on"  # no record: as the runtime chooses
    rec.write_text(json.dumps({"search": {"amx": "off"}}))
    assert recipe_amx(int8) == "off" and recipe_amx(fp32) == "on"
    rep = run_bench([fp32, int8], [1], [1], ["iobinding"], runs=40, warmup=5, rounds=4, progress=False)
    assert {r["file"]: r["amx"] for r in rep["results"]} == {fp32.name: "on", int8.name: "off"}
    (s,) = rep["summary"]
    p = s["per_runtime"]["onnxruntime"]["int8_over_fp32_paired"]
    assert p["processes"] == 2 and p["rounds"] == 20 and p["ci95"][0] <= p["ratio"] <= p["ci95"][1], p
    assert s["per_runtime"]["onnxruntime"]["best_int8"]["amx"] == "off"
    md = to_markdown(rep)
    assert "search (AMX off)" in md and "(2 processes)" in md and "iobinding, AMX off" in md
    from lenet_edge.runtime.bench import pair_lockstep

    m = pair_lockstep((int8, "run", "off"), (fp32, "run", "on"), 1, 1, rounds=6, warmup=1, launches=4)
    assert len(m["a"]) == len(m["b"]) == 6 and min(m["a"] + m["b"]) > 0  # rounds shared over launches
    if amx.applies():  # the server child of the AMX-off side: refused, and says so
        proc = subprocess.run(
            [sys.executable, "-m", "lenet_edge.runtime.bench", "--serve", json.dumps([str(int8), "run"])]
            + ["--batch", "1", "--threads", "1", "--warmup", "1", "--amx", "off"],
            input="block\n",
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        lines = proc.stdout.split()
        assert proc.returncode == 0 and lines[:2] == ["ready", "refused"] and int(lines[2]) > 0, proc
    for bad in ("{", json.dumps({"search": {"amx": "maybe"}})):
        rec.write_text(bad)
        with pytest.raises(ConfigError, match="m.int8.search.quantize.json"):
            recipe_amx(int8)
    # in a device bundle the recipe travels in manifest.json, and a bad value there is one line
    b = tmp_path / "bundle"
    (b / "models").mkdir(parents=True)
    shutil.copyfile(identity, b / "models" / "m.onnx")
    (b / "manifest.json").write_text(json.dumps({"models": [{"file": "models/m.onnx", "amx": "off"}]}))
    assert recipe_amx(b / "models" / "m.onnx") == "off"
    (b / "manifest.json").write_text(json.dumps({"models": [{"file": "models/other.onnx", "amx": "off"}]}))
    assert recipe_amx(b / "models" / "m.onnx") == "on"
    (b / "manifest.json").write_text(json.dumps({"models": [{"file": "models/m.onnx", "amx": 1}]}))
    with pytest.raises(ConfigError, match="manifest.json: models/m.onnx: amx must be"):
        recipe_amx(b / "models" / "m.onnx")


def test_env_parses_arm_cpuinfo():
    from lenet_edge.runtime.env import cpu_info

    arm = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n"
    info = cpu_info(arm)
    assert info["isa_flags"] == ["asimd", "asimddp", "asimdhp"] and "0xd0b" in info["model"]
    x86 = "model name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx avx2 fma avx512_vnni amx_int8\n"
    assert cpu_info(x86)["isa_flags"] == ["amx_int8", "avx", "avx2", "avx512_vnni", "fma", "sse4_1"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, identity, mnist_dir):
    from lenet_edge.runtime.bundle import build_bundle

    d = tmp_path_factory.mktemp("bundle")
    build_bundle([identity], d / "b.tar.gz", mnist_dir)
    with tarfile.open(d / "b.tar.gz") as tar:
        tar.extractall(d, filter="data")
    return d / "lenet-edge-bundle"


def test_bundle_self_check_passes_and_runtime_is_complete(bundle):
    # run from inside the bundle, so only the bundle's own runtime/ is importable
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "runtime.bundle", "check", "."], cwd=bundle, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "1/1 models match the host" in proc.stdout, proc.stderr[-1500:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (
        manifest["inputs"]["images"] == 200 and "requirements/device-linux-aarch64.txt" in manifest["files"]
    )
    assert [m["amx"] for m in manifest["models"]] == ["on"]  # no record refuses AMX for it


def test_every_module_the_shipped_runtime_imports_ships_with_it():
    """runtime/ runs on a device from the bundle's copy alone: every relative import in a shipped
    file (at the top or inside a function, where a missing file shows only when that path runs)
    names a shipped file."""
    import ast

    from lenet_edge.runtime.bundle import RUNTIME_FILES

    missing = []
    for f in RUNTIME_FILES:
        for node in ast.walk(ast.parse((ROOT / "runtime" / f).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                missing += [f"{f} imports .{n}" for n in names if f"{n}.py" not in RUNTIME_FILES]
    assert not missing, missing


def test_the_bundle_runs_its_benchmark_with_its_own_runtime(bundle, tmp_path):
    """The device command (docs/device.md): `python -m runtime.bench --bundle .` in the unpacked
    bundle checks the bundle, then times its models; only the bundle's runtime/ is importable."""
    import subprocess
    import sys

    out = tmp_path / "device.json"
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.bench", "--bundle", ".", "--batch", "1", "--threads", "1"]
        + ["--runs", "20", "--warmup", "2", "--rounds", "2", "-q", "--json", str(out)],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(out.read_text())
    assert [r["file"] for r in report["results"]] and all(r["model"] == "floor" for r in report["results"])
    assert report["bundle_check"]["passed"] is True
    assert "1/1 models match the host" in report["bundle_check"]["summary"]


def test_a_check_result_never_overwrites_a_file_of_the_bundle(bundle, tmp_path):
    """`bundle check B --json B/manifest.json` wrote the result over the manifest it checked (exit
    0); `bench --bundle B --json B/...` likewise."""
    import shutil

    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    before = (d / "manifest.json").read_bytes()
    proc = run_cli("-m", "runtime.bundle", "check", str(d), "--json", str(d / "manifest.json"))
    (line,) = proc.stderr.strip().splitlines()  # refused when parsed: a bundle's manifest
    assert proc.returncode == 2 and "manifest.json: a model or record of the pipeline" in line, line
    req = d / "requirements" / "device-linux-aarch64.txt"  # any other file the bundle lists
    req_before = req.read_bytes()
    out = d / "data" / ".." / req.relative_to(d)
    assert_one_line_error(
        run_cli("-m", "runtime.bench", "--bundle", str(d), "--json", str(out)), "is a file of the bundle"
    )
    assert (d / "manifest.json").read_bytes() == before and req.read_bytes() == req_before


def test_bundle_detects_tampering(bundle, tmp_path):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    m = d / "models" / "floor.onnx"
    m.write_bytes(m.read_bytes()[:-3])
    assert_one_line_error(run_cli("-m", "runtime.bundle", "check", str(d)), "floor.onnx", "sha256 differs")
    assert_one_line_error(run_cli("-m", "runtime.bundle", "check", str(tmp_path)), "not a bundle")


def test_bundle_build_refuses_same_names_and_unreadable_records_and_check_takes_no_reduce_range(
    bundle, tmp_path, identity, mnist_dir
):
    """Two models of one name would ship as one; a quantize record without a true/false/null
    reduce_range is named; a manifest entry without the optional reduce_range is checked, not a
    KeyError."""
    import shutil

    from lenet_edge.runtime.bundle import BundleError, build_bundle

    other = tmp_path / "o" / identity.name
    other.parent.mkdir()
    shutil.copy(identity, other)
    with pytest.raises(BundleError, match=f"{identity.name}: two models of the same name"):
        build_bundle([identity, other], tmp_path / "b.tar.gz", mnist_dir)
    m = tmp_path / "m.int8.qdq.onnx"
    shutil.copy(identity, m)
    for rec in ({}, [1], {"recipe": {"reduce_range": "x"}}):
        (tmp_path / "m.int8.qdq.quantize.json").write_text(json.dumps(rec))
        with pytest.raises(BundleError, match="m.int8.qdq.quantize.json: recipe.reduce_range must be"):
            build_bundle([m], tmp_path / "b.tar.gz", mnist_dir)
    assert not (tmp_path / "b.tar.gz").exists()
    d = tmp_path / "c"
    shutil.copytree(bundle, d)
    manifest = json.loads((d / "manifest.json").read_text())
    for e in manifest["models"]:
        e["precision"] = "int8"
        e.pop("reduce_range", None)
    (d / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("-m", "runtime.bundle", "check", str(d))
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr[-1500:]


def test_a_manifest_that_counts_a_model_twice_hides_code_or_waives_the_check_is_refused(bundle, tmp_path):
    """A second audit: a manifest listing a model twice reported "2/2 models match"; one that left
    runtime/*.py out of 'files' let an edited runtime run unverified; fp32_max_abs_diff 1e300
    passed any output. Each is one line naming manifest.json."""
    import shutil

    for case, edit, needle in (
        ("twice", lambda m: m["models"].append(dict(m["models"][0])), "is listed twice"),
        ("code", lambda m: m["files"].pop("runtime/bench.py"), "runtime/bench.py not listed in 'files'"),
        ("atol", lambda m: m["tolerances"].update(fp32_max_abs_diff=1e300), "in 0..0.01"),
    ):
        d = tmp_path / case
        shutil.copytree(bundle, d)
        manifest = json.loads((d / "manifest.json").read_text())
        edit(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))
        assert_one_line_error(run_cli("-m", "runtime.bundle", "check", str(d)), "manifest.json", needle)


def test_ingest_validates_and_tabulates(tmp_path, identity):
    from lenet_edge.runtime.bench import run_bench
    from lenet_edge.runtime.errors import LenetEdgeError
    from lenet_edge.runtime.ingest import ingest

    rep = run_bench([identity], [1], [1], ["run"], runs=10, warmup=1, rounds=1, progress=False)
    src = tmp_path / "r.json"
    src.write_text(json.dumps(rep))
    dest = ingest(src, tmp_path / "devices")
    assert (
        dest.is_file()
        and "| floor | floor | onnxruntime | run |" in (tmp_path / "devices" / "README.md").read_text()
    )
    src.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(LenetEdgeError, match="not a lenet-edge benchmark result"):
        ingest(src, tmp_path / "devices")
    huge = json.loads(json.dumps(rep))
    huge["results"][0]["latency_ms_p50"] = 1e308  # finite, but "inf µs" once the table scales it
    src.write_text(json.dumps(huge))
    with pytest.raises(LenetEdgeError, match="latency_ms_p50 must be a finite positive number"):
        ingest(src, tmp_path / "devices")
    # the table's name taken by a folder: the device file is not written either
    other = tmp_path / "other"
    (other / "README.md").mkdir(parents=True)
    src.write_text(json.dumps(rep))
    with pytest.raises(LenetEdgeError, match="README.md: is a directory"):
        ingest(src, other)
    assert [p.name for p in other.iterdir()] == ["README.md"]


def test_check_pixels_accepts_contract():
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert check_pixels(x) is x


def test_runtime_files_in_bundle_exist():
    from lenet_edge.runtime.bundle import RUNTIME_FILES

    assert all((ROOT / "runtime" / f).is_file() for f in RUNTIME_FILES)


def test_goal_summary_picks_the_fastest_per_runtime_and_stock_vs_ours():
    from pathlib import Path

    from lenet_edge.runtime.bench import is_stock, summarize_goals

    assert is_stock(Path("lenet_pool.fp32.onnx")) and is_stock(Path("lenet_pool.stock.int8.full.tflite"))
    assert not is_stock(Path("lenet_pool.fp32.opt.b1.onnx")) and not is_stock(
        Path("lenet_pool.int8.full.tflite")
    )

    def row(file, fmt, rt, us, stock):
        return bench_row(file, fmt, us, rt, stock)

    rows = [
        row("m.fp32.onnx", "fp32", "onnxruntime", 40, True),
        row("m.fp32.opt.onnx", "fp32.opt", "onnxruntime", 30, False),
        row("m.int8.qdq.onnx", "int8.qdq", "onnxruntime", 60, False),
        row("m.stock.fp32.tflite", "stock.fp32.tflite", "ai-edge-litert", 20, True),
        row("m.int8.full.tflite", "int8.full.tflite", "ai-edge-litert", 16, False),
    ]
    (s,) = summarize_goals(rows)
    assert s["per_runtime"]["onnxruntime"]["int8_over_fp32"] == pytest.approx(2.0)
    assert s["per_runtime"]["ai-edge-litert"]["int8_over_fp32"] == pytest.approx(0.8)
    assert (
        s["best_lenet_edge"]["file"] == "m.int8.full.tflite"
        and s["best_stock"]["file"] == "m.stock.fp32.tflite"
    )
    assert s["lenet_edge_over_stock"] == pytest.approx(0.8)


def test_goal_sides_are_checked_by_pairs_before_the_goal(monkeypatch):
    """A row within 1.15x of a side's round-robin best replaces it only if its paired interval lies
    wholly below 0.995; rows further away are never paired; a failed pair (None) changes nothing;
    the p50 ratios follow the new sides and the Markdown names the change."""
    from pathlib import Path

    from lenet_edge.runtime import bench

    def row(file, fmt, us, stock=False):
        return bench_row(file, fmt, us, "onnxruntime", stock)

    rows = [
        row("m.int8.a.onnx", "int8.a", 30),  # the round-robin's fastest INT8
        row("m.int8.b.onnx", "int8.b", 32),  # close, and faster when paired: replaces it
        row("m.int8.c.onnx", "int8.c", 33),  # close, paired 0.99 [0.98, 0.998]: not clearly faster
        row("m.int8.d.onnx", "int8.d", 40),  # not close: never paired
        row("m.fp32.onnx", "fp32", 36, stock=True),  # stock FP32, alone on its side
        row("m.fp32.x.onnx", "fp32.x", 37),  # close to it, its pair failed (None)
    ]
    ratios = {
        "m.int8.b.onnx": {"ratio": 0.90, "ci95": [0.88, 0.93], "rounds": 20, "p50_us": [27.0, 30.0]},
        "m.int8.c.onnx": {"ratio": 0.99, "ci95": [0.98, 0.998], "rounds": 20, "p50_us": [29.7, 30.0]},
        "m.fp32.x.onnx": None,
    }
    asked = []

    def fake_pairs(pairs, by_name, b, t, rounds, warmup):
        asked.extend(pairs)
        return {p: ratios[p[0][0]] for p in pairs}

    monkeypatch.setattr(bench, "_run_pairs", fake_pairs)
    (s,) = summary = bench.summarize_goals(rows)
    assert s["per_runtime"]["onnxruntime"]["int8_over_fp32"] == pytest.approx(30 / 36)
    bench._confirm_sides(summary, {r["file"]: Path(r["file"]) for r in rows}, 20, 5, lambda _: None)
    assert {a[0] for a, _ in asked} == {"m.int8.b.onnx", "m.int8.c.onnx", "m.fp32.x.onnx"}
    v = s["per_runtime"]["onnxruntime"]
    i8 = v["best_int8"]
    assert i8["file"] == "m.int8.b.onnx" and i8["round_robin_best"]["file"] == "m.int8.a.onnx"
    assert i8["round_robin_best"]["vs_chosen"]["ratio"] == 0.90
    assert [c["file"] for c in i8["close"]] == ["m.int8.c.onnx"]
    assert v["best_fp32"]["file"] == "m.fp32.onnx" and "round_robin_best" not in v["best_fp32"]
    assert v["int8_over_fp32"] == pytest.approx(32 / 36)
    assert s["best_lenet_edge"]["file"] == "m.int8.b.onnx"
    assert s["lenet_edge_over_stock"] == pytest.approx(32 / 36)
    from lenet_edge.runtime.env import environment

    md = bench.to_markdown({"environment": environment(), "results": [], "summary": summary})
    assert "best_int8: m.int8.a.onnx (run) 30.0 µs → m.int8.b.onnx (run)" in md


def test_results_name_the_code_and_command_they_were_made_with(tmp_path, monkeypatch):
    import subprocess

    from lenet_edge.runtime.env import code_version, command_line, provenance_text

    assert code_version(tmp_path) is None  # not a git checkout (a device bundle): nothing guessed
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert code_version(tmp_path) == {"git_commit": head, "dirty": False}
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert code_version(tmp_path)["dirty"] is False
    (tmp_path / "f.txt").write_text("b")
    assert code_version(tmp_path) == {"git_commit": head, "dirty": True}
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert code_version(tmp_path) is None  # no git on the machine
    monkeypatch.undo()

    assert (
        command_line("bench", ["a model.onnx", "--batch", "1,64"])
        == "lenet-edge bench 'a model.onnx' --batch 1,64"
    )
    env = {"lenet_edge_code": {"git_commit": head, "dirty": True}}
    text = provenance_text({"command": "lenet-edge bench m.onnx", "environment": env})
    assert (
        text == f"Command: `lenet-edge bench m.onnx`; code: lenet-edge {head[:12]} with uncommitted changes."
    )
    assert provenance_text({"environment": {}}) == ""


def test_xnnpack_int8_delegate_is_made_only_for_tflite_runtime_2_14(monkeypatch, tmp_path):
    # LiteRT's default delegate already runs int8; another tflite-runtime release may lay out the
    # options differently; without the wheel's library there is nothing to call: None, the default
    import types

    from lenet_edge.runtime.runner import xnnpack_int8_delegate

    mod = types.SimpleNamespace(__file__=str(tmp_path / "interpreter.py"))  # no _pywrap_*.so beside it
    monkeypatch.delenv("LENET_EDGE_XNNPACK_INT8", raising=False)
    assert xnnpack_int8_delegate(mod, "ai-edge-litert", "2.14.0", 1) is None
    assert xnnpack_int8_delegate(mod, "tflite-runtime", "2.13.0", 1) is None
    assert xnnpack_int8_delegate(mod, "tflite-runtime", "2.14.0", 1) is None  # no library
    (tmp_path / "_pywrap_tensorflow_interpreter_wrapper.so").write_bytes(b"not an ELF file")
    assert xnnpack_int8_delegate(mod, "tflite-runtime", "2.14.0", 1) is None  # OSError, not a crash
    monkeypatch.setenv("LENET_EDGE_XNNPACK_INT8", "0")
    assert xnnpack_int8_delegate(mod, "tflite-runtime", "2.14.0", 1) is None


def test_the_tflite_interpreter_asked_for_is_the_one_used_or_an_error(monkeypatch, tmp_path):
    """LENET_EDGE_TFLITE=tflite_runtime / litert / ` tflite-runtime` silently took the default
    interpreter, and ai-edge-litert asked for but missing fell back to tflite-runtime: a benchmark
    then measured another interpreter under the name asked for. LENET_EDGE_XNNPACK_INT8=off left
    the int8 delegate on."""
    import types

    from lenet_edge.runtime.errors import ConfigError, ContractError
    from lenet_edge.runtime.runner import _tflite_interpreter, xnnpack_int8_delegate

    for pkg in ("ai_edge_litert", "tflite_runtime"):  # stand-ins, whatever this venv has
        top = types.ModuleType(pkg)
        top.__version__ = "9.9"
        monkeypatch.setitem(sys.modules, pkg, top)
        monkeypatch.setitem(sys.modules, f"{pkg}.interpreter", types.ModuleType(f"{pkg}.interpreter"))
    monkeypatch.delenv("LENET_EDGE_TFLITE", raising=False)
    assert _tflite_interpreter()[1:] == ("ai-edge-litert", "9.9")
    monkeypatch.setenv("LENET_EDGE_TFLITE", "tflite-runtime")
    assert _tflite_interpreter()[1] == "tflite-runtime"
    for bad in ("tflite_runtime", "litert", " tflite-runtime", "TFLITE-RUNTIME"):
        monkeypatch.setenv("LENET_EDGE_TFLITE", bad)
        with pytest.raises(
            ConfigError, match=r"LENET_EDGE_TFLITE=.*expected ai-edge-litert or tflite-runtime"
        ):
            _tflite_interpreter()
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # not installed
    monkeypatch.setenv("LENET_EDGE_TFLITE", "ai-edge-litert")
    with pytest.raises(
        ContractError, match="LENET_EDGE_TFLITE=ai-edge-litert but ai_edge_litert is not installed"
    ):
        _tflite_interpreter()
    monkeypatch.delenv("LENET_EDGE_TFLITE")
    assert _tflite_interpreter()[1] == "tflite-runtime"  # unset: the first installed
    mod = types.SimpleNamespace(__file__=str(tmp_path / "interpreter.py"))
    for bad in ("off", "false", " 0", "no"):
        monkeypatch.setenv("LENET_EDGE_XNNPACK_INT8", bad)
        with pytest.raises(ConfigError, match="LENET_EDGE_XNNPACK_INT8="):
            xnnpack_int8_delegate(mod, "tflite-runtime", "2.14.0", 1)


def test_native_log_drops_tflites_info_lines_and_keeps_the_rest(capfd, monkeypatch):
    """What native code writes to fd 2 inside the block is taken: TFLite's per-load INFO line goes,
    other lines come back on stderr after it; with -v fd 2 is left alone."""
    import os

    from lenet_edge.runtime.runner import _native_lines, native_log

    monkeypatch.delenv("LENET_EDGE_VERBOSE", raising=False)
    said: list[str] = []
    with native_log(said):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nWARNING: kept\n")
    assert said == ["INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", "WARNING: kept"]
    assert _native_lines(said) == ["WARNING: kept"]
    assert capfd.readouterr().err == ""  # the caller decides what to print
    said = []
    with pytest.raises(RuntimeError), native_log(said):  # fd 2 comes back on an exception too
        os.write(2, b"ERROR: boom\n")
        raise RuntimeError
    os.write(2, b"after\n")
    assert said == ["ERROR: boom"] and capfd.readouterr().err == "after\n"
    monkeypatch.setenv("LENET_EDGE_VERBOSE", "1")
    said = []
    with native_log(said):
        os.write(2, b"INFO: shown\n")
    assert said == [] and capfd.readouterr().err == "INFO: shown\n"
    monkeypatch.delenv("LENET_EDGE_VERBOSE")
    monkeypatch.setattr("tempfile.TemporaryFile", lambda: (_ for _ in ()).throw(OSError("read-only")))
    with native_log(said):  # no temp folder to write to: fd 2 as it was, no error
        os.write(2, b"INFO: shown too\n")
    assert said == [] and capfd.readouterr().err == "INFO: shown too\n"


def test_a_model_file_name_that_is_not_utf8_is_named_as_such(tmp_path, identity):
    """onnxruntime takes the path as UTF-8 text: a name with undecodable bytes gave its pybind
    'incompatible constructor arguments' inside our error line."""
    import os
    import shutil

    from lenet_edge.runtime.runner import load_runner

    odd = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.onnx"))
    shutil.copy(identity, odd)
    with pytest.raises(ContractError, match="the file name is not valid UTF-8"):
        load_runner(odd)
