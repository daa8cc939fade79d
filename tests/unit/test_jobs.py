"""The job engine's local backend and the parts of the Ray path that need no Ray (lenet_edge/jobs.py).

The Ray backend itself, on a two-node loopback cluster, is tested by `make test-cluster`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from lenet_edge import jobs
from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit


def _jobs(tmp_path, n=5, fail=None, fn="lenet_edge.jobs:noop_job"):
    blob = tmp_path / "input.bin"
    if not blob.exists():
        blob.write_bytes(b"x" * 1000)
    return [
        jobs.Job(
            "t", {"i": i}, fn if i != fail else "lenet_edge.jobs:no_such_job", {"i": i}, {"blob": str(blob)}
        )
        for i in range(n)
    ]


def test_records_come_back_in_order_and_are_cached(tmp_path):
    recs, st = jobs.run_jobs(_jobs(tmp_path), tmp_path / "cache", parallel=2)
    assert [r["i"] for r in recs] == [0, 1, 2, 3, 4] and all(r["bytes"] == 1000 for r in recs)
    assert (st.ran, st.cached) == (5, 0)
    again, st = jobs.run_jobs(_jobs(tmp_path), tmp_path / "cache", parallel=2)
    assert again == recs and (st.ran, st.cached) == (0, 5)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 5  # one record per job


def test_the_key_covers_input_bytes_and_code(tmp_path, monkeypatch):
    jobs.run_jobs(_jobs(tmp_path, n=2), tmp_path / "cache")
    (tmp_path / "input.bin").write_bytes(b"y" * 1000)  # same size, other bytes
    _, st = jobs.run_jobs(_jobs(tmp_path, n=2), tmp_path / "cache")
    assert st.ran == 2
    monkeypatch.setattr(jobs, "code_sha256", lambda *m: "other code")
    _, st = jobs.run_jobs(_jobs(tmp_path, n=2), tmp_path / "cache")
    assert st.ran == 2


def test_a_failed_job_leaves_the_others_cached(tmp_path):
    with pytest.raises(jobs.JobError, match="1 of 4 jobs failed"):
        jobs.run_jobs(_jobs(tmp_path, n=4, fail=2), tmp_path / "cache")
    _, st = jobs.run_jobs(_jobs(tmp_path, n=4), tmp_path / "cache")
    assert (st.ran, st.cached) == (1, 3)


def test_duplicate_jobs_and_missing_inputs_are_refused(tmp_path):
    js = _jobs(tmp_path, n=2)
    with pytest.raises(jobs.ConfigError, match="duplicate"):
        jobs.prepare([js[0], js[0]])
    gone = jobs.Job("t", {"i": 0}, "lenet_edge.jobs:noop_job", {"i": 0}, {"blob": str(tmp_path / "none")})
    with pytest.raises(jobs.ConfigError, match="none: input file"):
        jobs.run_jobs([gone], tmp_path / "cache")
    with pytest.raises(jobs.ConfigError, match="given twice"):
        jobs.check_jobs([js[1], js[0], js[1]], "local")
    assert not (tmp_path / "cache").exists()  # a refused run creates no cache folder


def test_a_run_whose_jobs_all_fail_creates_no_cache_folder(tmp_path, monkeypatch):
    """A failed study left an empty build/study/ behind: the folder comes with the first record."""
    with pytest.raises(jobs.JobError, match="1 of 1 jobs failed"):
        jobs.run_jobs(_jobs(tmp_path, n=1, fail=0), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # refused before anything runs, not at connect
    with pytest.raises(jobs.ConfigError, match="make setup-cluster"):
        jobs.check_jobs(_jobs(tmp_path, n=1), "ray")


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lenet_edge import jobs
    tmp = Path(sys.argv[1])
    (tmp / "input.bin").write_bytes(b"x" * 10)
    js = [jobs.Job("t", {"i": i}, "lenet_edge.jobs:noop_job", {"i": i}, {"blob": str(tmp / "input.bin")})
          for i in range(6)]
    recs, st = jobs.run_jobs(js, tmp / "cache")
    print(st.ran, st.cached, [r["i"] for r in recs])
    """
)


def test_a_killed_driver_resumes_with_only_the_missing_jobs(tmp_path):
    def driver(kill=None):
        env = {"LENET_EDGE_KILL_AT": kill} if kill else {}
        return run_cli("-c", DRIVER, str(tmp_path), env=env)

    killed = driver("jobs.record#3")
    assert killed.returncode == -9  # SIGKILL right after the third record
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))  # records are whole or absent
    resumed = driver()
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split(maxsplit=2) == ["3", "3", "[0, 1, 2, 3, 4, 5]\n"]


def test_a_worker_refuses_other_code_and_checks_input_bytes(tmp_path, monkeypatch):
    spec = {"fn": "lenet_edge.jobs:noop_job", "payload": {"i": 0}, "label": "noop 0", "code_modules": []}
    with pytest.raises(jobs.JobError, match="not the driver's"):
        jobs.ray_job({**spec, "code_sha256": "0" * 64}, {})
    monkeypatch.setenv(jobs.INPUT_CACHE_ENV, str(tmp_path / "cache"))
    blob = b"pixels"
    sha = hashlib.sha256(blob).hexdigest()
    with pytest.raises(jobs.JobError, match="sha256"):
        jobs.materialize("data", sha, blob + b"!", "t10k-images-idx3-ubyte")
    p = jobs.materialize("data", sha, blob, "t10k-images-idx3-ubyte")
    assert p.read_bytes() == blob and p.parent.parent == tmp_path / "cache"
    p.write_bytes(b"PIXELS")  # the node's cached copy damaged (same size): fetched again
    stale = p.with_name(f".{p.name}.4194303.140.tmp")  # a worker killed mid-write (its PID gone)
    stale.write_bytes(b"PIX")
    assert jobs.materialize("data", sha, blob, "t10k-images-idx3-ubyte").read_bytes() == blob
    assert sorted(f.name for f in p.parent.iterdir()) == [p.name]  # stayed for good before
    for bad in ("../x", "..", "a/b", ""):
        with pytest.raises(jobs.JobError, match="not a plain file name"):
            jobs.materialize("data", sha, blob, bad)


def test_ray_backend_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(jobs.ConfigError, match="make setup-cluster"):
        jobs.ray_module()


def test_data_inputs_are_the_idx_files_or_one_file(tmp_path, mnist_dir):
    ins = jobs.data_inputs(None)
    assert len(ins) == 4 and jobs.data_arg({k: ROOT / v for k, v in ins.items()}) == mnist_dir
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"")
    assert jobs.data_inputs(npz) == {"data": str(npz)}


def test_bench_device_kinds_need_the_ray_backend(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    out = str(tmp_path / "b.json")
    assert_one_line_error(
        run_cli("-m", "lenet_edge.fleet", str(model), "--on", "rpi4", "--json", out), "--on", "--backend ray"
    )
    assert_one_line_error(
        run_cli("-m", "lenet_edge.fleet", str(model), "--backend", "ray", "--on", "rpi 4!", "--json", out),
        "--on rpi 4!",
    )
    assert not (tmp_path / "b.json").exists()


def test_sweep_recipe_filter_that_matches_nothing_is_one_line():
    proc = run_cli("-m", "lenet_edge.quantize.sweep", "--recipes", "no-such-recipe", "--json", "/tmp/x.json")
    assert_one_line_error(proc, "--recipes no-such-recipe")


def test_every_backend_command_lists_the_flag():
    for module in (
        "lenet_edge.report.study",
        "lenet_edge.quantize.sweep",
        "lenet_edge.report.invariance",
        "lenet_edge.fleet",
    ):
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 0 and "--backend {local,ray}" in out.stdout, module
    assert json.loads(json.dumps(jobs.BACKENDS)) == ["local", "ray"]


def test_a_killed_runs_job_folders_are_removed_by_the_next_run(tmp_path):
    """A SIGTERM'd `study` left its jobs' `lenet-edge-job-xxxx` folders in /tmp for good (330 after
    the test suites): they carry the process id now, and the next run removes a dead one's."""
    import tempfile
    from pathlib import Path

    orphan = Path(tempfile.gettempdir()) / "lenet-edge-job-999999999-dead"  # beyond any pid
    orphan.mkdir(exist_ok=True)
    (orphan / "half.onnx").write_bytes(b"x")
    jobs.run_jobs(_jobs(tmp_path, n=1), tmp_path / "cache")
    assert not orphan.exists()
