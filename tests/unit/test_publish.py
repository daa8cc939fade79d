"""`lenet-edge publish`: a run in build/bench/ -> results/bench/<machine>.*, named from its CPU, only
when every file comes from the same run on committed code; nothing written otherwise."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from lenet_edge.report import publish
from lenet_edge.runtime.cli import run

COMMIT = {"git_commit": "a" * 40, "dirty": False}
ZEN5 = {
    "model": "AMD EPYC",
    "isa_flags": ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "fma"],
    "logical_cpus": 2,
    "family": 26,
    "model_number": 2,
}
SHA = {"lenet_pool.int8.search.onnx": "1" * 64, "lenet_pool.fp32.tflite": "2" * 64}


def _env(cpu: dict, code: dict | None = COMMIT) -> dict:
    return {"cpu": cpu, "machine": "x86_64", "os": "Linux", **({"lenet_edge_code": code} if code else {})}


def _bench(cpu: dict = ZEN5, code: dict | None = COMMIT, amx: str = "on") -> dict:
    rows = [
        {
            "model": "lenet_pool",
            "format": name.split(".", 1)[1],
            "file": name,
            "file_sha256": sha,
            "runtime": "onnxruntime",
            "call": "run",
            "batch": 1,
            "threads": 1,
            "latency_ms_p50": 0.011,
            "ratio_p50_vs_fp32": 0.8,
        }
        for name, sha in SHA.items()
    ]
    return {
        "schema": "lenet-edge/bench/v1",
        "created_unix": 1_800_000_000,
        "environment": _env(cpu, code),
        "settings": {"amx": amx},
        "results": rows,
    }


def _write(folder: Path, name: str, doc) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


@pytest.fixture
def run_dir(tmp_path):
    """A complete run of `make search bench select bench-train` and its search records."""
    bench_dir, onnx_dir = tmp_path / "build" / "bench", tmp_path / "build" / "onnx"
    bench = _bench()
    _write(bench_dir, "bench.json", bench)
    _write(bench_dir, "bench.md", "| table |\n")
    _write(bench_dir, "search.json", {"amx": "auto", "environment": _env(ZEN5), "models": {}})
    _write(bench_dir, "search.md", "# search\n")
    _write(bench_dir, "targets.json", {"cpu": ZEN5, "amx": "on", "lenet_edge_code": COMMIT, "choices": []})
    _write(bench_dir, "train.json", {"schema": "lenet-edge/bench-train/v1", "environment": _env(ZEN5)})
    rec = {"onnx": "lenet_pool.int8.search.onnx", "onnx_sha256": SHA["lenet_pool.int8.search.onnx"]}
    _write(onnx_dir, "lenet_pool.int8.search.quantize.json", rec)
    tfl = {"outputs": {"fp32": {"file": "lenet_pool.fp32.tflite", "sha256": "9" * 64}}}  # not the one timed
    _write(onnx_dir, "lenet_pool.tflite.json", tfl)
    return tmp_path


def _argv(root: Path, *extra: str) -> list[str]:
    return [
        "--bench-dir",
        str(root / "build" / "bench"),
        "--onnx-dir",
        str(root / "build" / "onnx"),
        "--out-dir",
        str(root / "results" / "bench"),
        "--records-dir",
        str(root / "results" / "records"),
        *extra,
    ]


def _published(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / "results")) for p in (root / "results").rglob("*") if p.is_file())


def test_a_run_is_published_under_its_cpus_name_with_the_records_of_the_files_it_timed(run_dir, capsys):
    assert run(publish.main, _argv(run_dir)) == 0
    name = "x86_64-amd-epyc-avx512vnni"
    assert _published(run_dir) == sorted(
        [
            f"bench/{name}.json",
            f"bench/{name}.md",
            f"bench/{name}.search.json",
            f"bench/{name}.search.md",
            f"bench/{name}.targets.json",
            f"bench/{name}.train.json",
            "records/lenet_pool.int8.search.quantize.json",  # its sha256 is the file the bench timed
        ]
    )  # lenet_pool.tflite.json left out: it describes another fp32.tflite than the one timed
    for src, dest in (("bench.json", f"{name}.json"), ("search.md", f"{name}.search.md")):
        assert (run_dir / "results/bench" / dest).read_bytes() == (run_dir / "build/bench" / src).read_bytes()
    assert "then `make report`" in capsys.readouterr().err


def test_dry_run_writes_nothing(run_dir, capsys):
    assert run(publish.main, _argv(run_dir, "--dry-run")) == 0
    assert not (run_dir / "results").exists()
    assert "would write" in capsys.readouterr().out


@pytest.mark.parametrize(
    "cpu, amx, name",
    [
        (ZEN5, "on", "x86_64-amd-epyc-avx512vnni"),
        ({**ZEN5, "isa_flags": ["avx", "avx2", "fma"]}, "on", "x86_64-amd-epyc-avx2"),
        (  # lenet-edge --isa avx2: named after the CPU, then the mask
            {**ZEN5, "isa_flags": ["avx2"], "isa_mask": "avx2", "isa_flags_hidden": ["avx512_vnni"]},
            "on",
            "x86_64-amd-epyc-avx512vnni.isa-avx2",
        ),
        (
            {
                "model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz",
                "isa_flags": ["avx512_vnni", "amx_int8"],
            },
            "off",
            "x86_64-intel-xeon-avx512vnni-amx.amx-off",
        ),
        ({"model": "AMD EPYC", "isa_flags": ["avx512_vnni"]}, "off", "x86_64-amd-epyc-avx512vnni"),  # no AMX
        ({"model": "../../etc/passwd", "isa_flags": []}, "on", "x86_64-etc-passwd-baseline"),
    ],
)
def test_the_name_comes_from_the_cpu(cpu, amx, name):
    assert publish.machine_name(_env(cpu), amx) == name
    assert "/" not in name and ".." not in name


def _refused(root: Path, capsys, *needles: str, argv: tuple[str, ...] = ()) -> None:
    assert run(publish.main, _argv(root, *argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err
    assert not (root / "results").exists()  # nothing published


def _edit(root: Path, name: str, fn) -> None:
    p = root / "build" / "bench" / name
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


def test_a_run_on_uncommitted_changes_needs_allow_dirty(run_dir, capsys):
    dirty = {**COMMIT, "dirty": True}
    for name in ("bench.json", "search.json", "train.json"):
        _edit(run_dir, name, lambda d: d["environment"].update(lenet_edge_code=dirty))
    _edit(run_dir, "targets.json", lambda d: d.update(lenet_edge_code=dirty))
    _refused(run_dir, capsys, "bench.json", "uncommitted changes", "--allow-dirty")
    assert run(publish.main, _argv(run_dir, "--allow-dirty")) == 0


def test_a_run_without_a_commit_is_refused(run_dir, capsys):
    _edit(run_dir, "bench.json", lambda d: d["environment"].pop("lenet_edge_code"))
    _refused(run_dir, capsys, "bench.json", "no lenet-edge commit")


@pytest.mark.parametrize(
    "name, edit, needle",
    [
        (
            "search.json",
            lambda d: d["environment"].update(lenet_edge_code={**COMMIT, "git_commit": "b" * 40}),
            "commit",
        ),
        ("search.json", lambda d: d["environment"]["cpu"].update(isa_mask="avx2"), "ISA mask"),
        ("search.json", lambda d: d["environment"]["cpu"].update(model_number=1), "CPU"),
        ("targets.json", lambda d: d.update(amx="off"), "AMX off"),
        (
            "train.json",
            lambda d: d["environment"].update(lenet_edge_code={**COMMIT, "git_commit": "c" * 40}),
            "commit",
        ),
    ],
)
def test_a_file_from_another_run_is_refused(run_dir, capsys, name, edit, needle):
    _edit(run_dir, name, edit)
    _refused(run_dir, capsys, name, "another run than bench.json", needle)


def test_the_ray_overhead_file_is_published_with_its_run(run_dir, capsys):
    """`make bench-jobs` (per-job overhead of --backend ray) is part of a machine's run: published
    beside the benchmark (it was copied by hand), refused from another run or without the
    environment it records (its older files wrote `env`)."""
    _write(run_dir / "build" / "bench", "jobs-overhead.json", {"jobs": 40, "environment": _env(ZEN5)})
    assert run(publish.main, _argv(run_dir)) == 0
    assert "bench/x86_64-amd-epyc-avx512vnni.jobs-overhead.json" in _published(run_dir)
    _edit(run_dir, "jobs-overhead.json", lambda d: d.update(env=d.pop("environment")))
    capsys.readouterr()
    assert run(publish.main, _argv(run_dir)) == 2
    err = capsys.readouterr().err
    assert "jobs-overhead.json" in err and "another run than bench.json" in err and err.count("\n") == 1, err


def test_a_masked_runs_training_file_keeps_the_whole_cpus_name_and_it_publishes_no_records(run_dir):
    masked = {
        **ZEN5,
        "isa_flags": ["avx", "avx2", "fma"],
        "isa_mask": "avx2",
        "isa_flags_hidden": ["avx512_vnni"],
    }
    masked["isa_flags_hidden"] = ["avx512_vnni", "avx512bw", "avx512f"]
    for name in ("bench.json", "search.json"):
        _edit(run_dir, name, lambda d: d["environment"].update(cpu=copy.deepcopy(masked)))
    _edit(run_dir, "targets.json", lambda d: d.update(cpu=copy.deepcopy(masked)))
    assert run(publish.main, _argv(run_dir)) == 0
    published = _published(run_dir)
    assert "bench/x86_64-amd-epyc-avx512vnni.isa-avx2.json" in published
    assert "bench/x86_64-amd-epyc-avx512vnni.train.json" in published  # training runs unmasked
    assert not any(p.startswith("records/") for p in published)  # the report reads whole-ISA runs


@pytest.mark.parametrize(
    "case, needles",
    [
        ("no bench.json", ("bench.json", "no benchmark result")),
        ("bench.json garbage", ("bench.json", "not valid JSON")),
        ("bench.json another schema", ("bench.json", "not a lenet-edge benchmark result")),
        ("search.json a list", ("search.json", "not a lenet-edge results file")),
        ("bench.md missing", ("bench.md", "missing beside bench.json")),
        ("train.json without environment", ("train.json", "another run")),
        ("search.json holding NaN", ("search.json", "holds NaN or Infinity at zz")),  # report refused it
        ("targets.json holding Infinity", ("targets.json", "holds NaN or Infinity at zz")),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(run_dir, capsys, case, needles):
    bench_dir = run_dir / "build" / "bench"
    if case == "no bench.json":
        (bench_dir / "bench.json").unlink()
    elif case == "bench.json garbage":
        (bench_dir / "bench.json").write_bytes(b"\x00{not json")
    elif case == "bench.json another schema":
        _edit(run_dir, "bench.json", lambda d: d.update(schema="other"))
    elif case == "search.json a list":
        (bench_dir / "search.json").write_text("[1, 2]")
    elif case == "bench.md missing":
        (bench_dir / "bench.md").unlink()
    elif case == "search.json holding NaN":
        _edit(run_dir, "search.json", lambda d: d.update(zz=float("nan")))
    elif case == "targets.json holding Infinity":
        _edit(run_dir, "targets.json", lambda d: d.update(zz=float("inf")))
    else:
        _edit(run_dir, "train.json", lambda d: d.pop("environment"))
    _refused(run_dir, capsys, *needles)


@pytest.fixture
def arm_run(tmp_path):
    """`make search-arm bundle arm-check`: the check in build/arm, each core's search in build/bench."""
    arm_dir, bench_dir = tmp_path / "build" / "arm", tmp_path / "build" / "bench"
    _write(arm_dir, "arm-check.md", "# aarch64 check\n")
    _write(
        arm_dir,
        "arm-check.json",
        {
            "command": "lenet-edge arm-check b",
            "environment": _env(ZEN5),
            "best_int8_over_best_fp32": [],
            "passed": True,
            "markdown_sha256": hashlib.sha256(b"# aarch64 check\n").hexdigest(),
        },
    )
    for core in ("cortex-a72", "cortex-a76"):
        _write(bench_dir, f"search.{core}.json", {"target": core, "environment": _env(ZEN5), "models": {}})
        _write(bench_dir, f"search.{core}.md", "# search\n")
    _write(bench_dir, "search.json", {"environment": _env(ZEN5)})  # the host's search: not aarch64's
    return tmp_path


def _arm_argv(root: Path, *extra: str) -> list[str]:
    return [
        "--arm",
        "--arm-dir",
        str(root / "build" / "arm"),
        "--bench-dir",
        str(root / "build" / "bench"),
        "--out-dir",
        str(root / "results" / "arm"),
        *extra,
    ]


def test_the_aarch64_run_is_published_to_results_arm(arm_run):
    assert run(publish.main, _arm_argv(arm_run)) == 0
    assert _published(arm_run) == [
        f"arm/{n}"
        for n in (
            "arm-check.json",
            "arm-check.md",
            "search.cortex-a72.json",
            "search.cortex-a72.md",
            "search.cortex-a76.json",
            "search.cortex-a76.md",
        )
    ]


@pytest.mark.parametrize(
    "case, needles",
    [
        ("a core's search from another commit", ("search.cortex-a76.json", "another commit")),
        ("a dirty check", ("arm-check.json", "uncommitted changes")),
        ("a check without a commit", ("arm-check.json", "no lenet-edge commit")),
        ("not a check", ("arm-check.json", "not a lenet-edge aarch64 check")),
        ("no check", ("arm-check.json", "no aarch64 check")),
        ("a core's table missing", ("search.cortex-a72.md", "missing")),
        ("a failed self-check", ("arm-check.json", "self-check did not pass")),
        ("a table of another run", ("arm-check.md", "not the table of arm-check.json")),
    ],
)
def test_an_aarch64_run_that_does_not_hold_together_is_refused(arm_run, capsys, case, needles):
    check = arm_run / "build" / "arm" / "arm-check.json"
    if case == "a core's search from another commit":
        _edit(
            arm_run,
            "search.cortex-a76.json",
            lambda d: d["environment"]["lenet_edge_code"].update(git_commit="d" * 40),
        )
    elif case == "a dirty check":
        check.write_text(
            json.dumps(
                {**json.loads(check.read_text()), "environment": _env(ZEN5, {**COMMIT, "dirty": True})}
            )
        )
    elif case == "a check without a commit":
        check.write_text(json.dumps({**json.loads(check.read_text()), "environment": _env(ZEN5, None)}))
    elif case == "not a check":
        check.write_text("{}")
    elif case == "no check":
        check.unlink()
    elif case == "a failed self-check":  # arm-check writes such a run aside; this one was moved by hand
        check.write_text(json.dumps({**json.loads(check.read_text()), "passed": False}))
    elif case == "a table of another run":  # a run stopped between its two renames
        (check.parent / "arm-check.md").write_text("# aarch64 check, the run before\n")
    else:
        (arm_run / "build" / "bench" / "search.cortex-a72.md").unlink()
    assert run(publish.main, _arm_argv(arm_run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(n in err for n in needles), err
    assert not (arm_run / "results").exists()


def test_a_destination_that_cannot_be_written_replaces_none_of_the_run(run_dir, capsys):
    out = run_dir / "results" / "bench"
    out.mkdir(parents=True)
    old = out / "x86_64-amd-epyc-avx512vnni.json"
    old.write_text("the previous run")
    (out / "x86_64-amd-epyc-avx512vnni.train.json").mkdir()  # the last file of the run: a folder there
    assert run(publish.main, _argv(run_dir)) == 2
    assert "x86_64-amd-epyc-avx512vnni.train.json" in capsys.readouterr().err
    assert old.read_text() == "the previous run"  # written first, yet not replaced
    assert sorted(p.name for p in out.iterdir()) == [old.name, "x86_64-amd-epyc-avx512vnni.train.json"]
    assert not (run_dir / "results" / "records").exists()
