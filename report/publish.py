"""`lenet-edge publish` (make publish): this machine's benchmark run, from build/bench/ into
results/bench/<machine>.*, named from the CPU the run measured (never from a name typed in).

Run it after `make search bench select` (and `make bench-train` / `make bench-jobs`, when they were
part of the run): each machine kind keeps its own results file, and the performance goals are read
from them.
<machine> is `<arch>-<vendor>-<family>-<ISA class>` from the benchmark's environment capture
(x86_64-amd-epyc-avx2, x86_64-amd-epyc-avx512vnni, x86_64-intel-xeon-avx512vnni-amx), plus
`.isa-<profile>` for a run under `lenet-edge --isa` (CPUID masked) and `.amx-off` for one with AMX
refused (BENCH_FLAGS="--amx off").

Before anything is written, every file must come from the same run as bench.json: the same CPU
(model, CPUID family and model, ISA flags), the same lenet-edge commit, and for the timing files
the same ISA mask and AMX setting; and a run on uncommitted changes is refused (--allow-dirty
takes it, and the files keep saying so). A run on the CPU's whole ISA also publishes the search
records of the files it timed (<model>.int8.search*.json and <model>.tflite.json, when their
sha256 is the one the benchmark timed) into results/records/, which `make report` reads.

`--arm` publishes the aarch64 run instead (`make search-arm bundle arm-check`): build/arm/arm-check
and each core's build/bench/search.cortex-* (JSON and Markdown) to results/arm/, all from one commit.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lenet_edge.runtime.cli import add_common, parser, path_arg, run
from lenet_edge.runtime.env import whole_isa
from lenet_edge.runtime.errors import LenetEdgeError
from lenet_edge.runtime.files import atomic_path, inside, read_json, sha256_file
from lenet_edge.runtime.ingest import IngestError, slug, validate
from lenet_edge.runtime.numeric import non_finite_at
from lenet_edge.workflow import model_names

ROOT = Path(__file__).resolve().parent.parent

# (results file in build/bench without .json, its name in results/bench after <machine>); the
# benchmark's is required, the others are published when present
FILES = (
    ("bench", ""),
    ("search", ".search"),
    ("search.litert", ".search-litert"),
    ("targets", ".targets"),
    ("bench.tflite-runtime", ".tflite-runtime"),
    ("targets.tflite-runtime", ".tflite-runtime.targets"),
    ("train", ".train"),
    ("jobs-overhead", ".jobs-overhead"),
)
# the commands that write a Markdown table beside their JSON: the two are published together
WITH_MD = {"bench", "search", "search.litert", "bench.tflite-runtime"}
# measured outside `lenet-edge --isa` and the runtimes' AMX choice (training, the Ray overhead): the
# CPU's whole ISA
UNMASKED = {"train", "jobs-overhead"}
# the records `make report` reads for the timed files' accuracy, per model
RECORDS = ("{m}.int8.search.quantize.json", "{m}.int8.search.tflite.quantize.json", "{m}.tflite.json")


class PublishError(LenetEdgeError):
    """A benchmark run is incomplete, mixed from several runs, or not from committed code."""


def _env(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(cpu, code, amx) of a results file: bench/search files keep them under `environment`,
    select's targets at the top level."""
    env = doc.get("environment") if isinstance(doc.get("environment"), dict) else doc
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    code = env.get("lenet_edge_code") if isinstance(env.get("lenet_edge_code"), dict) else {}
    amx = doc.get("amx", (doc.get("settings") or {}).get("amx"))
    return cpu, code, amx if isinstance(amx, str) else None


def cpu_flags(cpu: dict[str, Any]) -> set[str]:
    """The CPU's ISA flags, the ones a mask hid included."""
    return {f for key in ("isa_flags", "isa_flags_hidden") for f in cpu.get(key) or () if isinstance(f, str)}


def isa_class(flags: set[str]) -> str:
    """The kernel set a CPU offers: avx2, avx512vnni (+ -amx); dotprod or neon on Arm."""
    if "avx512_vnni" in flags:
        return "avx512vnni-amx" if any(f.startswith("amx") for f in flags) else "avx512vnni"
    if "avx2" in flags:
        return "avx2"
    if "asimddp" in flags:
        return "dotprod"
    return "neon" if "asimd" in flags else "baseline"


def machine_name(env: dict[str, Any], amx: str | None) -> str:
    """results/bench's name for a run: x86_64-amd-epyc-avx512vnni[.isa-avx2][.amx-off]."""
    cpu = env["cpu"]
    words = re.sub(r"\((r|tm)\)", " ", cpu["model"], flags=re.I).split()
    words = [w for w in words if w.lower() not in {"cpu", "processor"} and not w.startswith("@")]
    isa = isa_class(cpu_flags(cpu))
    arch = re.sub(r"[^a-z0-9_]+", "-", env["machine"].lower()).strip("-")[:20] or "unknown"  # x86_64
    name = f"{arch}-{slug('-'.join([*words[:2], isa]), max_len=60)}"
    if cpu.get("isa_mask"):
        name += f".isa-{slug(str(cpu['isa_mask']), max_len=20)}"
    if amx == "off" and isa.endswith("-amx"):
        name += ".amx-off"
    return name


def _same_run(src: Path, doc: Any, bench: dict[str, Any], masked: bool) -> None:
    """Refuse a file that another run made: another CPU, another commit, another mask or AMX."""
    if not isinstance(doc, dict):
        raise PublishError(f"{src}: not a lenet-edge results file (a JSON object)")
    cpu, code, amx = _env(doc)
    b_cpu, b_code, b_amx = _env(bench)
    fields = {
        "CPU": lambda c, _: (c.get("model"), c.get("family"), c.get("model_number"), sorted(cpu_flags(c))),
        "commit": lambda _, k: (k.get("git_commit"), k.get("dirty")),
    }
    if masked:
        fields["ISA mask"] = lambda c, _: c.get("isa_mask")
    for what, key in fields.items():
        if key(cpu, code) != key(b_cpu, b_code):
            raise PublishError(
                f"{src}: another run than bench.json ({what} differs: {str(key(cpu, code))[:80]} "
                f"against {str(key(b_cpu, b_code))[:80]}); rerun it with the benchmark or remove it"
            )
    # AMX refused (`--amx off`) or left to the runtimes (bench: on, search: auto) must agree
    if masked and amx is not None and b_amx is not None and (amx == "off") != (b_amx == "off"):
        raise PublishError(f"{src}: another run than bench.json (AMX {amx}, the benchmark's {b_amx})")


def _timed(bench: dict[str, Any]) -> dict[str, str]:
    """file name -> sha256 of every file the benchmark timed."""
    return {
        r["file"]: r["file_sha256"]
        for r in bench["results"]
        if isinstance(r.get("file"), str) and isinstance(r.get("file_sha256"), str)
    }


def _referenced(record: Any) -> dict[str, str]:
    """file name -> sha256 of the artifacts a stage record describes (its own and its outputs)."""
    out: dict[str, str] = {}
    if isinstance(record, dict):
        for name_key, sha_key in (("file", "sha256"), ("onnx", "onnx_sha256")):
            name, sha = record.get(name_key), record.get(sha_key)
            if isinstance(name, str) and isinstance(sha, str):
                out[Path(name).name] = sha
        for v in record.values():
            out.update(_referenced(v))
    elif isinstance(record, list):
        for v in record:
            out.update(_referenced(v))
    return out


def _committed(src: Path, code: dict[str, Any], allow_dirty: bool) -> None:
    """Refuse a run on uncommitted changes, or one that records no commit, unless allowed."""
    if allow_dirty:
        return
    if not code.get("git_commit"):
        raise PublishError(
            f"{src}: records no lenet-edge commit (made outside a git checkout, or by older code); rerun it"
        )
    if code.get("dirty") is not False:
        raise PublishError(
            f"{src}: measured on {str(code['git_commit'])[:12]} with uncommitted changes; commit and "
            "rerun (or --allow-dirty: the files keep saying so)"
        )


def _markdown(src: Path) -> Path:
    """The table a command wrote beside its JSON: the two are published together or not at all."""
    md = src.with_suffix(".md")
    if not md.is_file():
        raise PublishError(f"{md}: missing beside {src.name}; rerun the command that writes both")
    return md


def plan_arm(
    arm_dir: Path, bench_dir: Path, out_dir: Path, allow_dirty: bool = False
) -> list[tuple[Path, Path]]:
    """The aarch64 run (`make search-arm bundle arm-check`): build/arm/arm-check.{json,md} and each
    core's search build/bench/search.cortex-*.{json,md}, all from one commit, to results/arm/."""
    check = arm_dir / "arm-check.json"
    if not check.is_file():
        raise PublishError(f"{check}: no aarch64 check to publish (run `make search-arm bundle arm-check`)")
    doc = read_json(check)
    if not isinstance(doc, dict) or "best_int8_over_best_fp32" not in doc:
        raise PublishError(f"{check}: not a lenet-edge aarch64 check (no best_int8_over_best_fp32)")
    if doc.get("passed") is not True:  # arm-check writes a failing run aside; this one was made by hand
        raise PublishError(f"{check}: its self-check did not pass (or it predates `passed`); rerun arm-check")
    table = _markdown(check)
    if doc.get("markdown_sha256") != sha256_file(table):
        raise PublishError(
            f"{table}: not the table of {check.name} (the halves of two runs?); rerun `make arm-check`"
        )
    _, code, _ = _env(doc)
    _committed(check, code, allow_dirty)
    moves = []
    for src in [check, *sorted(bench_dir.glob("search.cortex-*.json"))]:
        if src != check:
            other = read_json(src)
            theirs = _env(other)[1] if isinstance(other, dict) else {}
            if (theirs.get("git_commit"), theirs.get("dirty")) != (code.get("git_commit"), code.get("dirty")):
                raise PublishError(
                    f"{src}: another commit than {check.name} ({str(theirs.get('git_commit'))[:12]} against "
                    f"{str(code.get('git_commit'))[:12]}); rerun `make search-arm bundle arm-check` or remove it"
                )
        md = _markdown(src)
        moves += [(src, out_dir / src.name), (md, out_dir / md.name)]
    for _, dest in moves:
        inside(out_dir, dest)
    return moves


def _checked_env(src: Path, doc: Any) -> dict[str, Any]:
    env = doc.get("environment") if isinstance(doc, dict) else None
    if not (
        isinstance(env, dict)
        and isinstance(env.get("machine"), str)
        and isinstance(env.get("cpu"), dict)
        and isinstance(env["cpu"].get("model"), str)
    ):
        raise PublishError(
            f"{src}: records no environment (machine, cpu.model): not a lenet-edge results file"
        )
    return env


def plan(
    bench_dir: Path, onnx_dir: Path, out_dir: Path, records_dir: Path, allow_dirty: bool = False
) -> tuple[str, list[tuple[Path, Path]]]:
    """The run's name and [(source, destination)], every check done; nothing is written here."""
    bench_file = bench_dir / "bench.json"
    if not bench_file.is_file():
        raise PublishError(f"{bench_file}: no benchmark result to publish (run `make search bench select`)")
    bench = read_json(bench_file)
    try:
        validate(bench, bench_file)
    except IngestError as e:
        raise PublishError(str(e)) from e
    _, code, amx = _env(bench)
    _committed(bench_file, code, allow_dirty)
    name = machine_name(bench["environment"], amx)
    moves = []
    for stem, suffix in FILES:
        src = bench_dir / f"{stem}.json"
        if not src.is_file():
            continue
        doc = read_json(src)
        own = name
        if src != bench_file:
            _same_run(src, doc, bench, masked=stem not in UNMASKED)
            if stem in UNMASKED:
                own = machine_name(_checked_env(src, doc), None)
        moves.append((src, out_dir / f"{own}{suffix}.json"))
        if stem in WITH_MD:
            moves.append((_markdown(src), out_dir / f"{own}{suffix}.md"))
    if whole_isa(bench):  # the report reads the whole-ISA run's records
        timed = _timed(bench)
        for model in model_names():
            for pattern in RECORDS:
                src = onnx_dir / pattern.format(m=model)
                if not src.is_file():
                    continue
                ref = {f: s for f, s in _referenced(read_json(src)).items() if f in timed}
                if ref and all(timed[f] == s for f, s in ref.items()):
                    moves.append((src, records_dir / src.name))
    for _, dest in moves:  # names are built from checked parts; this is the last line of defence
        inside(records_dir if dest.parent == records_dir else out_dir, dest)
    return name, moves


def publish(
    bench_dir: Path,
    onnx_dir: Path,
    out_dir: Path,
    records_dir: Path,
    allow_dirty: bool = False,
    dry_run: bool = False,
    arm_dir: Path | None = None,
) -> tuple[str, list[Path]]:
    """Publish the run in bench_dir (see the module doc), or with arm_dir the aarch64 run; its name
    and the files written (or, with dry_run, that would be)."""
    if arm_dir is not None:
        name, moves = "aarch64 (emulated)", plan_arm(arm_dir, bench_dir, out_dir, allow_dirty)
    else:
        name, moves = plan(bench_dir, onnx_dir, out_dir, records_dir, allow_dirty)
    blobs = [(src.read_bytes(), dest) for src, dest in moves]  # every source read before any write
    for (src, _), (data, _) in zip(moves, blobs, strict=True):  # `make report` refuses one holding it
        bad = non_finite_at(json.loads(data)) if src.suffix == ".json" else None
        if bad:
            raise PublishError(f"{src}: holds NaN or Infinity at {bad}; rerun the command that makes it")
    if not dry_run:
        # every temp file made and written before the first rename: a destination that cannot be
        # written (a folder by that name, no permission) leaves none of the run's files replaced
        with ExitStack() as stack:
            for data, dest in blobs:
                stack.enter_context(atomic_path(dest)).write_bytes(data)
    return name, [dest for _, dest in moves]


def main(argv: list[str] | None = None) -> int:
    p = parser("report.publish", __doc__)
    p.add_argument("--bench-dir", type=path_arg, default=ROOT / "build" / "bench", help="default build/bench")
    p.add_argument("--onnx-dir", type=path_arg, default=ROOT / "build" / "onnx", help="default build/onnx")
    add_common(p, "out_dir", out_dir={"help": "default results/bench (results/arm with --arm)"})
    p.add_argument(
        "--records-dir", type=path_arg, default=ROOT / "results" / "records", help="default results/records"
    )
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="publish a run measured on uncommitted changes (its files say so)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be written; write nothing")
    p.add_argument(
        "--arm",
        action="store_true",
        help="the aarch64 run instead: --arm-dir's arm-check.{json,md} and --bench-dir's "
        "search.cortex-*.{json,md} -> results/arm/",
    )
    p.add_argument(
        "--arm-dir",
        type=path_arg,
        default=Path(os.environ.get("ARM_BUILD") or ROOT / "build" / "arm"),
        help="default $ARM_BUILD (where arm-check wrote), else build/arm",
    )
    args = p.parse_args(argv)
    out_dir = args.out_dir or ROOT / "results" / ("arm" if args.arm else "bench")
    name, written = publish(
        args.bench_dir,
        args.onnx_dir,
        out_dir,
        args.records_dir,
        args.allow_dirty,
        args.dry_run,
        args.arm_dir if args.arm else None,
    )
    for dest in written:
        print(f"{'would write' if args.dry_run else 'wrote'} {dest}")
    print(f"{name}: {len(written)} files; then `make report` and commit results/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
