"""Malformed inputs to `bench-jobs --project`, `reference write|check|readme` and `arm-check`: one
error line naming the file and the field, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit

NAN = float("nan")


def _one_line(capsys, rc: int, *needles: str) -> str:
    """An in-process `runtime.cli.run`: exit 2 and one 'error:' line on stderr naming each needle;
    what went to stdout."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), (rc, lines)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return out


# --- bench-jobs --project ------------------------------------------------------------------------
GOOD_STUDY = {"rows": [{"model": "a", "seconds": {"total": 60.0}}, {"model": "b", "seconds": {"total": 90}}]}
GOOD_OVERHEAD = {"ray_overhead_per_job_excluding_start_s": -0.0072, "ray_start_stop_s": 3.4}


def _row(total):
    return {"rows": [{"model": "a", "seconds": {"total": 60.0}}, {"model": "b", "seconds": total}]}


@pytest.mark.parametrize(
    "study,overhead,bad,needle",
    [
        ({"rows": [{"model": "a", "seconds": "x"}]}, GOOD_OVERHEAD, "study", "rows[0].seconds must be"),
        (_row({"total": NAN}), GOOD_OVERHEAD, "study", "rows[1].seconds.total must be a finite number"),
        (_row({"total": -5}), GOOD_OVERHEAD, "study", "rows[1].seconds.total must be a finite number > 0"),
        (_row({"total": "9"}), GOOD_OVERHEAD, "study", "rows[1].seconds.total"),
        (_row({"total": True}), GOOD_OVERHEAD, "study", "rows[1].seconds.total"),
        (_row({"total": 10**400}), GOOD_OVERHEAD, "study", "rows[1].seconds.total"),
        ({"rows": []}, GOOD_OVERHEAD, "study", "rows must be a non-empty list"),
        ({"rows": {"a": 1}}, GOOD_OVERHEAD, "study", "rows must be a non-empty list"),
        ({"rows": [7]}, GOOD_OVERHEAD, "study", "rows[0] must be an object"),
        ({"rows": [{"model": 3, "seconds": {"total": 1}}]}, GOOD_OVERHEAD, "study", "rows[0].model"),
        ({"a": NAN}, GOOD_OVERHEAD, "study", "missing 'rows'"),
        ([], GOOD_OVERHEAD, "study", "not a study result"),
        (GOOD_STUDY, {}, "overhead", "missing 'ray_overhead_per_job_excluding_start_s'"),
        (GOOD_STUDY, [1], "overhead", "not a `bench-jobs` result"),
        (GOOD_STUDY, {**GOOD_OVERHEAD, "ray_start_stop_s": NAN}, "overhead", "ray_start_stop_s must be"),
        (GOOD_STUDY, {**GOOD_OVERHEAD, "ray_start_stop_s": -1}, "overhead", "ray_start_stop_s must be"),
        (
            GOOD_STUDY,
            {**GOOD_OVERHEAD, "ray_overhead_per_job_excluding_start_s": float("inf")},
            "overhead",
            "ray_overhead_per_job_excluding_start_s must be a finite number",
        ),
        (
            GOOD_STUDY,
            {**GOOD_OVERHEAD, "ray_overhead_per_job_excluding_start_s": -100},
            "overhead",
            "negative time",
        ),
        (_row({"total": 1e308}), GOOD_OVERHEAD, "study", "too large to project"),
    ],
)
def test_bench_jobs_projection_refuses_malformed_study_and_overhead_files(
    study, overhead, bad, needle, tmp_path, capsys
):
    """A string `seconds` was a TypeError, `{}` or `{"a": NaN}` a KeyError; NaN job times printed
    "nan min", negative ones "0 min" and an empty study "5 × 0"."""
    from lenet_edge.jobs import main
    from lenet_edge.runtime.cli import run

    paths = {"study": tmp_path / "study.json", "overhead": tmp_path / "overhead.json"}
    paths["study"].write_text(json.dumps(study))
    paths["overhead"].write_text(json.dumps(overhead))
    rc = run(main, ["--project", str(paths["study"]), "--json", str(paths["overhead"])])
    assert _one_line(capsys, rc, str(paths[bad]), needle) == ""  # no table, not even a partial one


def test_bench_jobs_projection_of_good_files_and_the_cli_line(tmp_path, capsys):
    from lenet_edge.jobs import main
    from lenet_edge.runtime.cli import run

    study, overhead = tmp_path / "study.json", tmp_path / "overhead.json"
    study.write_text(json.dumps(GOOD_STUDY))
    overhead.write_text(json.dumps(GOOD_OVERHEAD))  # a slightly negative per-job overhead: measured
    assert run(main, ["--project", str(study), "--json", str(overhead)]) == 0
    out = capsys.readouterr().out
    assert "| 5 × 2 |" in out and "nan" not in out
    # the console command as the auditor ran it: a string `seconds` is one line, no traceback
    study.write_text(json.dumps({"rows": [{"model": "a", "seconds": "x"}]}))
    proc = run_cli("-m", "lenet_edge.cli", "bench-jobs", "--project", str(study), "--json", str(overhead))
    assert_one_line_error(proc, str(study), "rows[0].seconds")
    overhead.write_text("{}")
    proc = run_cli("-m", "lenet_edge.cli", "bench-jobs", "--project", str(study), "--json", str(overhead))
    assert_one_line_error(proc)


# --- reference write / check / readme ------------------------------------------------------------
@pytest.fixture()
def reference_in_tmp(tmp_path, monkeypatch):
    """export.reference pointed at tmp_path: its reference.json, checkpoints folder and a copy of
    the README (the committed ones are never touched)."""
    import lenet_edge.export.reference as r

    committed = {p: p.read_bytes() for p in (ROOT / "README.md", ROOT / "results" / "reference.json")}
    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_bytes(committed[ROOT / "README.md"])
    monkeypatch.setattr(r, "ROOT", tmp_path)
    monkeypatch.setattr(r, "REFERENCE", tmp_path / "results" / "reference.json")
    monkeypatch.setattr(r, "REF_CKPT_DIR", tmp_path / "results" / "checkpoints")
    monkeypatch.setattr(r, "README", readme)
    yield r
    assert all(p.read_bytes() == b for p, b in committed.items()), "a committed file was written"


def _committed_reference() -> dict:
    return json.loads((ROOT / "results" / "reference.json").read_text())


def _set(root: dict, keys: str, value) -> dict:
    """root with the field at dotted `keys` replaced."""
    *head, last = keys.split(".")
    doc = root
    for k in head:
        doc = doc[k]
    doc[last] = value
    return root


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda ref: [], "the file must be a JSON object, got []"),
        (lambda ref: {**ref, "models": []}, "models must be a JSON object"),
        (lambda ref: {**ref, "models": {}}, "missing models.lenet_pool"),
        (lambda ref: _set(ref, "models.lenet_pool.fp32.test_top1", NAN), "models.lenet_pool.fp32.test_top1"),
        (
            lambda ref: _set(ref, "models.lenet_stride.fp32.test_top2", "0.99"),
            "models.lenet_stride.fp32.test_top2",
        ),
        (lambda ref: _set(ref, "models.lenet_pool.training", 3), "models.lenet_pool.training must be"),
        (lambda ref: _set(ref, "models.lenet_pool.training.config", None), "training.config must be"),
        (lambda ref: _set(ref, "training_environment", "x86"), "training_environment must be"),
        (lambda ref: _set(ref, "training_environment.versions", []), "training_environment.versions"),
    ],
)
def test_reference_check_and_readme_refuse_a_reference_of_another_shape(
    mutate, needle, reference_in_tmp, tmp_path, monkeypatch, capsys
):
    """`[]` as reference.json was a TypeError in `check` and `readme`."""
    import lenet_edge.export.onnx_export as onnx_export
    from lenet_edge.runtime.cli import run

    r = reference_in_tmp
    exp = {"checkpoint_sha256": "a" * 64, "test_top1": 0.98, "test_top2": 0.99}  # good export records
    monkeypatch.setattr(onnx_export, "read_export_record", lambda p: exp)
    ref = mutate(_committed_reference())
    r.REFERENCE.write_text(json.dumps(ref))
    before = r.README.read_bytes()
    (tmp_path / "onnx").mkdir()  # a folder given on the command line must exist
    rc = run(r.main, ["check", "--onnx-dir", str(tmp_path / "onnx")])
    _one_line(capsys, rc, str(r.REFERENCE), needle)
    _one_line(capsys, run(r.main, ["readme"]), str(r.REFERENCE), needle)
    assert r.README.read_bytes() == before


@pytest.mark.parametrize(
    "keys,value",
    [
        ("models.lenet_pool.int8.test_top1", NAN),
        ("models.lenet_stride.int8.accuracy_drop_pp", float("inf")),
        ("models.lenet_pool.fp32.parity_max_abs_logit_diff", NAN),
        ("models.lenet_pool.training.seconds_per_epoch", -1),
        ("models.lenet_pool.params", 1.5),
        ("models.lenet_pool.int8.mcnemar.ref_only_correct", "4"),
        ("models.lenet_pool.int8.nodes", None),
        ("models.lenet_pool.int8.recipe_name", "a | b\n"),
        ("blog.lenet_stride.test_top1", NAN),
    ],
)
def test_reference_readme_refuses_nan_and_wrong_types_and_leaves_the_readme(
    keys, value, reference_in_tmp, capsys
):
    """NaN in reference.json rewrote the README with "nan %"."""
    from lenet_edge.runtime.cli import run

    r = reference_in_tmp
    ref = _committed_reference()
    _set(ref, keys, value)
    r.REFERENCE.write_text(json.dumps(ref))
    before = r.README.read_bytes()
    _one_line(capsys, run(r.main, ["readme"]), str(r.REFERENCE), keys)
    assert r.README.read_bytes() == before
    assert b"nan %" not in r.README.read_bytes()


ENV = {"cpu_model": "AMD EPYC", "isa_flags": ["avx2"], "machine": "x86_64"}
VERSIONS = {"python": "3.11.7", "paddle": "3.3.1"}


def _write_inputs(train: Path, onnx: Path) -> None:
    """Training and export records of both models that `reference write` adopts."""
    from lenet_edge.runtime.files import sha256_file

    train.mkdir(exist_ok=True)
    onnx.mkdir(exist_ok=True)
    for name in ("lenet_pool", "lenet_stride"):
        (train / f"{name}.npz").write_bytes(name.encode())
        sha = sha256_file(train / f"{name}.npz")
        rec = {"checkpoint_sha256": sha, "config": {"model": name}, "seconds_per_epoch": 20.0}
        rec |= {"test_top1": 0.98, "test_top2": 0.99, "environment": ENV, "versions": VERSIONS}
        (train / f"{name}.train.json").write_text(json.dumps(rec))
        exp = {"checkpoint_sha256": sha, "test_top1": 0.9871, "test_top2": 0.9972, "params": 1}
        exp |= {"onnx_bytes": 252_155, "parity": {"max_abs_logit_diff": 1e-5}}
        exp |= {"data_sha256": "d", "versions": VERSIONS, "onnx_sha256": "o" * 64}
        (onnx / f"{name}.fp32.export.json").write_text(json.dumps(exp))


def _int8_record() -> dict:
    ref = _committed_reference()["models"]["lenet_stride"]["int8"]
    rec = {k: v for k, v in ref.items() if k != "calibration_sha256"}
    return rec | {"default_recipe": True, "fp32": {"onnx_sha256": "o" * 64}, "calibration": {"sha256": "c"}}


@pytest.mark.parametrize(
    "file,content,needle",
    [
        ("train/lenet_stride.train.json", {"x": NAN}, "missing checkpoint_sha256"),
        ("train/lenet_stride.train.json", [], "the file must be a JSON object"),
        ("train/lenet_stride.train.json", "seconds_per_epoch=nan", "seconds_per_epoch must be"),
        ("train/lenet_stride.train.json", "config=7", "config must be a JSON object"),
        ("train/lenet_stride.train.json", "environment=x", "environment must be a JSON object"),
        ("onnx/lenet_stride.fp32.export.json", {"x": 1}, "missing checkpoint_sha256"),
        ("onnx/lenet_stride.fp32.export.json", "parity=nan", "parity must be a JSON object"),
        ("onnx/lenet_stride.fp32.export.json", "test_top1=nan", "test_top1 must be a fraction"),
        ("onnx/lenet_stride.int8.qdq.quantize.json", "test_top1=nan", "test_top1 must be a fraction"),
        ("onnx/lenet_stride.int8.qdq.quantize.json", "mcnemar=null", "mcnemar must be a JSON object"),
        ("onnx/lenet_stride.int8.qdq.quantize.json", [1], "not a quantize record"),
    ],
)
def test_reference_write_refuses_malformed_records_and_writes_nothing(
    file, content, needle, reference_in_tmp, tmp_path, capsys
):
    """`{"x": NaN}` as a training record was a KeyError, after the first model's checkpoint had
    already been copied into results/checkpoints."""
    from lenet_edge.runtime.cli import run

    r = reference_in_tmp
    train, onnx = tmp_path / "train", tmp_path / "onnx"
    _write_inputs(train, onnx)
    (onnx / "lenet_stride.int8.qdq.quantize.json").write_text(json.dumps(_int8_record()))
    path = tmp_path / file
    if isinstance(content, str):  # key=value: one field of the good record replaced
        key, value = content.split("=")
        doc = json.loads(path.read_text())
        doc[key] = {"nan": NAN, "null": None}.get(value, value if not value.isdigit() else int(value))
        content = doc
    path.write_text(json.dumps(content))
    before = r.README.read_bytes()
    rc = run(r.main, ["write", "--train-dir", str(train), "--onnx-dir", str(onnx)])
    _one_line(capsys, rc, str(path), needle)
    assert not r.REFERENCE.exists() and not r.REF_CKPT_DIR.exists()
    assert r.README.read_bytes() == before


def test_reference_write_of_good_records_writes_all(reference_in_tmp, tmp_path, capsys):
    from lenet_edge.runtime.cli import run

    r = reference_in_tmp
    train, onnx = tmp_path / "train", tmp_path / "onnx"
    _write_inputs(train, onnx)
    (onnx / "lenet_stride.int8.qdq.quantize.json").write_text(json.dumps(_int8_record()))
    assert run(r.main, ["write", "--train-dir", str(train), "--onnx-dir", str(onnx)]) == 0
    ref = json.loads(r.REFERENCE.read_text())
    assert r.validate_reference(ref, r.REFERENCE) == ref and "int8" in ref["models"]["lenet_stride"]
    assert sorted(p.name for p in r.REF_CKPT_DIR.iterdir()) == sorted(
        f"{n}{ext}" for n in ("lenet_pool", "lenet_stride") for ext in (".npz", ".train.json")
    )
    assert r.render_table(ref) in r.README.read_text()


# --- arm-check's bundle ---------------------------------------------------------------------------
@pytest.fixture()
def arm_check(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "arm"))  # arm_check imports arm_setup beside it
    spec = importlib.util.spec_from_file_location("arm_check_malformed", ROOT / "arm" / "arm_check.py")
    ac = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ac)
    monkeypatch.setattr(ac, "ARM_BUILD", tmp_path / "arm")
    return ac


def _tarball(path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A .tar.gz of (name, file bytes) or (name, symlink target as str) members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


GOOD_MANIFEST = json.dumps({"models": [{"file": "models/m.fp32.onnx"}]}).encode()
GOOD = [("lenet-edge-bundle/manifest.json", GOOD_MANIFEST), ("lenet-edge-bundle/models/m.fp32.onnx", b"x")]


@pytest.mark.parametrize(
    "members,needle",
    [
        ([*GOOD, ("../escape.txt", b"x")], "outside the destination"),
        ([*GOOD, ("lenet-edge-bundle/link", "/etc/passwd")], "is a link to an absolute path"),
        ([*GOOD, ("lenet-edge-bundle/up", "../../..")], "outside the destination"),
        ([("lenet-edge-bundle/manifest.json", b"{not json")], "manifest.json: not valid JSON"),
        ([("lenet-edge-bundle/manifest.json", b"\xff\xfe")], "manifest.json: not valid JSON"),
        ([("lenet-edge-bundle/other.txt", b"x")], "manifest.json missing"),
        ([("lenet-edge-bundle/manifest.json", b"[]")], "'models' must list at least one model"),
        ([("lenet-edge-bundle/manifest.json", b'{"models": [{"file": "../x"}]}')], "models[0].file"),
        ([("lenet-edge-bundle/manifest.json", b'{"models": [{"file": "m.onnx"}]}')], "not in the bundle"),
    ],
)
def test_arm_check_refuses_a_malformed_bundle_naming_it(members, needle, arm_check, tmp_path):
    """`../` members, an absolute symlink or a manifest that is not JSON were tarfile/json
    tracebacks after minutes of sysroot set-up; nothing is left unpacked or outside the folder."""
    tarball = _tarball(tmp_path / "bundle.tar.gz", members)
    with pytest.raises(arm_check.BundleError) as e:
        arm_check.unpack(tarball)
    assert str(e.value).startswith(f"{tarball}: ") and needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "arm" / "escape.txt").exists()
    assert [p.name for p in (tmp_path / "arm").iterdir()] == []  # no staging, no half bundle


def test_arm_check_unpacks_a_good_bundle_and_fails_fast_on_a_bad_one(
    arm_check, tmp_path, monkeypatch, capsys
):
    killed = tmp_path / "arm" / ".bundle.4194303.tmp"  # a run killed mid-unpack (its PID gone)
    (killed / "lenet-edge-bundle").mkdir(parents=True)
    mine = tmp_path / "arm" / f".bundle.{os.getppid()}.tmp"  # a live process's staging stays
    mine.mkdir()
    bundle, manifest = arm_check.unpack(_tarball(tmp_path / "good.tar.gz", GOOD))
    assert (bundle / "models" / "m.fp32.onnx").read_bytes() == b"x" and manifest["models"]
    assert not killed.exists() and mine.is_dir()
    # a bad tarball fails before the sysroot set-up, and the previous bundle stays
    truncated = (tmp_path / "good.tar.gz").read_bytes()[:-40]
    for data in (b"not a tarball at all", truncated, None):
        bad = tmp_path / "bad.tar.gz"
        if data is None:
            _tarball(bad, [*GOOD, ("../escape.txt", b"x")])
        else:
            bad.write_bytes(data)
        monkeypatch.setattr(arm_check.arm_setup, "ensure", lambda: pytest.fail("set-up before the check"))
        monkeypatch.setattr(sys, "argv", ["arm_check.py", str(bad)])
        assert arm_check.main() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {bad}: "), err
        assert (bundle / "models" / "m.fp32.onnx").read_bytes() == b"x"


def test_a_failing_arm_check_never_replaces_the_passing_report(arm_check, tmp_path, monkeypatch, capsys):
    """arm-check wrote arm-check.{json,md} with plain writes before its verdict: a run whose aarch64
    results differ from x86 replaced the passing report (and `publish --arm` filed it), a stop
    between the two writes left one run's JSON beside another's table. Now a failing run goes to
    arm-check.failed.*, each file is renamed into place, and the JSON names its table's sha256."""
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    files = ("m.fp32.onnx", "m.int8.qdq.onnx")
    manifest = {"models": [{"file": f"models/{f}"} for f in files]}
    insns = {"m.fp32.onnx": 1000.0, "m.int8.qdq.onnx": 600.0}
    verdict = {"passed": True}

    def check(b, cpu, site):
        return {
            "models": [
                {
                    "file": f"models/{f}",
                    "precision": f.split(".")[1],
                    "passed": verdict["passed"],
                    "agreement": 1.0,
                    "max_abs_diff": 0.0,
                    "bit_exact": True,
                }  # fmt: skip
                for f in files
            ]
        }

    def counts(b, site, models, reps):
        rows = [
            {"cpu": c, "model": m.name, "insns_per_inference": insns[m.name]}
            for c in arm_check.CPUS
            for m in models
        ]
        return {"rows": rows, "reps": reps}

    monkeypatch.setattr(arm_check, "unpack", lambda t: (bundle, manifest))
    monkeypatch.setattr(arm_check.arm_setup, "ensure", lambda: 0)
    monkeypatch.setattr(arm_check, "bundle_check", check)
    monkeypatch.setattr(arm_check, "counts", counts)
    monkeypatch.setattr(arm_check, "_mca_available", lambda: False)
    tarball = tmp_path / "b.tar.gz"
    tarball.write_bytes(b"stubbed")
    monkeypatch.setattr(sys, "argv", ["arm_check.py", str(tarball)])
    arm = tmp_path / "arm"

    assert arm_check.main() == 0
    good = {n: (arm / n).read_bytes() for n in ("arm-check.json", "arm-check.md")}
    doc = json.loads(good["arm-check.json"])
    assert doc["passed"] is True
    assert doc["markdown_sha256"] == hashlib.sha256(good["arm-check.md"]).hexdigest()
    assert [g["ratio"] for g in doc["best_int8_over_best_fp32"]] == [0.6, 0.6]

    verdict["passed"], insns["m.int8.qdq.onnx"] = False, 9990.0  # a run whose results differ from x86
    capsys.readouterr()
    assert arm_check.main() == 1
    assert "arm-check.failed.md" in capsys.readouterr().err
    assert {n: (arm / n).read_bytes() for n in good} == good  # the passing pair stays
    failed = json.loads((arm / "arm-check.failed.json").read_text())
    assert failed["passed"] is False and [g["ratio"] for g in failed["best_int8_over_best_fp32"]] == [
        9.99,
        9.99,
    ]

    verdict["passed"] = True
    assert arm_check.main() == 0
    assert sorted(p.name for p in arm.iterdir()) == [
        "arm-check.json",
        "arm-check.md",
    ]  # no temp, no stale failure


def test_arm_check_names_a_build_folder_it_cannot_use(arm_check, tmp_path, monkeypatch, capsys):
    """ARM_BUILD=<a file> or a place under /proc: FileExistsError / FileNotFoundError tracebacks
    (exit 1) from the unpack's mkdir. Now one line naming ARM_BUILD, exit 2, before any set-up; an
    empty ARM_BUILD is unset (it meant the current folder, and a sysroot in the source tree)."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    tarball = _tarball(tmp_path / "good.tar.gz", GOOD)
    monkeypatch.setattr(arm_check.arm_setup, "ensure", lambda: pytest.fail("set-up before the check"))
    monkeypatch.setattr(sys, "argv", ["arm_check.py", str(tarball)])
    for where, needle in ((a_file, "is a file, not a folder"), (Path("/proc/nope"), "cannot create it")):
        monkeypatch.setattr(arm_check, "ARM_BUILD", where)
        assert arm_check.main() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: ARM_BUILD={where}: {needle}"), err
    import arm_files

    monkeypatch.setenv("ARM_BUILD", "")
    assert arm_files.arm_build() == ROOT / "build" / "arm"
    monkeypatch.setenv("ARM_BUILD", "rel/arm")
    assert arm_files.arm_build() == Path.cwd() / "rel" / "arm"
