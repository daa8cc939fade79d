"""A third model through the whole toolchain: a depthwise-separable CNN on 3x32x32 input with
random weights, an ONNX file and a .npz data set made here (tests/third_model.py), never committed,
with its own workflow file. It must pass the checks the LeNets pass: export parity, the INT8
tolerances (its workflow's), the TFLite checks in both interpreters, the ORT target's identical
logits, and the bundle's self-check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.third_model import NAME, make_workflow

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("third_model")]

BIN = Path(sys.executable).parent
DEVICE_BIN = ROOT / ".venv-device" / "bin"


def _run(*cmd: str | Path, cwd: Path = ROOT) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (cmd, proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def third(tmp_path_factory):
    d = tmp_path_factory.mktemp("third")
    wf = make_workflow(d / "model")
    onnx_dir = d / "onnx"
    le = BIN / "lenet-edge"
    _run(le, "export", "--workflow", wf, "--out-dir", onnx_dir)
    for stage in (["optimize"], ["quantize"], ["quantize", "--variant", "s2d"], ["quantize-ort"], ["tflite"]):
        _run(le, *stage, "--workflow", wf, "--onnx-dir", onnx_dir)
    return wf, onnx_dir, d


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def _use(monkeypatch, wf_path: Path) -> None:
    """The third workflow for this test only (the environment variable --workflow sets)."""
    from lenet_edge.workflow import EXTRA_ENV

    monkeypatch.setenv(EXTRA_ENV, str(wf_path))


def test_export_parity_and_record(third, monkeypatch):
    from lenet_edge.export.onnx_export import read_export_record
    from lenet_edge.workflow import parse_workflow

    wf_path, onnx_dir, _ = third
    _use(monkeypatch, wf_path)
    rec = read_export_record(onnx_dir / f"{NAME}.fp32.onnx")  # checked: known model, sha256
    wf = parse_workflow(wf_path)
    assert rec["source"] == "onnx" and rec["params"] == wf.params
    assert rec["parity"]["passed"] and rec["parity"]["top1_identical"] == rec["parity"]["images"]
    assert rec["parity"]["max_abs_logit_diff"] <= rec["parity"]["atol"]


def test_int8_meets_the_tolerances(third, monkeypatch):
    from lenet_edge.quantize.checks import int8_failures, load_tolerances, tolerances_for

    wf_path, onnx_dir, _ = third
    _use(monkeypatch, wf_path)
    tol = tolerances_for(NAME)
    # the workflow overrides the two size ratios only, each with its reason
    base = load_tolerances()
    assert {k for k in tol if tol[k] != base[k]} == {"int8_size_ratio_max", "int8_dynamic_size_ratio_max"}
    for f in (f"{NAME}.int8.qdq", f"{NAME}.int8.s2d.qdq"):
        rec = _json(onnx_dir / f"{f}.quantize.json")
        assert int8_failures(rec, tol) == [], f
        assert rec["num_classes"] == 10
    ort = _json(onnx_dir / f"{NAME}.int8.s2d.ort.quantize.json")
    assert ort["ort_target"]["check"]["max_abs_logit_diff_vs_source"] == 0.0
    tfl = _json(onnx_dir / f"{NAME}.tflite.json")
    assert tfl["failures"] == [] and set(tfl["checks"]) == {"ai-edge-litert", "tflite-runtime"}
    # the float-front twin: made and checked where the pass matches its published form (the folded
    # one: pad + 3x3 conv); the 1x1-conv form, a depthwise conv next, gets none (it used to fail the stage)
    if "int8.mixed" in tfl["outputs"]:
        assert (onnx_dir / f"{NAME}.int8.mixed.tflite").is_file()
        assert all("int8_mixed" in c for c in tfl["checks"].values())
    else:
        assert not (onnx_dir / f"{NAME}.int8.mixed.tflite").exists()
        assert tfl["outputs"]["int8.full"]["float_front"]["int8.mixed"]["why"]


def test_evaluate_bench_and_bundle(third):
    wf_path, onnx_dir, d = third
    data = wf_path.parent / "data.npz"
    models = [
        onnx_dir / f"{NAME}.fp32.onnx",
        onnx_dir / f"{NAME}.int8.qdq.onnx",
        onnx_dir / f"{NAME}.int8.s2d.ort.onnx",
        onnx_dir / f"{NAME}.fp32.tflite",
        onnx_dir / f"{NAME}.int8.full.tflite",
    ]
    out = _run(DEVICE_BIN / "lenet-edge", "evaluate", *models, "--data-dir", data)
    assert out.count("top-1 100.00 %") == len(models), out  # labelled by the FP32 model itself
    bench = d / "bench" / "b.json"
    _run(
        DEVICE_BIN / "lenet-edge",
        "bench",
        *models,
        "--batch",
        "1",
        "--threads",
        "1",
        "--calls",
        "run",
        "--runs",
        "20",
        "--warmup",
        "2",
        "--rounds",
        "1",
        "--json",
        bench,
    )
    report = _json(bench)
    rows = report["results"]
    assert {r["model"] for r in rows} == {NAME} and len(rows) == len(models)
    assert report["command"].startswith("lenet-edge bench ") and report["command"].endswith(f"--json {bench}")
    if (ROOT / ".git").exists():  # the code the figures were measured on
        assert len(report["environment"]["lenet_edge_code"]["git_commit"]) == 40
    _run(DEVICE_BIN / "lenet-edge", "bundle", "build", *models, "--data-dir", data, "--out-dir", d / "bundle")
    _run("tar", "xzf", d / "bundle" / "lenet-edge-bundle.tar.gz", "-C", d / "bundle")
    out = _run(
        DEVICE_BIN / "python", "-m", "runtime.bundle", "check", ".", cwd=d / "bundle" / "lenet-edge-bundle"
    )
    assert f"{len(models)}/{len(models)} models match the host" in out, out


def test_the_third_model_is_not_in_the_repository():
    assert not (ROOT / "workflows" / f"{NAME}.toml").exists()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    assert f"{NAME}.onnx" not in tracked and "data.npz" not in tracked


def test_nothing_to_train_for_an_onnx_source(third):
    wf_path, _, _ = third
    proc = subprocess.run(
        [str(BIN / "lenet-edge"), "train", "--workflow", str(wf_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nothing to train" in proc.stderr


def test_a_paddle_inference_model_exports_with_parity_against_paddle(third, tmp_path):
    from tests.third_model import PADDLE_NAME, make_paddle_inference

    wf_path, _, _ = third
    wf = make_paddle_inference(tmp_path / "pd", wf_path.parent / "data.npz")
    out = tmp_path / "onnx"
    _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", out)
    rec = _json(out / f"{PADDLE_NAME}.fp32.export.json")
    assert rec["source"] == "paddle-inference" and rec["parity"]["against"].startswith("Paddle")
    assert rec["parity"]["passed"] and rec["parity"]["top1_identical"] == rec["parity"]["images"]
    # the weights file is part of what the export vouches for: change it and the export is stale
    _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", out)  # up to date: no re-export
    weights = wf.parent / "net.pdiparams"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", out)
    again = _json(out / f"{PADDLE_NAME}.fp32.export.json")
    assert again["checkpoint_sha256"] != rec["checkpoint_sha256"] and again["parity"]["passed"]


def _image_folder(src: Path, folder: Path, n_train: int = 40, n_test: int = 30) -> Path:
    """The first images of a .npz data set as PNG files + labels.csv (PNG is lossless)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    z = np.load(src)
    lines = ["split,file,label"]
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            name = f"{split}/{i:04d}.png"
            (folder / split).mkdir(exist_ok=True)
            Image.fromarray(z[f"{split}_images"][i].transpose(1, 2, 0)).save(folder / name)
            lines.append(f"{split},{name},{int(z[f'{split}_labels'][i])}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_an_image_folder_data_set(third, tmp_path, monkeypatch):
    import numpy as np

    from lenet_edge import image_folder
    from lenet_edge.workflow import EXTRA_ENV, data_source

    wf_path, _, _ = third
    data = wf_path.parent / "data.npz"
    d = tmp_path / "wf"
    _image_folder(data, d / "imgs")
    (d / f"{NAME}.onnx").write_bytes((wf_path.parent / f"{NAME}.onnx").read_bytes())
    text = wf_path.read_text().replace(
        'format = "npz"\npath = "data.npz"', 'format = "images"\ndir = "imgs"\nlabels = "imgs/labels.csv"'
    )
    wf = d / f"{NAME}.toml"
    wf.write_text(text)
    monkeypatch.setattr(image_folder, "CACHE", tmp_path / "cache")
    monkeypatch.setenv(EXTRA_ENV, str(wf))
    npz = data_source(NAME)
    z, src = np.load(npz), np.load(data)
    assert np.array_equal(z["train_images"], src["train_images"][:40]) and np.array_equal(
        z["test_labels"], src["test_labels"][:30]
    )
    assert data_source(NAME) == npz  # made once per content
    out = _run(BIN / "lenet-edge", "export", "--workflow", wf, "--out-dir", tmp_path / "onnx")
    assert "top-1 identical 30/30" in out


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t: t + "train,../../etc/passwd,1\n", "must be a relative path inside"),
        (lambda t: t + "train,train/none.png,1\n", "none.png not found"),
        (lambda t: t + "train,train/0000.png,10\n", "label 10 outside 0..9"),
        (lambda t: t + "valid,train/0000.png,1\n", "split must be train or test"),
        (lambda t: t + "train,train/0000.png\n", "expected 'split,file,label'"),
        (
            lambda t: "".join(x for x in t.splitlines(True) if not x.startswith("test,")),
            "no test images listed",
        ),
    ],
)
def test_a_bad_image_folder_is_one_line(third, tmp_path, edit, needle):
    from lenet_edge.image_folder import image_folder_npz
    from lenet_edge.runtime.errors import DataError

    wf_path, _, _ = third
    folder = _image_folder(wf_path.parent / "data.npz", tmp_path / "imgs", 3, 2)
    labels = folder / "labels.csv"
    labels.write_text(edit(labels.read_text()))
    with pytest.raises(DataError) as e:
        image_folder_npz("m", folder, labels, (3, 32, 32), 10)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="is 32x32, the workflow's input is 28x28"):
        labels.write_text("split,file,label\ntrain,train/0000.png,1\ntest,test/0000.png,1\n")
        image_folder_npz("m", folder, labels, (3, 28, 28), 10)


def test_the_workflow_declares_its_calibration_sample(third):
    wf_path, onnx_dir, _ = third
    rec = _json(onnx_dir / f"{NAME}.int8.qdq.quantize.json")
    assert rec["calibration"]["images"] == 500 and "seed 7 sample of 500" in rec["calibration"]["source"]
