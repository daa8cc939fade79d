#!/usr/bin/env python3
"""Host-side driver: instructions per batch-1 inference for each model x CPU,
repeated, under qemu-aarch64 + insn_plugin. Stdlib only (any host python3).

    python3 run_counts.py                      # FP32+INT8 x cortex-a72/a76 x 2 repeats
    python3 run_counts.py --cpus cortex-a76 --reps 1 --models models/x.onnx
    python3 run_counts.py -- --runner-root /work/main --io-binding   # extra count_insns.py args

For every (cpu, model, rep) it runs
    qemu_py.sh --cpu CPU --plugin libinsn.so,mode=MODE,out=REPORT count_insns.py MODEL ...
parses the plugin report and computes, per marked region,
    (region insns - marker overhead) / runs
where the marker overhead is the last empty (tag 0) region. Results go to
OUTDIR/counts.json, OUTDIR/table.md, raw reports to OUTDIR/raw/.
"repeat spread" is "exact" when every region count of every repeat matched,
else (max-min)/mean of the per-inference values; exit status 1 above --tol-pct.
Repeats are bit-identical except for rare time-dependent events inside
onnxruntime's Run() (a few hundred instructions each, see README).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from arm_files import arm_build, write_text_atomic  # beside this script, in arm/

HERE = os.path.dirname(os.path.abspath(__file__))
ARM_BUILD = str(arm_build())


def run_one(cpu, model, rep, a, extra):
    tag = f"{cpu}.{os.path.basename(model).replace('.onnx', '')}.rep{rep}"
    report = os.path.join(a.out_dir, "raw", tag + ".plugin.txt")
    log = os.path.join(a.out_dir, "raw", tag + ".log")
    plugin = f"{a.plugin},mode={a.mode},out={report}"
    cmd = [
        os.path.join(HERE, "qemu_py.sh"),
        "--cpu",
        cpu,
        "--plugin",
        plugin,
        os.path.join(HERE, "count_insns.py"),
        model,
        "--runs",
        str(a.runs),
        "--warmup",
        str(a.warmup),
        "--regions",
        str(a.regions),
        *extra,
    ]
    env = dict(os.environ, DEST=a.sysroot)
    if a.site:
        env["SITE"] = a.site
    if os.path.exists(report):
        os.remove(report)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n" + p.stdout)
    if p.returncode != 0 or not os.path.exists(report):
        sys.exit(f"run failed (rc={p.returncode}): see {log}\n{p.stdout[-2000:]}")
    meta = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("COUNT_META "))[11:])
    regs = [
        (int(t), int(n))
        for t, n in re.findall(r"^region \d+ tag=(\d+) insns=(\d+)", Path(report).read_text(), re.M)
    ]
    empty = [n for t, n in regs if t == 0]
    work = [n for t, n in regs if t != 0]
    if not empty or len(work) != a.regions:
        sys.exit(f"unexpected plugin report {report}")
    overhead = empty[-1]
    per_inf = [(n - overhead) / a.runs for n in work]
    return {
        "cpu": cpu,
        "model": os.path.basename(model),
        "rep": rep,
        "wall_s": round(wall, 2),
        "marker_overhead": overhead,
        "region_insns": work,
        "insns_per_inference_regions": per_inf,
        "insns_per_inference": statistics.mean(per_inf),
        "region_spread_pct": 100 * (max(per_inf) - min(per_inf)) / statistics.mean(per_inf),
        "meta": meta,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sysroot", default=os.path.join(ARM_BUILD, "sysroot"))
    ap.add_argument("--site", default=None, help="default: DEST/opt/armlab/site")
    ap.add_argument("--plugin", default=os.path.join(ARM_BUILD, "libinsn.so"))
    ap.add_argument("--mode", choices=["inline", "tb"], default="inline")
    ap.add_argument("--cpus", nargs="+", default=["cortex-a72", "cortex-a76"])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument(
        "--tol-pct",
        type=float,
        default=0.05,
        help="max allowed spread between repeats in %% (exit 1 above it)",
    )
    ap.add_argument("--out-dir", default=os.path.join(ARM_BUILD, "counts"))
    ap.add_argument("extra", nargs="*", help="after --: extra count_insns.py arguments")
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out_dir, "raw"), exist_ok=True)

    rows = []
    for cpu in a.cpus:
        for model in a.models:
            for rep in range(1, a.reps + 1):
                r = run_one(cpu, model, rep, a, a.extra)
                rows.append(r)
                print(
                    f"{cpu:11s} {r['model']:26s} rep{rep}: {r['insns_per_inference']:12,.1f} insns/inference "
                    f"(regions {', '.join(f'{v:,.1f}' for v in r['insns_per_inference_regions'])}; "
                    f"marker overhead {r['marker_overhead']}) wall {r['wall_s']} s",
                    flush=True,
                )
                if rep == 1 and model == a.models[0]:
                    hw = r["meta"]["hwcap"]
                    print(f"{cpu:11s} guest HWCAP: " + " ".join(k for k, v in hw.items() if v), flush=True)

    # summary table
    ok = True
    summ = {}
    for cpu in a.cpus:
        for model in a.models:
            name = os.path.basename(model)
            reps = [r for r in rows if r["cpu"] == cpu and r["model"] == name]
            vals = [r["insns_per_inference"] for r in reps]
            exact = len(set(tuple(r["region_insns"]) for r in reps)) == 1
            spread = 100 * (max(vals) - min(vals)) / statistics.mean(vals)
            ok &= spread <= a.tol_pct
            summ[(cpu, name)] = (vals, "exact" if exact else f"{spread:.4f} %")
    names = [os.path.basename(m) for m in a.models]
    lines = [
        f"instructions per batch-1 inference (qemu {a.mode} counting, {a.runs} runs x {a.regions} regions, "
        f"after {a.warmup} warm-up runs; marker overhead subtracted)",
        "",
        "| CPU | model | " + " | ".join(f"rep {i}" for i in range(1, a.reps + 1)) + " | repeat spread |",
        "|---|---|" + "---:|" * a.reps + "---|",
    ]
    for (cpu, name), (vals, same) in summ.items():
        lines.append(f"| {cpu} | {name} | " + " | ".join(f"{v:,.0f}" for v in vals) + f" | {same} |")
    fp = [n for n in names if "fp32" in n]
    i8 = [n for n in names if "int8" in n]
    if fp and i8:
        lines += ["", "| CPU | FP32 insns/inf | INT8 insns/inf | INT8/FP32 |", "|---|---:|---:|---:|"]
        for cpu in a.cpus:
            f = statistics.mean(summ[(cpu, fp[0])][0])
            q = statistics.mean(summ[(cpu, i8[0])][0])
            lines.append(f"| {cpu} | {f:,.0f} | {q:,.0f} | {q / f:.3f} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    write_text_atomic(os.path.join(a.out_dir, "table.md"), table)
    counted = {
        "mode": a.mode,
        "runs": a.runs,
        "regions": a.regions,
        "warmup": a.warmup,
        "extra_args": a.extra,
        "rows": rows,
    }
    write_text_atomic(os.path.join(a.out_dir, "counts.json"), json.dumps(counted, indent=1))
    if not ok:
        print(f"WARNING: repeats differ by more than {a.tol_pct} %", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
