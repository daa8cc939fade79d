"""Workflow files: the shipped ones, one clear line for every kind of bad one, and no model list in
the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lenet_edge import workflow
from lenet_edge.workflow import WorkflowError, parse_workflow
from tests.conftest import ROOT, assert_one_line_error

pytestmark = pytest.mark.unit

SHIPPED = ROOT / "workflows" / "lenet_pool.toml"
SCRIPT = Path(sys.executable).parent / "lenet-edge"


def test_the_shipped_workflows_are_the_models():
    flows = workflow.workflows()
    assert list(flows) == sorted(p.stem for p in (ROOT / "workflows").glob("*.toml"))
    for name, wf in flows.items():
        assert wf.name == name and wf.path.stem == name
        assert wf.checkpoint.is_file(), wf.checkpoint  # the committed reference checkpoint
    base, cand = workflow.comparison()
    assert flows[cand].baseline == base
    assert workflow.selected("all") == sorted(flows)


def _variant(tmp_path: Path, edit, name: str = "lenet_pool") -> Path:
    text = SHIPPED.read_text()
    out = tmp_path / f"{name}.toml"
    out.write_text(edit(text))
    return out


def _set(key: str, value: str):
    """Replace the line `key = ...` (first occurrence) with `key = value`; None removes it."""

    def edit(text: str) -> str:
        pat = re.compile(rf"^{re.escape(key)} = .*$", re.M)
        assert pat.search(text), key
        return pat.sub("" if value is None else f"{key} = {value}", text, count=1)

    return edit


BAD = {
    "missing key": (_set("params", None), ["[model]", "missing key 'params'"]),
    "missing section": (lambda t: t.replace("[train]", "[trainn]"), ["unknown section [trainn]"]),
    "wrong type": (_set("epochs", '"ten"'), ["[train] epochs", "must be an integer", "'ten'"]),
    "bool for an int": (_set("batch", "true"), ["[train] batch", "must be an integer"]),
    "nan": (_set("lr", "nan"), ["[train] lr", "finite"]),
    "not positive": (_set("epochs", "0"), ["[train] epochs", "> 0"]),
    "unknown key": (
        lambda t: t.replace("[data]\n", "[data]\nfromat = 'idx'\n"),
        ["[data] unknown key 'fromat'"],
    ),
    "unknown module": (
        _set("class", '"lenet_edge.train.nosuch:LeNetPool"'),
        ["no module 'lenet_edge.train.nosuch'"],
    ),
    "unknown class": (_set("class", '"lenet_edge.train.models:ResNet50"'), ["defines no class 'ResNet50'"]),
    "class outside lenet-edge": (_set("class", '"os:path"'), ["no module 'os'"]),
    "malformed class": (_set("class", '"LeNetPool"'), ["'package.module:Class'"]),
    "bad shape": (_set("shape", "[1, 28]"), ["[input] shape", "three positive integers"]),
    "unsupported source": (_set("source", '"tensorflow"'), ["[model] source 'tensorflow'"]),
    "path leaves the repository": (
        _set("checkpoint", '"../../etc/passwd"'),
        ["[model] checkpoint", "inside"],
    ),
    "absolute path": (_set("checkpoint", '"/etc/passwd"'), ["[model] checkpoint", "inside"]),
    "bad recipe": (_set("recipe", "{ calibrate = 'magic' }"), ["[quantize] recipe"]),
    "bad published figure": (_set("published_top1", "98.1"), ["published_top1", "[0, 1]"]),
    "calibration for MNIST": (
        lambda t: t.replace("classes = 10\n", "classes = 10\ncalibration_size = 100\n", 1),
        ["[data] calibration_size does not apply to MNIST"],
    ),
    "not toml": (lambda t: t + "\n[model\n", ["not valid TOML"]),
    "nan mean": (_set("normalize", "{ mean = nan, std = 127.5 }"), ["[input] normalize", "finite"]),
    "infinite pixel range": (_set("pixel_range", "[0, inf]"), ["[input] pixel_range"]),
    "string for a recipe bool": (
        _set("recipe", "{ per_channel = 'yes' }"),
        ["[quantize] recipe", "true or false"],
    ),
    "string for recipe bins": (
        _set("recipe", "{ calibration_bins = 'x' }"),
        ["[quantize] recipe", "an integer"],
    ),
    # an audit of bad input (twenty-eighth session): each was accepted
    "not a colour": (_set("color", '"notacolor"'), ["[model] color 'notacolor'", "hex colour"]),
    "label breaks a table": (_set("label", '"a | b"'), ["[model] label", "without |"]),
    "label breaks a line": (  # a TOML escape for a line break (not _set: re.sub reads backslashes itself)
        lambda t: t.replace('label = "LeNet (max-pool)"', 'label = "a\\nb"'),
        ["[model] label", "control characters"],
    ),
    "std next to zero": (_set("normalize", "{ mean = 127.5, std = 1e-320 }"), ["[input] normalize", "±1e6"]),
    "classes beyond reason": (_set("classes", "100000000000000000000"), ["[data] classes", "2..100,000"]),
    "one class": (_set("classes", "1"), ["[data] classes", "2..100,000"]),
    "shape beyond reason": (_set("shape", "[1, 100000000000, 100000000000]"), ["[input] shape", "4096"]),
    "negative tolerance": (
        lambda t: t + '\n[tolerances]\nint8_top1_drop_pp_max = { value = -5.0, why = "x" }\n',
        ["[tolerances] int8_top1_drop_pp_max", "0..any finite number"],
    ),
    "agreement above one": (
        lambda t: t + '\n[tolerances]\nint8_agreement_min = { value = 2.0, why = "x" }\n',
        ["[tolerances] int8_agreement_min", "0..1"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_workflow_is_one_line_naming_file_and_key(case, tmp_path):
    edit, needles = BAD[case]
    path = _variant(tmp_path, edit)
    with pytest.raises(WorkflowError) as e:
        parse_workflow(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_a_path_may_not_leave_the_workflow_folder_through_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.pdparams").write_bytes(b"x")
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "ckpt").symlink_to(outside, target_is_directory=True)
    path = _variant(wf, _set("checkpoint", '"ckpt/model.pdparams"'))
    with pytest.raises(WorkflowError, match=r"\[model\] checkpoint 'ckpt/model.pdparams' leads outside"):
        parse_workflow(path)


def test_name_must_match_the_file_and_unreadable_files(tmp_path):
    other = _variant(tmp_path, lambda t: t, name="mine")
    with pytest.raises(WorkflowError, match="must equal the file name"):
        parse_workflow(other)
    with pytest.raises(WorkflowError, match="not found"):
        parse_workflow(tmp_path / "nope.toml")
    binary = tmp_path / "lenet_pool.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WorkflowError, match="cannot read"):
        parse_workflow(binary)
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(WorkflowError, match="cannot read"):
        parse_workflow(folder)


def test_input_shape_must_match_the_data(tmp_path):
    wf = parse_workflow(_variant(tmp_path, _set("shape", "[1, 32, 32]")))
    with pytest.raises(
        WorkflowError, match=r"\[input\] shape \[1, 32, 32\] does not match the data.*28 x 28"
    ):
        workflow.check_data_shape(wf, (28, 28), Path("train-images-idx3-ubyte"))
    workflow.check_data_shape(parse_workflow(SHIPPED), (28, 28), Path("x"))
    with pytest.raises(WorkflowError, match="3 x 28 x 28"):
        workflow.check_data_shape(parse_workflow(SHIPPED), (3, 28, 28), Path("x"))


def test_a_shape_that_does_not_fit_the_data_through_the_cli(tmp_path):
    path = _variant(tmp_path, _set("shape", "[1, 32, 32]"))
    proc = subprocess.run(
        [str(SCRIPT), "export", "--workflow", str(path), "--checkpoint-dir", "results/checkpoints",
         "--out-dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc, str(path), "[input] shape [1, 32, 32] does not match the data")
    assert not (tmp_path / "out" / "lenet_pool.fp32.onnx").exists()


def test_a_baseline_must_exist(tmp_path, monkeypatch):
    d = tmp_path / "flows"
    d.mkdir()
    (d / "lenet_pool.toml").write_text(SHIPPED.read_text() + '\n[study]\nbaseline = "lenet_nopool"\n')
    monkeypatch.setenv("LENET_EDGE_WORKFLOWS", str(d))
    with pytest.raises(WorkflowError, match="baseline 'lenet_nopool' has no workflow"):
        workflow.workflows()


@pytest.mark.parametrize("command", ["train", "export", "quantize", "tflite"])
def test_a_bad_workflow_through_the_cli(command, tmp_path):
    bad = _set("epochs", '"ten"')(SHIPPED.read_text())
    path = tmp_path / "lenet_pool.toml"
    path.write_text(bad)
    proc = subprocess.run(
        [str(SCRIPT), command, "--workflow", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert_one_line_error(proc, str(path), "[train] epochs")


def test_a_broken_shipped_workflow_folder_is_one_line(tmp_path):
    d = tmp_path / "flows"
    d.mkdir()
    (d / "lenet_pool.toml").write_text("[model]\n")
    proc = subprocess.run(
        [str(SCRIPT), "report", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "LENET_EDGE_WORKFLOWS": str(d)},
    )
    assert_one_line_error(proc, "lenet_pool.toml", "missing")


@pytest.mark.parametrize("value", ["/nonexistent", "EMPTY_FOLDER"])
def test_a_workflow_folder_that_is_not_one_is_named_not_hidden_behind_model_choices(value, tmp_path):
    """`LENET_EDGE_WORKFLOWS=/nonexistent lenet-edge export --model lenet_pool` said "argument
    --model: invalid choice: 'lenet_pool' (choose from 'all')": the folder's error was swallowed
    to keep --help working, and --model then took only "all"; the message did not name the variable."""
    (tmp_path / "EMPTY_FOLDER").mkdir()
    folder = value if value.startswith("/") else str(tmp_path / value)
    proc = subprocess.run(
        [str(SCRIPT), "export", "--model", "lenet_pool", "--out-dir", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "LENET_EDGE_WORKFLOWS": folder},
    )
    assert_one_line_error(proc, f"LENET_EDGE_WORKFLOWS={folder}: no workflow")
    assert not (tmp_path / "out").exists()


def test_an_empty_workflow_folder_variable_is_unset(monkeypatch):
    """LENET_EDGE_WORKFLOWS= (empty) meant the current folder (`pyproject.toml: unknown section`)."""
    monkeypatch.setenv("LENET_EDGE_WORKFLOWS", "")
    assert workflow.workflow_dir() == workflow.WORKFLOW_DIR


def test_model_and_workflow_must_agree(tmp_path, monkeypatch):
    monkeypatch.delenv(workflow.EXTRA_ENV, raising=False)
    path = _variant(tmp_path, lambda t: t)
    try:
        assert workflow.selected("all", path) == ["lenet_pool"]
        with pytest.raises(WorkflowError, match="--model lenet_stride but this workflow is for 'lenet_pool'"):
            workflow.selected("lenet_stride", path)
    finally:
        monkeypatch.delenv(workflow.EXTRA_ENV, raising=False)


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def test_an_image_folder_row_may_not_leave_the_folder_through_a_symlink(tmp_path):
    """A labels row spelled inside the folder (`imgs/a.png`) whose file is a symlink to a file
    outside was read: the spelling was checked, the target not (a workflow's own paths were)."""
    from lenet_edge.image_folder import _rows
    from lenet_edge.runtime.errors import DataError

    folder = tmp_path / "imgs"
    folder.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    (folder / "a.png").symlink_to(tmp_path / "outside.png")
    (folder / "b.png").write_bytes(b"x")
    labels = tmp_path / "labels.csv"
    labels.write_text("train,b.png,1\ntest,b.png,2\n")
    assert [r[1] for r in _rows(labels, folder, 10)] == [folder / "b.png"] * 2
    labels.write_text("train,b.png,1\ntest,a.png,2\n")
    with pytest.raises(
        DataError, match=r"labels.csv:2: file 'a.png' leads outside .*imgs \(through a symlink\)"
    ):
        _rows(labels, folder, 10)


def test_no_model_is_named_outside_workflow_files_and_tests():
    # the code reads the models from workflows/; only docstrings and comments may mention one
    names = model_names = workflow.model_names()
    assert names
    hits = []
    for pkg in ("train", "export", "optimize", "quantize", "runtime", "report", "lenet_edge", "arm"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for line, text in _string_constants(f):
                if any(n in text for n in model_names):
                    hits.append(f"{f.relative_to(ROOT)}:{line}: {text[:60]!r}")
    make = (ROOT / "Makefile").read_text()
    hits += [f"Makefile: {line}" for line in make.splitlines() if any(n in line for n in model_names)]
    assert not hits, hits
