"""SIGKILL each stage at several points: before and between its writes (exact, through the
LENET_EDGE_KILL_AT fault points) and mid-run (by time). Afterwards the previous artifacts are
intact or, where a kill fell between two renames, the pair is one that the stage itself refuses
as stale; never a partial file. The next run succeeds and leaves no temp file or folder behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenet_edge.runtime.files import sha256_file
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("faults")]  # one worker: one `inputs`

KILLS = ["before-rename#1", "after-rename#1", "time:0.7"]
SHORT = ["--epochs", "1", "--train-limit", "640", "--test-limit", "500", "--no-progress"]


def _run(cmd: list[str], tmpdir: Path, kill: str | None = None, duration: float = 0.0) -> int:
    env = {**os.environ, "TMPDIR": str(tmpdir), "GLOG_minloglevel": "2"}
    if kill and not kill.startswith("time:"):
        env["LENET_EDGE_KILL_AT"] = kill
    proc = subprocess.Popen(
        [sys.executable, *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if kill and kill.startswith("time:"):
        try:
            proc.wait(timeout=duration * float(kill[5:]))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    if proc.returncode not in (0, -9):
        raise AssertionError(err.decode()[-2000:])
    return proc.returncode


def _vouched(record: dict, field: str) -> object:
    for key in field.split("/"):  # "outputs/int8.full/sha256": a path into the record
        record = record.get(key, {}) if isinstance(record, dict) else {}
    return record


def _pairs(d: Path, artifact: str, record: str, field: str) -> dict[str, object]:
    a, r = d / artifact, d / record
    state = {
        "artifact": sha256_file(a) if a.is_file() else None,
        "record": sha256_file(r) if r.is_file() else None,
    }
    state["consistent"] = (
        a.is_file() and r.is_file() and _vouched(json.loads(r.read_text()), field) == sha256_file(a)
    )
    return state


def _no_leftovers(d: Path, tmpdir: Path) -> None:
    assert not [p.name for p in d.rglob("*.tmp")], list(d.rglob("*.tmp"))
    assert not [p.name for p in tmpdir.glob("lenet-edge-*") if re.search(r"-\d+-", p.name)]


STAGES = {
    # name: (command for a given input, artifact, record, record field with the artifact's sha256)
    "train": (
        lambda out, seed: [
            "-m",
            "lenet_edge.train",
            "--model",
            "lenet_pool",
            "--seed",
            str(seed),
            "--out-dir",
            str(out),
            *SHORT,
        ],
        "lenet_pool.npz",
        "lenet_pool.train.json",
        "checkpoint_sha256",
    ),
    "export": (
        lambda out, ckpt: [
            "-m",
            "lenet_edge.export",
            "--model",
            "lenet_pool",
            "--checkpoint-dir",
            str(ckpt),
            "--out-dir",
            str(out),
        ],
        "lenet_pool.fp32.onnx",
        "lenet_pool.fp32.export.json",
        "onnx_sha256",
    ),
    "quantize": (
        lambda out, onnx_dir: [
            "-m",
            "lenet_edge.quantize",
            "--model",
            "lenet_pool",
            "--onnx-dir",
            str(onnx_dir),
            "--out-dir",
            str(out),
            "--no-sqnr",
            "--no-progress",
            "--no-check",
        ],
        "lenet_pool.int8.qdq.onnx",
        "lenet_pool.int8.qdq.quantize.json",
        "onnx_sha256",
    ),
    "optimize": (
        lambda out, onnx_dir: [
            "-m",
            "lenet_edge.optimize",
            "--model",
            "lenet_pool",
            "--onnx-dir",
            str(onnx_dir),
            "--out-dir",
            str(out),
        ],
        "lenet_pool.fp32.s2d.onnx",
        "lenet_pool.fp32.s2d.optimize.json",
        "onnx_sha256",
    ),
    # TFLite writes two files, then the record: kill #2 falls between the INT8 file and the record.
    # --no-check: the short-trained `old` model need not meet the INT8 tolerances here.
    "tflite": (
        lambda out, onnx_dir: _tflite_cmd(out, onnx_dir),
        "lenet_pool.int8.full.tflite",
        "lenet_pool.tflite.json",
        "outputs/int8.full/sha256",
    ),
}


KILLS_BY_STAGE = {"tflite": ["before-rename#1", "after-rename#2", "time:0.7"]}


def _tflite_cmd(out: Path, onnx_dir: Path) -> list[str]:
    # quantize.tflite reads and writes one folder: bring the export in first
    out.mkdir(parents=True, exist_ok=True)
    for f in ("lenet_pool.fp32.onnx", "lenet_pool.fp32.export.json"):
        shutil.copy(onnx_dir / f, out / f)
    return ["-m", "lenet_edge.quantize.tflite", "--model", "lenet_pool", "--onnx-dir", str(out), "--no-check"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist_dir):
    """Two different inputs per stage: `old` makes the previous artifacts, `new` the killed run's."""
    d = tmp_path_factory.mktemp("fault_inputs")
    tmp = d / "tmp"
    tmp.mkdir()
    short = d / "short_ckpt"
    assert _run(STAGES["train"][0](short, 1), tmp) == 0
    onnx_old, onnx_new = d / "onnx_old", d / "onnx_new"
    assert _run(STAGES["export"][0](onnx_old, short), tmp) == 0
    assert _run(STAGES["export"][0](onnx_new, ROOT / "results" / "checkpoints"), tmp) == 0
    return {
        "train": (1, 0),
        "export": (short, ROOT / "results" / "checkpoints"),
        "quantize": (onnx_old, onnx_new),
        "optimize": (onnx_old, onnx_new),
        "tflite": (onnx_old, onnx_new),
    }


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigkill_at_every_point_keeps_artifacts_safe(stage, inputs, tmp_path):
    cmd, artifact, record, field = STAGES[stage]
    old_in, new_in = inputs[stage]
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    good = tmp_path / "good"
    t0 = time.monotonic()
    assert _run(cmd(good, old_in), tmpdir) == 0
    duration = time.monotonic() - t0
    before = _pairs(good, artifact, record, field)
    assert before["consistent"]
    for kill in KILLS_BY_STAGE.get(stage, KILLS):
        d = tmp_path / re.sub(r"\W", "_", kill)
        shutil.copytree(good, d)
        rc = _run(cmd(d, new_in), tmpdir, kill, duration)
        after = _pairs(d, artifact, record, field)
        if kill == "before-rename#1":
            assert rc == -9 and after == before, (kill, after)  # killed before any rename: untouched
        elif rc == -9:
            # untouched; or caught between the artifact's rename and the record's (the record then
            # names the old artifact's sha256, so every reader refuses the pair); or, a time-based
            # kill on a loaded host landing after the last write, the complete new pair (the record
            # is written last and names the new artifact's sha256)
            finished = after["consistent"] and after["artifact"] != before["artifact"]
            assert after == before or not after["consistent"] or finished, (kill, after)
        # the next run repairs it and leaves nothing behind
        assert _run(cmd(d, new_in), tmpdir) == 0, kill
        done = _pairs(d, artifact, record, field)
        assert done["consistent"] and done["artifact"] != before["artifact"], (kill, done)
        _no_leftovers(d, tmpdir)


def test_inconsistent_pairs_are_refused_by_the_readers(inputs, tmp_path):
    """What the fault test relies on: a record whose sha256 does not match its file is not trusted."""
    from lenet_edge.quantize.ort_quant import load_fp32
    from lenet_edge.runtime.errors import CheckpointError, LenetEdgeError
    from lenet_edge.train.checkpoint import load_checkpoint

    ckpt_dir = tmp_path / "c"
    shutil.copytree(inputs["export"][0], ckpt_dir)
    shutil.copy(ROOT / "results" / "checkpoints" / "lenet_pool.npz", ckpt_dir / "lenet_pool.npz")
    with pytest.raises(CheckpointError, match="does not match its record"):
        load_checkpoint(ckpt_dir / "lenet_pool.npz")
    onnx_dir = tmp_path / "o"
    shutil.copytree(inputs["quantize"][0], onnx_dir)
    shutil.copy(inputs["quantize"][1] / "lenet_pool.fp32.onnx", onnx_dir / "lenet_pool.fp32.onnx")
    with pytest.raises(LenetEdgeError, match="changed since export"):
        load_fp32(onnx_dir / "lenet_pool.fp32.onnx")


def test_paddle_caches_stay_under_the_project_cache_root(tmp_path, mnist_dir):
    """Paddle writes ~/.cache/paddle on import and on jit.save whatever XDG_CACHE_HOME says;
    lenet-edge points it at $XDG_CACHE_HOME/lenet-edge/paddle-home for those moments."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(cache), "MNIST_DIR": str(mnist_dir)}
    cmd = [
        "-m",
        "lenet_edge.export",
        "--model",
        "lenet_pool",
        "--checkpoint-dir",
        "results/checkpoints",
        "--out-dir",
    ]
    proc = subprocess.run(
        [sys.executable, *cmd, str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert not (home / ".cache").exists(), sorted(str(p) for p in home.rglob("*"))
    paddle_home = cache / "lenet-edge" / "paddle-home" / ".cache" / "paddle"
    assert (paddle_home / "dataset").is_dir()  # what Paddle made went here
    assert not list((paddle_home / "to_static_tmp").glob("*"))  # and jit.save's folder is removed
