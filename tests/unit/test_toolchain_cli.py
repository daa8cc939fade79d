"""The `lenet-edge` console script, the shared flags and the installed namespace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lenet_edge import cli
from lenet_edge.runtime import cli as stage_cli
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.unit

SCRIPT = Path(sys.executable).parent / "lenet-edge"


def test_the_console_script_is_installed_and_lists_every_command():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in cli.COMMANDS:
        assert re.search(rf"^  {re.escape(name)} ", proc.stdout, re.M), name
    for name in (
        "data",
        "train",
        "export",
        "optimize",
        "quantize",
        "tflite",
        "evaluate",
        "bench",
        "bundle",
        "arm-check",
        "report",
        "study",
        "ingest",
    ):  # the list
        assert name in cli.COMMANDS


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_help(name, capfd, monkeypatch):
    monkeypatch.setattr(stage_cli, "PROG", None)
    try:
        rc = cli.main([name, "--help"])
    except SystemExit as e:
        rc = e.code
    out, err = capfd.readouterr()
    assert rc == 0, err[-2000:]
    assert out.startswith(f"usage: lenet-edge {name} "), out[:200]
    assert "-h, --help" in out


def test_no_command_and_an_unknown_command(capsys):
    assert cli.main([]) == 2
    assert "usage: lenet-edge" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'trian'" in err[0]


def test_a_command_whose_library_is_missing_says_which_and_how(monkeypatch, capsys):
    def no_paddle(name):
        raise ModuleNotFoundError("No module named 'paddle'", name="paddle")

    monkeypatch.setattr(cli.importlib, "import_module", no_paddle)
    assert cli.main(["train", "--epochs", "1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'paddle'" in line and "make setup" in line


def test_a_user_mistake_through_the_console_script_is_one_line(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a model")
    for cmd in ("evaluate", "size"):
        proc = subprocess.run([str(SCRIPT), cmd, str(bad)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, cmd
        (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
        assert line.startswith("error:") and str(bad) in line, cmd


def test_installed_namespace_from_another_folder(tmp_path):
    # after `pip install -e .`, lenet_edge imports from anywhere; a bare `export` or `runtime` is not ours
    code = (
        "import importlib.util, lenet_edge.runtime.files as f, lenet_edge.train\n"
        "print(f.__file__)\n"
        "print([n for n in ('train', 'export', 'optimize', 'quantize', 'runtime', 'report') "
        "if importlib.util.find_spec(n) is not None])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    where, found = proc.stdout.strip().splitlines()
    assert Path(where) == ROOT / "runtime" / "files.py"
    assert found == "[]"


SHARED = ("--model", "--workflow", "--out-dir", "--json", "--batch", "--threads", "--verbose", "--quiet")
OLD_SPELLINGS = ("--out", "--outdir", "--dest", "--root", "--batches", "--batch-size")


def test_shared_flags_are_defined_once_and_old_spellings_are_gone():
    # every stage takes the shared flags from CommonFlags; none spells them (or an old synonym) itself
    pattern = re.compile(r"add_argument\(\s*\"(--[a-z-]+)\"")
    for pkg in ("train", "export", "optimize", "quantize", "runtime", "report", "lenet_edge", "arm"):
        for f in sorted((ROOT / pkg).glob("*.py")):
            found = set(pattern.findall(f.read_text()))
            banned = set(OLD_SPELLINGS) | (set() if pkg == "arm" else set(SHARED))
            assert not found & banned, (f.relative_to(ROOT), found & banned)
    makefile = (ROOT / "Makefile").read_text()
    for old in OLD_SPELLINGS:
        assert not re.search(rf"{old}(\s|=)", makefile), old


def test_common_flags_keep_their_spelling_and_take_overrides(monkeypatch):
    monkeypatch.delenv("LENET_EDGE_QUIET", raising=False)
    p = stage_cli.parser("x", "A stage.\n\nMore.")
    stage_cli.add_common(p, "out_dir", "batch", batch={"default": "1,64", "type": str})
    a = p.parse_args(["--out-dir", "o", "--batch", "1,2"])
    assert a.out_dir == Path("o") and a.batch == "1,2" and not a.quiet
    assert p.description == "A stage."
    with pytest.raises(KeyError):
        stage_cli.add_common(p, "outdir")
    with pytest.raises(SystemExit):
        p.parse_args(["--batches", "1"])


def test_no_path_flag_takes_an_empty_path():
    """`--json ''` was Path('.'): evaluate wrote nothing and said nothing, bench died in its writer
    with a traceback. Every path flag (the shared ones and each stage's own `type=path_arg`) refuses
    it at parse time, naming the flag; no stage declares a bare `type=Path` any more."""
    for args in (
        ["-m", "runtime.evaluate", "--json", "", "build/onnx/x.onnx"],
        ["-m", "runtime.bench", "--json", " ", "x.onnx"],
        ["-m", "lenet_edge.optimize.size", "--json", "", "x.onnx"],
        ["-m", "lenet_edge.quantize", "--onnx-dir", ""],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1000:]
        (line,) = [x for x in proc.stderr.splitlines() if "error:" in x]
        assert re.search(r"error: argument --[a-z-]+: an empty (path|value)$", line), line
    declared = re.compile(r"type=Path\b")
    for pkg in ("train", "export", "optimize", "quantize", "runtime", "report", "lenet_edge"):
        for f in sorted((ROOT / pkg).glob("*.py")):
            assert not declared.search(f.read_text()), f.relative_to(ROOT)


def test_quiet_silences_progress_here_and_in_child_processes(monkeypatch):
    from lenet_edge.runtime.progress import Progress

    monkeypatch.delenv("LENET_EDGE_QUIET", raising=False)
    assert Progress(10).enabled
    stage_cli.parser("x").parse_args(["-q"])
    try:
        assert Progress(10).enabled is False
        proc = run_cli("-c", "import os; print(os.environ.get('LENET_EDGE_QUIET'))")
        assert proc.stdout.strip() == "1"
    finally:
        monkeypatch.delenv("LENET_EDGE_QUIET", raising=False)


def test_pyproject_extras_are_the_environments_direct_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    assert meta["project"]["scripts"]["lenet-edge"] == "lenet_edge.cli:main"
    extras = meta["project"]["optional-dependencies"]

    def reqs(name: str) -> list[str]:
        lines = (ROOT / "requirements" / name).read_text().splitlines()
        return sorted(x.strip() for x in lines if x.strip() and not x.startswith("#"))

    assert sorted(extras["host"]) == reqs("host.in")
    assert sorted(extras["device"]) == reqs("device-test.in")
    assert sorted(extras["tflite"]) == reqs("tflite.in")
    assert sorted(extras["cluster"]) == reqs("cluster.in")
    dirs = meta["tool"]["setuptools"]["package-dir"]
    for pkg in ("train", "export", "optimize", "quantize", "runtime", "report"):
        assert dirs[f"lenet_edge.{pkg}"] == pkg


def test_arm_check_names_a_missing_bundle_before_any_set_up(tmp_path):
    """A user mistake costs no sysroot set-up: one `error:` line naming the file, non-zero exit."""
    proc = subprocess.run(
        [str(SCRIPT), "arm-check", str(tmp_path / "nope.tar.gz")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.tar.gz'}: not found (run `make bundle`)"
    ]
    assert "setup_sysroot" not in proc.stdout + proc.stderr and not proc.stdout.strip()


def test_make_variables_are_checked_or_followed_before_any_work():
    """`make bench ISA=bogus` ran variants, optimize, quantize-ort, quantize-stock and tflite before
    the benchmark refused the profile; `make evaluate MODELS=lenet_pool` evaluated every model;
    `make ingest` without RESULT said "the following arguments are required: result"."""
    import subprocess

    from lenet_edge.runtime.env import MASK_PROFILES

    makefile = (ROOT / "Makefile").read_text()
    (line,) = [ln for ln in makefile.splitlines() if ln.startswith("ISA_PROFILES :=")]
    assert line.split(":=")[1].split() == sorted(MASK_PROFILES)  # the Makefile's copy of the list

    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }  # under `make test`

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", "-n", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    bad = make("bench", "ISA=bogus")
    assert bad.returncode == 2 and "ISA=bogus: unknown profile (known: avx2 avx512vnni)" in bad.stderr
    assert bad.stdout == ""  # nothing would run
    assert "--isa avx2" in make("bench", "ISA=avx2").stdout
    one = make("evaluate", "MODELS=lenet_pool").stdout.splitlines()[-1]
    assert "lenet_pool.fp32.onnx" in one and "lenet_stride" not in one
    both = make("evaluate").stdout.splitlines()[-1]
    assert "lenet_pool.fp32.onnx" in both and "lenet_stride.fp32.onnx" in both
    target = make(
        "search", "SEARCH_FLAGS=--target cortex-a72"
    )  # ran the qemu counting, then search-litert refused it
    assert target.returncode == 2 and "--target is set by `make search-arm`" in target.stderr
    assert "publish --onnx-dir elsewhere" in make("publish", "ONNX_DIR=elsewhere").stdout  # was build/onnx
    ingest = subprocess.run(
        ["make", "ingest"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert ingest.returncode != 0 and "error: make ingest needs RESULT=" in ingest.stderr
