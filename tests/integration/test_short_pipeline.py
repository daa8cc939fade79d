"""A short training run on a data subset -> export -> parity, as the pipeline does it."""

import json
import platform
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("short_pipeline")]
pytest.importorskip("paddle")

SHORT = ["--epochs", "1", "--train-limit", "1280", "--test-limit", "500", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """Two runs with seed 0 (a: both models at once, one process each; b: one after the other)
    and one with seed 1, both models, in separate folders (c names its folder relative to where
    it runs, outside the repository: each model's process must write there too)."""
    out = {}
    for tag, seed, jobs in [("a", 0, "2"), ("b", 0, "1"), ("c", 1, "2")]:
        d = tmp_path_factory.mktemp(f"train_{tag}")
        proc = run_cli(
            "-m",
            "lenet_edge.train",
            "--model",
            "all",
            "--seed",
            str(seed),
            "--out-dir",
            d.name if tag == "c" else str(d),
            "--jobs",
            jobs,
            *SHORT,
            cwd=d.parent if tag == "c" else None,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[tag] = d
    return out


@pytest.mark.parametrize("name", ["lenet_pool", "lenet_stride"])
def test_same_seed_gives_bitwise_identical_weights(runs, name):
    """...also when both models train at once (a) rather than one by one (b)."""
    a, b, c = ((runs[t] / f"{name}.npz").read_bytes() for t in "abc")
    assert a == b
    assert a != c
    with np.load(runs["a"] / f"{name}.npz") as wa, np.load(runs["c"] / f"{name}.npz") as wc:
        assert not np.array_equal(wa["conv1.weight"], wc["conv1.weight"])


@pytest.mark.parametrize("name", ["lenet_pool", "lenet_stride"])
def test_training_record_is_complete(runs, name):
    rec = json.loads((runs["a"] / f"{name}.train.json").read_text())
    assert rec["config"]["seed"] == 0 and rec["config"]["batch_size"] == 64 and rec["config"]["lr"] == 1e-3
    assert len(rec["epochs"]) == 1 and rec["epochs"][0]["train_loss"] > 0
    assert rec["cpu_seconds"] > 0 and rec["wall_seconds"] > 0
    assert set(rec["versions"]) >= {"paddle", "numpy", "python", "conv_kernel"}
    if platform.system() == "Linux" and platform.machine() == "x86_64":  # fastconv must build here
        assert rec["versions"]["conv_kernel"].startswith("oneDNN 3.6"), rec["versions"]
    assert rec["environment"]["cpu_model"] and isinstance(rec["environment"]["isa_flags"], list)
    assert len(rec["data_sha256"]) == 4 and len(rec["checkpoint_sha256"]) == 64
    assert 0.5 < rec["test_top1"] <= rec["test_top2"] <= 1.0  # 1,280 images already teach a lot


def test_second_run_is_skipped_as_up_to_date(runs):
    proc = run_cli(
        "-m", "lenet_edge.train", "--model", "lenet_pool", "--seed", "0", "--out-dir", str(runs["a"]), *SHORT
    )
    assert proc.returncode == 0 and "up to date" in proc.stdout


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    proc = run_cli("-m", "lenet_edge.export", "--checkpoint-dir", str(runs["a"]), "--out-dir", str(d))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


@pytest.mark.parametrize("name", ["lenet_pool", "lenet_stride"])
def test_export_parity_and_metadata(exported, runs, name):
    import onnx

    rec = json.loads((exported / f"{name}.fp32.export.json").read_text())
    par = rec["parity"]
    assert par["images"] == 10_000 and par["top1_identical"] == 10_000
    assert par["max_abs_logit_diff"] <= 1e-4
    model = onnx.load(str(exported / f"{name}.fp32.onnx"))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    train_rec = json.loads((runs["a"] / f"{name}.train.json").read_text())
    assert meta["model"] == name and meta["precision"] == "fp32" and meta["training_seed"] == "0"
    assert meta["checkpoint_sha256"] == train_rec["checkpoint_sha256"]
    assert "0..255" in meta["input_contract"] and float(meta["test_top1"]) == pytest.approx(
        rec["test_top1"], abs=1e-4
    )
    assert model.opset_import[0].version == 13
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "pixels" and dims == ["N", 1, 28, 28] and model.graph.output[0].name == "scores"


@pytest.mark.parametrize("name", ["lenet_pool", "lenet_stride"])
def test_third_party_feeding_raw_pixels_gets_recorded_accuracy(exported, mnist_dir, name):
    # Plain onnxruntime and the IDX bytes as floats, no project code in the loop.
    import onnxruntime as ort

    from lenet_edge.runtime.mnist import load_split

    test = load_split("test", mnist_dir)
    sess = ort.InferenceSession(str(exported / f"{name}.fp32.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(["scores"], {"pixels": test.images[:, None].astype(np.float32)})[0]
    rec = json.loads((exported / f"{name}.fp32.export.json").read_text())
    assert float((logits.argmax(1) == test.labels).mean()) == rec["test_top1"]


def test_changed_checkpoint_is_re_exported_not_reused(runs, exported, tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(runs["a"], d)
    proc = run_cli(
        "-m",
        "lenet_edge.export",
        "--model",
        "lenet_pool",
        "--checkpoint-dir",
        str(d),
        "--out-dir",
        str(exported),
    )
    assert proc.returncode == 0 and "up to date" in proc.stdout  # same bytes: reused
    for f in ("lenet_pool.npz", "lenet_pool.train.json"):
        shutil.copyfile(runs["c"] / f, d / f)  # the seed-1 model, same name
    proc = run_cli(
        "-m",
        "lenet_edge.export",
        "--model",
        "lenet_pool",
        "--checkpoint-dir",
        str(d),
        "--out-dir",
        str(exported),
    )
    assert proc.returncode == 0 and "up to date" not in proc.stdout, proc.stdout
    rec = json.loads((exported / "lenet_pool.fp32.export.json").read_text())
    assert (
        rec["checkpoint_sha256"]
        == json.loads((runs["c"] / "lenet_pool.train.json").read_text())["checkpoint_sha256"]
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_training_leaves_no_checkpoint(tmp_path, mnist_dir, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lenet_edge.train",
            "--model",
            "lenet_stride",
            "--epochs",
            "3",
            "--out-dir",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A terminal's Ctrl-C: a runner started in the background (as CI may be) ignores SIGINT,
        # and children inherit that, so give the child the default disposition explicitly.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(10)  # Paddle import + data load take ~4 s; a full run takes minutes
    assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-1500:]
    assert not out.exists() or not list(out.iterdir())  # not even a temp file
