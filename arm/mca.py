#!/usr/bin/env python3
"""Cycle estimate of one inference from per-block execution counts and llvm-mca block throughput.

Input: a report of arm/bb_plugin.c (per translated block: instruction count, executions inside
work and inside empty marked regions, machine code). Per inference, a block runs
(work / work_regions - empty / empty_regions) / runs times: the marker path, which empty
regions measure, is subtracted as in the instruction counts.

Each hot block (the fewest blocks covering `coverage` of the dynamic instructions) is
disassembled with llvm-mc and its steady-state throughput taken from llvm-mca for the named core
(cycles per iteration of the block run back to back: a throughput model, no cache misses, no
branch mispredictions); the remaining blocks are charged at the hot blocks' mean cycles per
instruction. A block that does not disassemble is charged the same way and counted as
unmodelled; instructions llvm-mca has no scheduling data for (e.g. aarch64 LSE atomics in the
a76 model) are left out of their block's cycles. The result is an **estimate**: cycles per inference, and microseconds at a
stated clock.

The cycles are also split by the kind of block: SIMD blocks (an operand in a vector register:
x86 xmm/ymm/zmm, aarch64 NEON v/q or SVE z) are the kernels' inner loops, which a back-to-back
throughput model describes well; scalar blocks are the framework's glue (dispatch, shape logic,
the interpreter), whose short blocks it charges with dependency chains the out-of-order core
overlaps. The x86 validation (validate_x86.py) fits one factor per kind, which is what calibrates
the board estimates.

Stdlib only; needs llvm-19 (`apt-get install llvm-19`). `python3 arm/mca.py --help`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LLVM_BIN = Path("/usr/lib/llvm-19/bin")


@dataclass
class Block:
    insns: int
    work: int = 0
    empty: int = 0
    addrs: set = field(default_factory=set)


@dataclass
class Report:
    work_regions: int
    empty_regions: int
    work_insns: int
    empty_insns: int
    blocks: dict[str, Block]  # machine code (hex) -> counts, same code at several addresses summed


class McaError(Exception):
    pass


def parse_report(text: str) -> Report:
    """Parse a bb_plugin report; refuse anything malformed with the line that is wrong."""
    head = re.search(r"^regions work=(\d+) empty=(\d+) work_insns=(\d+) empty_insns=(\d+)$", text, re.M)
    if not head:
        raise McaError("not a bb_plugin report (no 'regions' line)")
    blocks: dict[str, Block] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("bb "):
            continue
        m = re.fullmatch(r"bb vaddr=0x([0-9a-f]+) insns=(\d+) work=(\d+) empty=(\d+) bytes=([0-9a-f]*)", line)
        if not m or len(m.group(5)) % 2:
            raise McaError(f"line {n}: malformed block line: {line[:80]}")
        b = blocks.setdefault(m.group(5), Block(int(m.group(2))))
        if b.insns != int(m.group(2)):
            raise McaError(f"line {n}: the same code with two instruction counts")
        b.work += int(m.group(3))
        b.empty += int(m.group(4))
        b.addrs.add(int(m.group(1), 16))
    rep = Report(*(int(g) for g in head.groups()), blocks)
    if sum(b.insns * b.work for b in blocks.values()) != rep.work_insns:
        raise McaError("block counts do not add up to the region total (truncated report?)")
    return rep


def per_inference(rep: Report, runs: int) -> dict[str, float]:
    """Executions per inference of each block: work regions minus the marker path (empty ones)."""
    if rep.work_regions < 1 or rep.empty_regions < 1 or runs < 1:
        raise McaError("need at least one work region, one empty region and one run per region")
    out = {}
    for code, b in rep.blocks.items():
        c = (b.work / rep.work_regions - b.empty / rep.empty_regions) / runs
        if c > 1e-9:
            out[code] = c
    return out


SIMD_OPERAND = {
    "x86_64": re.compile(r"%[xyz]mm\d"),
    "aarch64": re.compile(r"\b(?:v\d+\.\d*[bhsd]|q\d+|z\d+\.[bhsdq])\b", re.I),
}


def is_simd(asm: str, triple: str) -> bool:
    """Whether a block works on vector registers (a kernel) rather than scalar code (glue)."""
    return bool(SIMD_OPERAND[triple.split("-")[0]].search(asm))


def _tool(name: str) -> str:
    path = LLVM_BIN / name
    if not path.is_file():
        raise McaError(f"{path} not found: apt-get install llvm-19")
    return str(path)


def _core(mcpu: str, mattr: str) -> list[str]:
    """The -mcpu/-mattr flags llvm-mc and llvm-mca share."""
    return ([f"-mcpu={mcpu}"] if mcpu else []) + ([f"-mattr={mattr}"] if mattr else [])


def disassemble(code_hex: str, triple: str, mcpu: str = "", mattr: str = "") -> str:
    """LLVM assembly of raw machine code; the core's features decide what decodes (sdot needs dotprod)."""
    data = " ".join(f"0x{code_hex[i : i + 2]}" for i in range(0, len(code_hex), 2))
    cmd = [_tool("llvm-mc"), "--disassemble", f"-triple={triple}", *_core(mcpu, mattr)]
    p = subprocess.run(cmd, input=data, capture_output=True, text=True)
    if p.returncode != 0 or "invalid instruction" in p.stderr:
        raise McaError(f"llvm-mc cannot disassemble: {p.stderr.strip()[:200]}")
    return p.stdout


def block_cycles(asm: str, triple: str, mcpu: str, mattr: str = "", iterations: int = 200) -> float:
    """Steady-state cycles per execution of the block, from llvm-mca's Total Cycles / Iterations."""
    cmd = [_tool("llvm-mca"), f"-mtriple={triple}", f"-iterations={iterations}", *_core(mcpu, mattr)]
    p = subprocess.run(cmd, input=asm, capture_output=True, text=True)
    m = re.search(r"Total Cycles:\s+(\d+)", p.stdout)
    if p.returncode != 0 or not m:
        raise McaError(f"llvm-mca: {p.stderr.strip().splitlines()[-1:] or ['no output']}")
    return int(m.group(1)) / iterations


def _asm_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(".")]


def blocks_cycles(
    codes: list[str], n_insns: list[int], triple: str, mcpu: str, mattr: str = "", iterations: int = 200
) -> list[tuple[float | None, bool]]:
    """block_cycles of many blocks with one llvm-mc and one llvm-mca process (llvm-mca code
    regions), each with whether it is a SIMD block; cycles None for a block that cannot be
    disassembled or modelled."""
    if not codes:
        return []
    feats = _core(mcpu, mattr)
    data = "\n".join(" ".join(f"0x{c[i : i + 2]}" for i in range(0, len(c), 2)) for c in codes)
    p = subprocess.run([_tool("llvm-mc"), "--disassemble", f"-triple={triple}", *feats],
                       input=data, capture_output=True, text=True)  # fmt: skip
    lines = _asm_lines(p.stdout)
    asm: list[str | None] = []
    if p.returncode == 0 and not p.stderr.strip() and len(lines) == sum(n_insns):
        at = 0
        for n in n_insns:  # one output line per instruction, blocks in order
            asm.append("\n".join(lines[at : at + n]))
            at += n
    else:  # something did not decode: find which, block by block
        for c in codes:
            try:
                asm.append("\n".join(_asm_lines(disassemble(c, triple, mcpu, mattr))))
            except McaError:
                asm.append(None)
    body = "".join(f"# LLVM-MCA-BEGIN b{i}\n{a}\n# LLVM-MCA-END b{i}\n" for i, a in enumerate(asm) if a)
    q = subprocess.run([_tool("llvm-mca"), f"-mtriple={triple}", f"-iterations={iterations}", *feats,
                        "-skip-unsupported-instructions=any"],
                       input=body, capture_output=True, text=True)  # fmt: skip
    found = {}
    pat = r"Code Region - b(\d+)\s+Iterations:\s+(\d+)\s+Instructions:\s+(\d+)\s+Total Cycles:\s+(\d+)"
    for m in re.finditer(pat, q.stdout):
        if int(m.group(3)) > 0:
            found[int(m.group(1))] = int(m.group(4)) / int(m.group(2))
    return [(found.get(i), bool(a) and is_simd(a, triple)) for i, a in enumerate(asm)]


def model_fingerprint(triple: str, mcpu: str, mattr: str = "") -> str:
    """Which scheduling model -mcpu really uses: a hash of llvm-mca's per-instruction latencies
    and throughputs on a probe mix (equal hashes = the same model under two names)."""
    probe = {
        "aarch64": "add x0, x1, x2\nmul x3, x4, x5\nldr x6, [x7]\nfmla v0.4s, v1.4s, v2.4s\n"
        "mla v3.4s, v4.4s, v5.4s\nsmull v6.8h, v7.8b, v8.8b\nfdiv d0, d1, d2\nstr x8, [x9]\n",
        "x86_64": "addq %rax, %rbx\nimulq %rcx, %rdx\nmovq (%rsi), %rdi\nvfmadd231ps %ymm0, %ymm1, %ymm2\n"
        "vpmaddubsw %ymm3, %ymm4, %ymm5\nvdivps %ymm6, %ymm7, %ymm8\nmovq %r8, (%r9)\n",
    }[triple.split("-")[0]]
    cmd = [
        _tool("llvm-mca"),
        f"-mtriple={triple}",
        "-iterations=100",
        "-instruction-info",
        *_core(mcpu, mattr),
    ]
    p = subprocess.run(cmd, input=probe, capture_output=True, text=True)
    if p.returncode != 0:
        raise McaError(f"llvm-mca -mcpu={mcpu}: {p.stderr.strip()[:200]}")
    body = p.stdout[p.stdout.find("Instruction Info:") :]
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def estimate(
    rep: Report,
    runs: int,
    triple: str,
    mcpu: str,
    mattr: str = "",
    coverage: float = 0.995,
    cache: dict | None = None,
) -> dict:
    """Cycles per inference (estimate) with the evidence: coverage, unmodelled share, top blocks."""
    counts = per_inference(rep, runs)
    dyn = {c: n * rep.blocks[c].insns for c, n in counts.items()}
    total = sum(dyn.values())
    if total <= 0:
        raise McaError("no instructions per inference after subtracting the marker path")
    hot, acc = [], 0.0
    for c in sorted(dyn, key=dyn.get, reverse=True):
        if acc >= coverage * total:
            break
        hot.append(c)
        acc += dyn[c]
    cache = {} if cache is None else cache
    todo = [c for c in hot if (c, triple, mcpu, mattr) not in cache]
    for c, res in zip(
        todo, blocks_cycles(todo, [rep.blocks[c].insns for c in todo], triple, mcpu, mattr), strict=True
    ):
        cache[(c, triple, mcpu, mattr)] = res
    modelled_cycles, modelled_insns, unmodelled, rows = 0.0, 0.0, 0.0, []
    simd_cycles, simd_insns = 0.0, 0.0
    for c in hot:
        cyc, simd = cache[(c, triple, mcpu, mattr)]
        if cyc is None:
            unmodelled += dyn[c]
            continue
        modelled_cycles += counts[c] * cyc
        modelled_insns += dyn[c]
        if simd:
            simd_cycles += counts[c] * cyc
            simd_insns += dyn[c]
        rows.append({"code_sha": hashlib.sha256(c.encode()).hexdigest()[:12], "insns": rep.blocks[c].insns,
                     "per_inference": counts[c], "cycles_per_exec": cyc, "cycles": counts[c] * cyc,
                     "simd": simd})  # fmt: skip
    if modelled_insns <= 0:
        raise McaError("llvm-mca could model none of the hot blocks")
    cpi = modelled_cycles / modelled_insns
    cycles = modelled_cycles + cpi * (total - modelled_insns)
    # the cold tail and unmodelled blocks are charged at the mean CPI and counted as scalar glue
    rows.sort(key=lambda r: -r["cycles"])
    return {
        "mcpu": mcpu,
        "mattr": mattr,
        "triple": triple,
        "cycles_per_inference": cycles,
        "cycles_simd": simd_cycles,
        "cycles_scalar": cycles - simd_cycles,
        "insns_per_inference": total,
        "simd_insn_share": simd_insns / total,
        "hot_blocks": len(hot),
        "blocks": len(counts),
        "coverage": acc / total,
        "unmodelled_share": unmodelled / total,
        "modelled_cpi": cpi,
        "top_blocks": rows[:10],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path, help="a bb_plugin report")
    p.add_argument("--runs", type=int, required=True, help="inferences per work region")
    p.add_argument("--triple", default="aarch64")
    p.add_argument("--mcpu", action="append", required=True, help="core(s) to model, e.g. cortex-a76")
    p.add_argument("--mattr", default="", help="e.g. +dotprod (needed to parse sdot)")
    p.add_argument("--ghz", type=float, action="append", help="clock per --mcpu, for microseconds")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    try:
        rep = parse_report(a.report.read_text())
        ghz = a.ghz or [None] * len(a.mcpu)
        if len(ghz) != len(a.mcpu):
            raise McaError("give one --ghz per --mcpu")
        out, cache = [], {}
        for mcpu, g in zip(a.mcpu, ghz, strict=True):
            e = estimate(rep, a.runs, a.triple, mcpu, a.mattr, cache=cache)
            e["model_fingerprint"] = model_fingerprint(a.triple, mcpu, a.mattr)
            if g:
                e.update(ghz=g, us_per_inference_estimate=e["cycles_per_inference"] / (g * 1e3))
            out.append(e)
            us = f", {e['us_per_inference_estimate']:.1f} µs at {g} GHz (estimate)" if g else ""
            print(
                f"{a.report.name} {mcpu}: {e['cycles_per_inference']:,.0f} cycles per inference (estimate){us}; "
                f"{e['hot_blocks']} hot blocks cover {100 * e['coverage']:.1f} % of "
                f"{e['insns_per_inference']:,.0f} insns, unmodelled {100 * e['unmodelled_share']:.2f} %"
            )
    except (McaError, OSError) as e:
        print(f"error: {a.report}: {e}", file=sys.stderr)
        return 2
    if a.json:
        from arm_files import write_text_atomic  # beside this script (on the path when it runs)

        write_text_atomic(a.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
