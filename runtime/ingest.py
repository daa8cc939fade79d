"""Host side: adds a device's benchmark JSON to results/devices/ and rebuilds results/devices/README.md.

The file comes from outside (a board, a colleague, an attacker): every field is checked for type
and range before anything is written, the destination name is built only from checked and
sanitised parts, and the final path must lie inside the devices folder.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .bench import SCHEMA
from .cli import add_common, parser, path_arg
from .env import ARM_CORES
from .errors import LenetEdgeError
from .files import atomic_path, inside, json_bytes, read_json
from .numeric import finite, non_finite_at

DEVICES = Path(__file__).resolve().parent.parent / "results" / "devices"
# created_unix must be a plausible time: 2020-01-01 .. 2100-01-01.
UNIX_RANGE = (1_577_836_800, 4_102_444_800)
MAX_RESULTS = 10_000
MAX_TEXT = 200
TITLE = "# Device benchmark results"


class IngestError(LenetEdgeError):
    """A device result is malformed, out of range, or would be written outside its folder."""


def _text(v: Any, where: str, source: Path) -> str:
    if not isinstance(v, str) or not v.strip() or len(v) > MAX_TEXT:
        raise IngestError(f"{source}: {where} must be a non-empty string of at most {MAX_TEXT} characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate is valid JSON but not text
        raise IngestError(f"{source}: {where} is not valid Unicode text") from e
    return v


def _int(v: Any, where: str, source: Path, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise IngestError(f"{source}: {where} must be an integer in {lo}..{hi}, got {v!r:.60}")
    return v


def _positive(v: Any, where: str, source: Path, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    # at most 1e9 (a latency of 11 days in ms): the table multiplies by 1e3, and 1e308 became "inf µs"
    if not (finite(v) and 0 < v <= 1e9):
        raise IngestError(f"{source}: {where} must be a finite positive number (at most 1e9), got {v!r:.60}")


def validate(report: Any, source: Path) -> None:
    """Raise IngestError naming the file and the first field that is missing, mistyped or out of range."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise IngestError(f"{source}: not a lenet-edge benchmark result (schema must be {SCHEMA!r})")
    for key in ("environment", "results", "created_unix"):
        if key not in report:
            raise IngestError(f"{source}: missing {key!r}")
    _int(report["created_unix"], "created_unix", source, *UNIX_RANGE)
    env = report["environment"]
    if not isinstance(env, dict) or not isinstance(env.get("cpu"), dict):
        raise IngestError(f"{source}: environment must be an object with a 'cpu' object")
    _text(env.get("machine"), "environment.machine", source)
    _text(env["cpu"].get("model"), "environment.cpu.model", source)
    flags = env["cpu"].get("isa_flags")
    if (
        not isinstance(flags, list)
        or len(flags) > 100
        or not all(isinstance(f, str) and len(f) <= 40 for f in flags)
    ):
        raise IngestError(f"{source}: environment.cpu.isa_flags must be a list of short strings")
    for f in flags:
        _text(f, "environment.cpu.isa_flags", source)
    core = env["cpu"].get("core")
    if core is not None and core not in ARM_CORES.values():
        raise IngestError(f"{source}: environment.cpu.core {str(core)[:40]!r} is not a known Arm core")
    results = report["results"]
    if not isinstance(results, list) or not 1 <= len(results) <= MAX_RESULTS:
        raise IngestError(f"{source}: results must be a list of 1..{MAX_RESULTS} entries")
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise IngestError(f"{source}: result {i} is not an object")
        for k in ("model", "format", "runtime", "call"):
            _text(r.get(k), f"result {i} {k}", source)
        if "file" in r:
            _text(r["file"], f"result {i} file", source)
        _int(r.get("batch"), f"result {i} batch", source, 1, 1 << 20)
        _int(r.get("threads"), f"result {i} threads", source, 1, 4096)
        _positive(r.get("latency_ms_p50"), f"result {i} latency_ms_p50", source)
        if "ratio_p50_vs_fp32" not in r:
            raise IngestError(f"{source}: result {i} lacks ratio_p50_vs_fp32")
        _positive(r["ratio_p50_vs_fp32"], f"result {i} ratio_p50_vs_fp32", source, allow_none=True)
        bad = non_finite_at(r)
        if bad:  # a NaN p90 was filed, and `make report` then failed on the file
            raise IngestError(f"{source}: result {i} {bad} is not a finite number")
    check = report.get("bundle_check")
    if check is not None:
        summary = check.get("summary", "–") if isinstance(check, dict) else None
        if not isinstance(summary, str) or len(summary) > 2000:
            raise IngestError(f"{source}: bundle_check must be an object with a string summary")
        try:
            summary.encode("utf-8")
        except UnicodeEncodeError as e:
            raise IngestError(f"{source}: bundle_check.summary is not valid Unicode text") from e


def slug(text: str, max_len: int = 60) -> str:
    """Lower-case letters, digits and single hyphens only: safe as part of a file name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-") or "device"


def ingest(result: Path, devices: Path = DEVICES) -> Path:
    report = read_json(result)
    validate(report, result)
    env = report["environment"]
    name = f"{slug(env['machine'] + '-' + env['cpu']['model'])}-{report['created_unix']:d}.json"
    dest = devices / name
    inside(devices, dest)  # the name is built from checked parts; this is the last line of defence
    readme = devices / "README.md"
    if readme.is_file() and not readme.read_text(errors="replace").startswith(TITLE):
        raise IngestError(  # `--out-dir .` in a checkout replaced the project's README with the table
            f"{readme}: exists and is not the device table ingest writes; --out-dir names the devices "
            f"folder (default {DEVICES})"
        )
    if dest.is_file() and dest.read_bytes() != json_bytes(report):
        raise IngestError(
            f"{dest}: holds another result of the same device and time; remove it to replace it"
        )
    table = render(devices, extra=(dest, report)).encode()  # everything checked before the first write
    # both temp files made before either is written: a README path that cannot be written (a
    # folder by that name) leaves no device file behind that the table does not list
    with atomic_path(dest) as tj, atomic_path(readme) as tr:
        tj.write_bytes(json_bytes(report))
        tr.write_bytes(table)
    return dest


def _cell(text: Any) -> str:
    """A value as a Markdown table cell: no pipes, no line breaks, bounded length."""
    # and no control or line/paragraph separator characters (a NUL or U+2028 broke the table)
    return re.sub(r"[|`<>\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", str(text))[:MAX_TEXT]


def render(devices: Path, extra: tuple[Path, dict[str, Any]] | None = None) -> str:
    """The table of every result in `devices` (plus `extra`, about to be written)."""
    lines = [
        TITLE,
        "",
        "Added with `make ingest RESULT=...`; batch 1, one thread, p50.",
        "",
        "| device | ISA | model | format | runtime | call | p50 µs | × FP32 | bundle check |",
        "|---|---|---|---|---|---|---:|---:|---|",
    ]
    reports = {f: None for f in sorted(devices.glob("*.json"))}
    if extra is not None:
        reports[extra[0]] = extra[1]
    for f in sorted(reports):
        rep = reports[f] if reports[f] is not None else read_json(f)
        validate(rep, f)  # a file put there by hand is held to the same rules
        env = rep["environment"]
        check = (rep.get("bundle_check") or {}).get("summary", "–").split(": ", 1)[-1]
        for r in rep["results"]:
            if r["batch"] == 1 and r["threads"] == 1:
                ratio = f"{r['ratio_p50_vs_fp32']:.2f}" if r["ratio_p50_vs_fp32"] is not None else "–"
                lines.append(
                    f"| {_cell(env['machine'])} {_cell(env['cpu']['model'])} "
                    f"| {_cell(' '.join(env['cpu']['isa_flags']))} "
                    f"| {_cell(r['model'])} | {_cell(r['format'])} | {_cell(r['runtime'])} | {_cell(r['call'])} "
                    f"| {1e3 * r['latency_ms_p50']:.1f} | {ratio} | {_cell(check)} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser("runtime.ingest", __doc__)
    p.add_argument(
        "result", type=path_arg, help="result JSON written by `python -m runtime.bench` on a device"
    )
    add_common(
        p,
        "out_dir",
        out_dir={
            "default": DEVICES,
            "help": "where device results and their table live (default results/devices)",
        },
    )
    args = p.parse_args(argv)
    dest = ingest(args.result, args.out_dir)
    print(f"added {dest}; table in {dest.parent / 'README.md'}")
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main))
