"""The cycle estimate's parts (arm/mca.py): the per-block report parser, the per-inference counts,
and the llvm-mca cycle model on a tiny hand-written program whose cycle count is known."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

spec = importlib.util.spec_from_file_location("arm_mca", ROOT / "arm" / "mca.py")
mca = importlib.util.module_from_spec(spec)
sys.modules["arm_mca"] = mca  # dataclasses look their module up
spec.loader.exec_module(mca)

# aarch64: `subs x0, x0, #1 ; b.ne .-4`, the body of the self-test's count-down loop
LOOP = "000400f1e1ffff54"
# `movz x0, #1000 ; movk x0, #0, lsl 16 ; subs ; b.ne` (the loop entry) and `ret`
ENTRY, RET = "007d80d20000a0f2000400f1e1ffff54", "c0035fd6"
needs_llvm = pytest.mark.skipif(
    not (mca.LLVM_BIN / "llvm-mca").is_file(), reason="llvm-19 not installed (make test installs it)"
)


def _report(n_loop=999, regions=2, runs=1, marker=(("aaaa", 5),)):
    """What bb_plugin writes for `regions` work regions of `runs` calls of the 1000-iteration loop,
    plus as many empty regions; the marker path runs in both."""
    lines, work_insns, empty_insns = [], 0, 0
    blocks = [
        (ENTRY, 4, regions * runs, 0),
        (LOOP, 2, regions * runs * n_loop, 0),
        (RET, 1, regions * runs, 0),
    ]
    blocks += [(code, n, regions, regions) for code, n in marker]
    for k, (code, n, w, e) in enumerate(blocks):
        lines.append(f"bb vaddr=0x{0x1000 + 16 * k:x} insns={n} work={w} empty={e} bytes={code}")
        work_insns += n * w
        empty_insns += n * e
    head = f"regions work={regions} empty={regions} work_insns={work_insns} empty_insns={empty_insns}"
    return "\n".join([head, *lines]) + "\n"


def test_report_parser_sums_the_same_code_and_checks_the_totals():
    text = _report() + "bb vaddr=0x9000 insns=2 work=0 empty=0 bytes=" + LOOP + "\n"
    rep = mca.parse_report(text)
    assert rep.blocks[LOOP].work == 2 * 999 and len(rep.blocks[LOOP].addrs) == 2
    with pytest.raises(mca.McaError, match="do not add up"):
        mca.parse_report(text.replace("work=1998", "work=1997"))
    with pytest.raises(mca.McaError, match="line 3: malformed"):
        mca.parse_report(text.replace("insns=2 work=1998", "insns=two work=1998"))
    with pytest.raises(mca.McaError, match="not a bb_plugin report"):
        mca.parse_report("region 0 tag=1 insns=5\n")


def test_per_inference_subtracts_the_marker_path():
    counts = mca.per_inference(mca.parse_report(_report(regions=3, runs=4)), runs=4)
    assert counts == {ENTRY: 1.0, LOOP: 999.0, RET: 1.0}  # the marker block cancels out
    with pytest.raises(mca.McaError, match="at least one"):
        mca.per_inference(mca.parse_report(_report()), runs=0)


@needs_llvm
def test_cycle_model_of_a_known_loop():
    """A dependent `subs`/`b.ne` loop runs one iteration per cycle on these cores' integer pipes:
    llvm-mca must say ~1 cycle per iteration, and 1,000 iterations ~1,000 cycles."""
    asm = mca.disassemble(LOOP, "aarch64")
    assert "subs" in asm and "b.ne" in asm
    for cpu in ("cortex-a72", "cortex-a76"):
        assert mca.block_cycles(asm, "aarch64", cpu) == pytest.approx(1.0, abs=0.05)
    e = mca.estimate(mca.parse_report(_report()), 1, "aarch64", "cortex-a72", coverage=1.0)
    assert e["insns_per_inference"] == 4 + 2 * 999 + 1
    # ~1,000 cycles of loop plus the entry and return blocks (each modelled as if repeated)
    assert 999 <= e["cycles_per_inference"] <= 1030 and e["unmodelled_share"] == 0


@needs_llvm
def test_unmodelled_blocks_are_charged_and_reported():
    bad = "ffffffff"  # no valid aarch64 encoding: llvm-mc cannot disassemble it
    e = mca.estimate(mca.parse_report(_report(marker=((bad, 1),))), 1, "aarch64", "cortex-a72", coverage=1.0)
    assert e["unmodelled_share"] == 0  # the marker block cancels out before modelling
    text = _report().replace(f"bytes={RET}", f"bytes={bad}")
    e = mca.estimate(mca.parse_report(text), 1, "aarch64", "cortex-a72", coverage=1.0)
    assert 0 < e["unmodelled_share"] < 0.01


@needs_llvm
def test_scheduling_model_fingerprints_tell_shared_models_apart():
    a72, a76 = (mca.model_fingerprint("aarch64", c) for c in ("cortex-a72", "cortex-a76"))
    n1, a55 = (mca.model_fingerprint("aarch64", c) for c in ("neoverse-n1", "cortex-a55"))
    assert a72 == a76  # LLVM 19 maps both to one model: results say so
    assert len({a72, n1, a55}) == 3


def test_llvm_missing_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(mca, "LLVM_BIN", tmp_path)
    with pytest.raises(mca.McaError, match="apt-get install llvm-19"):
        mca.disassemble(LOOP, "aarch64")
    assert shutil.which("true")  # the rest of the machine is untouched


def test_simd_blocks_are_told_from_scalar_ones():
    assert mca.is_simd("fmla\tv0.4s, v1.4s, v2.4s", "aarch64")
    assert mca.is_simd("ldr\tq0, [x1]", "aarch64") and mca.is_simd("sdot\tv0.4s, v1.16b, v2.4b[0]", "aarch64")
    assert not mca.is_simd("subs\tx0, x0, #1\nb.ne\t#-4\nldr\tx6, [x7]\nfadd\td0, d1, d2", "aarch64")
    assert mca.is_simd("vfmadd231ps\t%ymm0, %ymm1, %ymm2", "x86_64")
    assert mca.is_simd("movups\t(%rsi), %xmm0", "x86_64")
    assert not mca.is_simd("addq\t%rax, %rbx\nmovq\t(%rsi), %rdi", "x86_64")


# aarch64 `fmla v0.4s, v1.4s, v2.4s ; subs x0, x0, #1 ; b.ne .-8`: a vector loop
VLOOP = "20cc224e000400f1c1ffff54"


@needs_llvm
def test_estimate_splits_cycles_into_simd_and_scalar_blocks():
    text = _report().replace(f"bytes={LOOP}", f"bytes={VLOOP}").replace("insns=2 ", "insns=3 ")
    text = text.replace("work_insns=", "work_insns=X").split("\n")
    # the loop block now has 3 instructions: recompute the header totals
    body = [ln for ln in text[1:] if ln]
    work = sum(int(ln.split("insns=")[1].split()[0]) * int(ln.split("work=")[1].split()[0]) for ln in body)
    empty = sum(int(ln.split("insns=")[1].split()[0]) * int(ln.split("empty=")[1].split()[0]) for ln in body)
    text = "\n".join([f"regions work=2 empty=2 work_insns={work} empty_insns={empty}", *body]) + "\n"
    e = mca.estimate(mca.parse_report(text), 1, "aarch64", "cortex-a72", coverage=1.0)
    assert e["cycles_simd"] > 0.9 * e["cycles_per_inference"]  # the loop is ~all the time
    assert e["cycles_simd"] + e["cycles_scalar"] == pytest.approx(e["cycles_per_inference"])
    assert e["simd_insn_share"] == pytest.approx(3 * 999 / (4 + 3 * 999 + 1))
    scalar = mca.estimate(mca.parse_report(_report()), 1, "aarch64", "cortex-a72", coverage=1.0)
    assert scalar["cycles_simd"] == 0 and scalar["simd_insn_share"] == 0
