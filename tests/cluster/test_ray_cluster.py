"""`--backend ray` on a two-node loopback cluster (`make test-cluster`): the same records as the
local backend, bitwise; a worker killed mid-task and a node killed mid-sweep lose and duplicate
nothing; a device kind (a custom resource) sends the benchmark to its node; nothing listens
beyond loopback. Each test stops what it started (the nodes are process groups the test owns).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cluster.loopback import listening_addresses, start_cluster, task_processes, with_descendants
from tests.conftest import ROOT

ray = pytest.importorskip("ray", reason="make test-cluster installs Ray (make setup-cluster)")
pytestmark = pytest.mark.cluster

# 14 recipes of one model: enough jobs to be mid-sweep when something is killed
RECIPES = "qdq-u8s8-pc,qdq-s8s8-pt-rr"


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    args = [
        "--model",
        "lenet_pool",
        "--checkpoint-dir",
        str(ROOT / "results" / "checkpoints"),
        "--out-dir",
        str(d),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "lenet_edge.export", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # a short root: Ray's unix socket paths must stay under 108 characters
    root = tmp_path_factory.mktemp("rc", numbered=True)
    c = start_cluster(root)
    yield c
    c.stop()
    assert not any(n.alive() for n in c.nodes)


def sweep(onnx_dir, out, backend, env=None, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "lenet_edge.quantize.sweep",
        "--model",
        "lenet_pool",
        "--onnx-dir",
        str(onnx_dir),
        "--recipes",
        RECIPES,
        "--backend",
        backend,
        "--out-dir",
        str(out / "jobs"),
        "--json",
        str(out / "sweep.json"),
        "--jobs",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads((out / "sweep.json").read_text())["rows"]


@pytest.fixture(scope="module")
def local_rows(onnx_dir, tmp_path_factory):
    return sweep(onnx_dir, tmp_path_factory.mktemp("local"), "local")


def assert_same_rows(rows, local_rows):
    """Row for row equal to the local backend's; on a difference, say which fields differ."""
    assert len(rows) == len(local_rows)
    for a, b in zip(rows, local_rows, strict=True):
        diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert not diff, (a["recipe"], diff)


def records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "jobs").glob("*.json"))]


def test_nothing_listens_beyond_loopback(cluster):
    pids = set().union(*(n.pids() for n in cluster.nodes))
    addrs = listening_addresses(pids)
    assert addrs, "the cluster holds no listening socket?"
    assert addrs <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addrs


def _sockets_until_done(proc: subprocess.Popen) -> tuple[str, str, set[str]]:
    """(stdout, stderr, every address the process and its descendants listened on while it ran)."""
    seen: set[str] = set()
    while proc.poll() is None:
        seen |= listening_addresses(with_descendants({proc.pid}))
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=600)
    return stdout, stderr, seen


def test_an_instance_started_for_the_run_stays_on_loopback(onnx_dir, local_rows, tmp_path):
    """No RAY_ADDRESS: lenet-edge starts its own Ray instance, listening on loopback only, and
    stops it (nothing of it outlives the run)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = sweep(onnx_dir, tmp_path, "ray", env, wait=False)
    _, stderr, seen = _sockets_until_done(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert seen and seen <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    assert_same_rows(json.loads((tmp_path / "sweep.json").read_text())["rows"], local_rows)


def test_sweep_on_the_cluster_equals_local_bitwise(cluster, onnx_dir, local_rows, tmp_path):
    rows = sweep(onnx_dir, tmp_path, "ray", cluster.driver_env())
    assert_same_rows(rows, local_rows)
    assert len(rows) == 14
    assert json.dumps(rows, sort_keys=True) == json.dumps(local_rows, sort_keys=True)
    ran_on = {r["ran_on"]["node_name"] for r in records(tmp_path)}
    assert ran_on == {"head", "second"}  # both nodes took jobs


def test_study_on_the_cluster_equals_local(cluster, tmp_path):
    """A short study: same checkpoints (sha256), accuracies, per-image correctness, invariance."""

    def study(out, backend, env=None):
        cmd = [
            sys.executable,
            "-m",
            "lenet_edge.report.study",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--train-limit",
            "256",
            "--jobs",
            "2",
            "--backend",
            backend,
            "--out-dir",
            str(out),
            "--json",
            str(out / "study.json"),
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {r["key"]["model"] + str(r["key"]["seed"]): r["record"] for r in records_in(out)}

    def records_in(out):
        return [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "study.json"]

    local = study(tmp_path / "local", "local")
    remote = study(tmp_path / "ray", "ray", cluster.driver_env())
    assert len(local) == 4 and local.keys() == remote.keys()
    for k in local:
        a, b = dict(local[k]), dict(remote[k])
        a.pop("seconds"), b.pop("seconds")  # wall-clock time is the one thing that may differ
        assert a == b, k
    agg = [json.loads((tmp_path / d / "study.json").read_text()) for d in ("local", "ray")]
    assert agg[0]["stride_minus_pool"] == agg[1]["stride_minus_pool"]


def test_a_worker_killed_mid_task_loses_and_duplicates_nothing(cluster, onnx_dir, local_rows, tmp_path):
    proc = sweep(onnx_dir, tmp_path, "ray", cluster.driver_env(), wait=False)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        running = task_processes(cluster.nodes[1]) or task_processes(cluster.nodes[0])
        if running:
            os.kill(running[0], signal.SIGKILL)
            killed = running[0]
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed is not None, "no task was running to kill"
    assert proc.returncode == 0, stderr[-3000:]
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert_same_rows(rows, local_rows)  # every job once, each the same as on the local backend
    recs = records(tmp_path)
    assert len(recs) == len(rows) == len({(r["record"]["model"], r["record"]["recipe"]) for r in recs})
    assert killed not in {r["ran_on"]["pid"] for r in recs}  # its job finished on another worker


def test_a_killed_driver_resumes_with_only_the_missing_jobs(cluster, onnx_dir, local_rows, tmp_path):
    env = {**cluster.driver_env(), "LENET_EDGE_KILL_AT": "jobs.record#4"}
    proc = sweep(onnx_dir, tmp_path, "ray", env, wait=False)
    proc.communicate(timeout=600)
    assert proc.returncode == -9 and len(records(tmp_path)) == 4  # killed right after the 4th record
    again = sweep(onnx_dir, tmp_path, "ray", cluster.driver_env(), wait=False)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    assert "10 ran on" in stdout and "4 cached" in stdout, stdout
    assert_same_rows(json.loads((tmp_path / "sweep.json").read_text())["rows"], local_rows)


def test_a_device_kind_runs_the_benchmark_on_its_node(cluster, onnx_dir, tmp_path):
    model = onnx_dir / "lenet_pool.fp32.onnx"
    cmd = [
        sys.executable,
        "-m",
        "lenet_edge.fleet",
        str(model),
        "--backend",
        "ray",
        "--on",
        "rpi4",
        "--batch",
        "1",
        "--threads",
        "1",
        "--calls",
        "run",
        "--runs",
        "50",
        "--warmup",
        "5",
        "--rounds",
        "2",
        "--json",
        str(tmp_path / "bench.json"),
        "--out-dir",
        str(tmp_path / "jobs"),
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=cluster.driver_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.rpi4.json").read_text())
    assert report["fleet"]["kind"] == "rpi4" and report["results"]
    (rec,) = records(tmp_path)
    assert rec["ran_on"]["node_name"] == "second"  # the only node with {"rpi4": 1}
    # a kind no node has: the job cannot be placed; the driver would wait, so it is not tried here


def test_a_node_killed_mid_sweep_loses_and_duplicates_nothing(cluster, onnx_dir, local_rows, tmp_path):
    """Last in this module: it takes the second node away."""
    proc = sweep(onnx_dir, tmp_path, "ray", cluster.driver_env(), wait=False)
    second = cluster.nodes[1]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not task_processes(second):
        time.sleep(0.05)
    assert task_processes(second), "the second node never ran a task"
    second.kill()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert_same_rows(rows, local_rows)
    recs = records(tmp_path)
    assert len(recs) == len(rows) == len({(r["record"]["model"], r["record"]["recipe"]) for r in recs})
    assert not second.alive()


def test_the_ray_overhead_benchmark_records_its_machine_and_stays_on_loopback(tmp_path):
    """`lenet-edge bench-jobs` (make bench-jobs): the same jobs on both backends, a Ray instance of
    its own listening on loopback only; its JSON names the machine as every results file does, so
    `make publish` can file it (it had no test, and wrote `env`)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "jobs-overhead.json"
    cmd = [sys.executable, "-m", "lenet_edge.jobs", "--count", "4", "--sleep", "0", "--json", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr, seen = _sockets_until_done(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert seen <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    res = json.loads(out.read_text())
    assert res["environment"]["cpu"]["model"] and "env" not in res
    assert res["jobs"] == 4 and res["local_wall_s"] >= 0 and res["ray_start_stop_s"] > 0
    assert "ray overhead" in stdout and str(out) in stdout
