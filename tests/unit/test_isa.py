"""`lenet-edge --isa avx2`: the CPUID mask (lenet_edge/cpuid_mask.c) and what results record of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lenet_edge import cli, isa
from lenet_edge.runtime import amx
from lenet_edge.runtime.env import cpu_info, describe_cpu

pytestmark = pytest.mark.unit

XEON = "model name\t: Intel Xeon\nflags\t\t: fpu sse4_1 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_int8 amx_tile\n"
PROBE = """
import ctypes, json
try:
    from numpy._core._multiarray_umath import __cpu_features__ as f
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as f
from lenet_edge.runtime.env import cpu_info, isa_mask
lib = ctypes.CDLL(None)
print(json.dumps({"avx2": f["AVX2"], "fma": f["FMA3"], "avx512f": f["AVX512F"], "avx512vnni": f["AVX512VNNI"],
                  "avx512fp16": f["AVX512FP16"],
                  "mask": isa_mask(), "intercepted": lib.lenet_edge_isa_mask_intercepted(), "cpu": cpu_info()}))
"""


def _supported() -> str | None:
    try:
        isa.check_supported("avx2")
    except isa.IsaError as e:
        return str(e)
    return None


needs_mask = pytest.mark.skipif(_supported() is not None, reason=str(_supported()))


def test_cpu_info_under_a_mask_reports_the_flags_the_process_sees():
    plain = cpu_info(XEON)
    assert "isa_mask" not in plain and "avx512f" in plain["isa_flags"]
    masked = cpu_info(XEON, mask="avx2")
    assert masked["isa_flags"] == ["avx", "avx2", "fma", "sse4_1"]
    assert masked["isa_mask"] == "avx2"
    assert set(masked["isa_flags_hidden"]) == {
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "amx_tile",
    }
    line = describe_cpu(masked)
    assert "--isa avx2" in line and "avx512f" in line and "not another CPU" in line
    assert "--isa" not in describe_cpu(plain)
    assert "family" not in plain  # the fixture has no CPUID numbers: none recorded, none shown
    epyc = cpu_info("model name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\nstepping\t: 1\nflags\t: avx2\n")
    assert (epyc["family"], epyc["model_number"], epyc["stepping"]) == (26, 2, 1)
    assert describe_cpu(epyc) == "AMD EPYC, family 26 model 2 (avx2)"
    arm = cpu_info("processor\t: 0\nFeatures\t: asimd\nCPU part\t: 0xd0b\nCPU implementer\t: 0x41\n")
    assert "family" not in arm and arm["core"] == "cortex-a76"
    zen4 = cpu_info(XEON, mask="avx512vnni")  # AMX and the VEX VNNI go, AVX-512 VNNI stays
    assert zen4["isa_flags"] == ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "fma", "sse4_1"]
    assert set(zen4["isa_flags_hidden"]) == {"avx_vnni", "amx_int8", "amx_tile"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--isa"], "--isa needs a profile and a command"),
        (["--isa=avx2"], "--isa needs a profile and a command"),
        (["--isa", "avx2"], "--isa needs a profile and a command"),
        (["--isa", "avx512", "bench"], "unknown profile"),
        (["--isa", "avx2", "train"], "applies to the inference commands"),
        (["--isa=avx2", "arm-check"], "applies to the inference commands"),
    ],
)
def test_isa_flag_mistakes_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_help_after_the_isa_flag_is_the_help(capsys):
    """`lenet-edge --isa avx2 --help` said "unknown command '--help'"."""
    assert cli.main(["--isa", "avx2", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: lenet-edge")


def test_unsupported_machine_is_refused(monkeypatch):
    monkeypatch.setattr(isa, "_cpuinfo_flags", lambda: {"avx2"})
    with pytest.raises(isa.IsaError, match="no CPUID faulting"):
        isa.check_supported("avx2")


@needs_mask
def test_the_mask_hides_avx512_from_every_library_and_children_inherit_it(tmp_path):
    env = isa.masked_env("avx2")
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["avx2"] and got["fma"] and not got["avx512f"] and not got["avx512vnni"]
    assert got["mask"] == "avx2" and got["intercepted"] > 0
    assert got["cpu"]["isa_mask"] == "avx2" and not any(
        f.startswith("avx512") for f in got["cpu"]["isa_flags"]
    )
    # a child started by the masked process (execve resets CPUID faulting) masks itself again
    child = f"import subprocess, sys; sys.stdout.write(subprocess.run([sys.executable, '-c', {PROBE!r}], capture_output=True, text=True).stdout)"
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and not json.loads(p.stdout)["avx512f"], p.stderr
    # the Zen 4 profile keeps AVX-512 and its VNNI, hides what a Zen 4 lacks
    zen4 = isa.masked_env("avx512vnni")
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=zen4, timeout=120)
    got = json.loads(p.stdout)
    assert got["mask"] == "avx512vnni" and got["avx512vnni"] == got["avx512f"]
    assert not got["avx512fp16"] and not any(f.startswith("amx") for f in got["cpu"]["isa_flags"])
    # without the profile variable the preloaded library does nothing
    env.pop(isa.ENV)
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(p.stdout)["mask"] is None and json.loads(p.stdout)["intercepted"] == 0


@needs_mask
def test_a_real_crash_under_the_mask_still_crashes():
    # the handler takes CPUID faults only; a wild read must die by SIGSEGV, not loop or be skipped
    code = "import ctypes; ctypes.string_at(8, 1)"
    p = subprocess.run(
        [sys.executable, "-X", "faulthandler=0", "-c", code],
        capture_output=True,
        env=isa.masked_env("avx2"),
        timeout=60,
    )
    assert p.returncode == -11


@needs_mask
def test_the_library_is_rebuilt_when_its_source_changes(tmp_path, monkeypatch):
    src = tmp_path / "cpuid_mask.c"
    src.write_bytes(isa.SOURCE.read_bytes())
    monkeypatch.setattr(isa, "SOURCE", src)
    monkeypatch.setattr(isa, "BUILD", tmp_path / "isa")
    first = isa.library()
    src.write_text(src.read_text() + "\n/* changed */\n")
    second = isa.library()
    assert first != second and first.is_file() and second.is_file()
    assert not [p for p in (tmp_path / "isa").iterdir() if p.name.startswith(".")]  # no temp left
    src.write_text("this is not C")
    with pytest.raises(isa.IsaError, match="compiling the CPUID mask failed"):
        isa.library()
    assert not [p for p in (tmp_path / "isa").iterdir() if p.name.startswith(".")]


def test_a_compiler_given_by_cc_is_taken_as_a_command_line_or_named(tmp_path, monkeypatch):
    """CC="gcc -std=c11" (a command with flags, as make takes it), CC=nonexistent-cc and CC=<a
    file that is not a program> were FileNotFoundError / PermissionError tracebacks."""
    src = tmp_path / "cpuid_mask.c"
    src.write_bytes(isa.SOURCE.read_bytes())
    monkeypatch.setattr(isa, "SOURCE", src)
    monkeypatch.setattr(isa, "BUILD", tmp_path / "isa")
    monkeypatch.setenv("CC", "gcc -std=gnu11")
    assert isa.library().is_file()
    src.write_text(src.read_text() + "\n/* changed: built again */\n")
    not_a_program = tmp_path / "cc.txt"
    not_a_program.write_text("x")
    for cc, needle in (
        ("nonexistent-cc", "CC=nonexistent-cc: cannot run the C compiler (No such file or directory)"),
        (str(not_a_program), "cannot run the C compiler (Permission denied)"),
        ('gcc "-O2', "not a command line"),
    ):
        monkeypatch.setenv("CC", cc)
        with pytest.raises(isa.IsaError, match=re.escape(needle)):
            isa.library()
    assert not [p for p in (tmp_path / "isa").iterdir() if p.name.startswith(".")]


def test_masked_bench_result_names_the_mask(tmp_path):
    from lenet_edge.runtime.bench import to_markdown

    report = {
        "environment": {
            "cpu": {**cpu_info(XEON, mask="avx2"), "logical_cpus": 2},
            "os": "Linux",
            "python": "3.11",
            "numpy": "1.26",
        },
        "results": [],
    }
    assert "CPUID hid" in to_markdown(report).splitlines()[0]
    assert Path(isa.SOURCE).is_file()


def test_the_environment_variable_masks_inference_commands_only(monkeypatch, capsys):
    calls = []
    monkeypatch.setenv("LENET_EDGE_ISA", "avx2")
    monkeypatch.setattr(isa, "enter", lambda profile, name, argv: calls.append((profile, name)))
    for name in ("ingest", "report", "train"):  # not inference: run as they are, unmasked
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
    assert calls == []
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert calls == [("avx2", "evaluate")]


AMX_PROBE = """
import ctypes, errno, json, subprocess, sys
from lenet_edge.runtime import amx
amx.deny_amx()
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.syscall(amx.SYS_ARCH_PRCTL, amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA)
child = subprocess.run([sys.executable, "-c", "import ctypes; from lenet_edge.runtime import amx; "
    "l = ctypes.CDLL(None, use_errno=True); print(l.syscall(amx.SYS_ARCH_PRCTL, amx.ARCH_REQ_XCOMP_PERM, "
    "amx.XFEATURE_XTILEDATA), ctypes.get_errno())"], capture_output=True, text=True).stdout.split()
other = libc.syscall(amx.SYS_ARCH_PRCTL, amx.ARCH_GET_XCOMP_PERM, ctypes.byref(ctypes.c_ulong()))
print(json.dumps({"rc": rc, "errno": ctypes.get_errno() if rc else 0, "child": child, "other": other,
                  "permitted": amx.amx_permitted()}))
"""


@pytest.mark.skipif(not amx.applies(), reason="Linux x86_64 only")
def test_amx_off_refuses_the_tile_request_here_and_in_children_and_nothing_else():
    p = subprocess.run([sys.executable, "-c", AMX_PROBE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["rc"] == -1 and got["errno"] == 1  # EPERM, from the filter (a CPU without AMX says EINVAL)
    assert got["child"] == ["-1", "1"]  # inherited across fork + exec
    assert got["other"] == 0 and got["permitted"] is False  # other arch_prctl calls pass


def test_amx_off_after_amx_was_granted_is_one_error(monkeypatch):
    from lenet_edge.runtime.errors import ConfigError

    monkeypatch.setattr(amx, "applies", lambda: True)
    monkeypatch.setattr(amx, "amx_permitted", lambda: True)
    with pytest.raises(ConfigError, match="already granted"):
        amx.deny_amx()


def test_amx_off_is_recorded_and_refused_on_ray():
    from lenet_edge import fleet
    from lenet_edge.runtime.bench import build_parser, settings, to_markdown
    from lenet_edge.runtime.errors import ConfigError

    assert settings(build_parser().parse_args(["m.onnx", "--amx", "off"]))["amx"] == "off"
    assert settings(build_parser().parse_args(["m.onnx"]))["amx"] == "on"
    report = {
        "environment": {"cpu": {**cpu_info(XEON), "logical_cpus": 2}, "os": "L", "python": "3", "numpy": "1"},
        "settings": {"amx": "off"},
        "results": [],
    }
    assert "AMX refused" in to_markdown(report).splitlines()[0]
    with pytest.raises(ConfigError, match="--backend local"):
        fleet.main(["m.onnx", "--backend", "ray", "--amx", "off"])
