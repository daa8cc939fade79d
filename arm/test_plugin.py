#!/usr/bin/env python3
"""Self-test for insn_plugin.c.

Guest part (under qemu-aarch64 with the plugin loaded, no arguments):
executes hand-assembled aarch64 code with a known dynamic instruction count
from an executable mmap via ctypes,

    movz x0, #N ; loop: subs x0, x0, #1 ; b.ne loop ; ret      (2N+2 insns)

inside marked regions, plus empty marked regions.

Host part (`test_plugin.py --check REPORT`, any python3): parses the plugin
report and verifies
  * empty regions all have the same count (marker overhead is constant),
  * two regions with the same N have identical counts,
  * count(N=100000) - count(N=1000) == 2*(100000-1000) exactly.
build_plugin.sh runs both parts (`--report FILE` = guest run, then check).
"""

import re
import sys
from pathlib import Path

LOOPS = [1000, 1000, 100000]
REPS = 20


def guest() -> None:
    import ctypes
    import mmap

    from insn_markers import Markers

    def loop_fn(n: int):
        assert 0 < n < 65536 or n == 100000
        # movz x0,#lo16 ; movk x0,#hi16,lsl16 ; loop: subs ; b.ne ; ret
        lo, hi = n & 0xFFFF, n >> 16
        code = [0xD2800000 | (lo << 5), 0xF2A00000 | (hi << 5), 0xF1000400, 0x54FFFFE1, 0xD65F03C0]
        buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(b"".join(c.to_bytes(4, "little") for c in code))
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        fn = ctypes.CFUNCTYPE(ctypes.c_long)(addr)
        return fn, buf  # keep buf alive

    import gc

    gc.disable()  # no collections at varying points
    m = Markers()
    fns = {n: loop_fn(n) for n in set(LOOPS)}
    start, stop = m.start, m.stop

    def empty(tag):
        start(tag)
        stop(tag)

    def run(fn, tag):
        start(tag)
        fn()
        stop(tag)

    # CPython 3.11 specialises ("quickens") bytecode over the first executions,
    # so early repetitions differ by a few hundred insns: repeat REPS times and
    # let the host check only the last repetition.
    for _ in range(REPS):
        for _ in range(3):
            empty(0)
        for n in LOOPS:
            run(fns[n][0], n)
    print(f"test_plugin guest: {REPS} x (3 empty regions + loops {LOOPS})", flush=True)


def check(path: str) -> int:
    regs = []
    lines = Path(path).read_text().splitlines(keepends=True)
    for line in lines:
        mt = re.match(r"region \d+ tag=(\d+) insns=(\d+)", line)
        if mt:
            regs.append((int(mt.group(1)), int(mt.group(2))))
    tail = [ln for ln in lines if not ln.startswith("region")]
    print("".join(tail).rstrip())
    print(f"{len(regs)} regions; checking the last repetition:")
    last = regs[-(3 + len(LOOPS)) :]
    for t, c in last:
        print(f"  tag={t} insns={c}")
    empty = [c for t, c in last if t == 0]
    loops = [(t, c) for t, c in last if t != 0]
    ok = True
    if len(empty) != 3 or len(set(empty)) != 1:
        print(f"FAIL: empty-region counts not constant: {empty}")
        ok = False
    if [t for t, _ in loops] != LOOPS:
        print(f"FAIL: unexpected loop regions {loops}")
        ok = False
    else:
        (_, a), (_, b), (_, c) = loops
        if a != b:
            print(f"FAIL: same loop counted differently: {a} vs {b}")
            ok = False
        d = c - a
        exp = 2 * (LOOPS[2] - LOOPS[0])
        print(f"count(N=100000)-count(N=1000) = {d}, expected {exp}: {'OK' if d == exp else 'FAIL'}")
        ok &= d == exp
        print(
            f"marker overhead (empty region) = {empty[0] if empty else '?'} insns; "
            f"ctypes loop call overhead = {a - empty[0] - (2 * LOOPS[0] + 3) if empty else '?'} insns"
        )
    print("PLUGIN SELF-TEST", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def check_bb(path: str) -> int:
    """The per-block report of bb_plugin.c on the same guest: block counts add up to the regions'
    instructions (checked by the parser), the count-down loop's body ran exactly sum(N - 1) times
    per repetition, and llvm-mca models that body at ~1 cycle per iteration."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import mca

    rep = mca.parse_report(Path(path).read_text())
    body = "000400f1e1ffff54"  # subs x0, x0, #1 ; b.ne .-4
    want = REPS * sum(n - 1 for n in LOOPS)
    got = rep.blocks[body].work if body in rep.blocks else 0
    ok = got == want and rep.blocks[body].empty == 0 if body in rep.blocks else False
    print(
        f"bb: {len(rep.blocks)} blocks, loop body executed {got} times, expected {want}: {'OK' if ok else 'FAIL'}"
    )
    if (mca.LLVM_BIN / "llvm-mca").is_file():
        cyc = mca.block_cycles(mca.disassemble(body, "aarch64"), "aarch64", "cortex-a72")
        good = abs(cyc - 1.0) <= 0.05
        print(
            f"bb: llvm-mca cortex-a72 loop body {cyc:.3f} cycles/iteration, expected ~1: {'OK' if good else 'FAIL'}"
        )
        ok &= good
    print("BB PLUGIN SELF-TEST", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "--check-bb":
        sys.exit(check_bb(sys.argv[2]))
    guest()
