"""What every stage's command line shares: the flags (defined once, from one typed dataclass),
the program name, and typed errors turned into one line on stderr and an exit code.

Standard library only: runtime/ ships to a device alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import LenetEdgeError
from .files import write_problem

# Set by the `lenet-edge` console script to "lenet-edge SUBCOMMAND", so a stage's --help and usage
# name the command the user typed; `python -m` aliases keep their own name.
PROG: str | None = None


def _flag(*names: str, help: str, **kw: Any) -> dict[str, Any]:
    return {"names": names, "help": help, **kw}


@dataclass
class CommonFlags:
    """The flags every stage spells the same way. A stage picks the ones it has with add_common();
    its own defaults and help override these, the spelling and the type never change."""

    model: str = field(
        default="all", metadata=_flag("--model", help="which model (a workflow's name) or all; default all")
    )
    workflow: Path | None = field(
        default=None,
        metadata=_flag(
            "--workflow", help="a workflow TOML file (default: the shipped workflows/)", metavar="TOML"
        ),
    )
    out_dir: Path | None = field(default=None, metadata=_flag("--out-dir", help="folder the outputs go to"))
    json: Path | None = field(
        default=None, metadata=_flag("--json", help="also write the result as JSON to PATH", metavar="PATH")
    )
    batch: int = field(default=1, metadata=_flag("--batch", help="batch size"))
    threads: int = field(default=1, metadata=_flag("--threads", help="intra-op threads"))
    verbose: bool = field(
        default=False,
        metadata=_flag("-v", "--verbose", help="also show the libraries' INFO logs", action="store_true"),
    )
    quiet: bool = field(
        default=False,
        metadata=_flag(
            "-q", "--quiet", help="no progress output; errors and results only", action="store_true"
        ),
    )


def path_arg(text: str) -> Path:
    """A path flag's value; an empty one is refused (Path('') is '.': `--json ''` wrote nothing, or
    failed inside the writer with a traceback)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def text_arg(text: str) -> str:
    """A non-empty string flag (a path that may also be '-')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value")
    return text


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """The type of an int flag that takes lo..hi only: argparse's error names the flag and the range
    (beyond them a value is a typo, not a workload: `--jobs -1` ran one job, `--steps 10**12`
    allocated until memory ran out)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi:,}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """A float flag that is a finite number (NaN and inf would pass or fail every comparison)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def name_part_problem(text: str) -> str | None:
    """What is wrong with a name that becomes part of file names (`--variant s2d` ->
    <model>.fp32.s2d.onnx), or None: lower-case letters, digits and '-' only, so it never leaves its
    folder."""
    if re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", text):
        return None
    return "lower-case letters, digits and '-' only, 1 to 32 of them, a letter or digit first"


def name_part(text: str) -> str:
    """The type of a flag whose value names files (argparse names the flag)."""
    problem = name_part_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


MAX_JOBS = 1024  # jobs at once (local processes or a Ray instance's CPUs)


_TYPES = {"Path | None": path_arg, "Path": path_arg, "int": int, "str": text_arg, "bool": None}


def add_common(p: argparse.ArgumentParser, *names: str, **overrides: dict[str, Any]) -> None:
    """Add the named CommonFlags fields to `p`; overrides[name] replaces keyword arguments of one
    flag (default, help, type, choices) but not its spelling."""
    known = {f.name: f for f in fields(CommonFlags)}
    for name in names:
        if name not in known:
            raise KeyError(f"no common flag {name!r}; have {sorted(known)}")
        f = known[name]
        kw = {k: v for k, v in f.metadata.items() if k != "names"}
        if kw.get("action") is None:
            kw["type"] = _TYPES[str(f.type)]
        kw["default"] = None if f.default is MISSING else f.default
        kw.update(overrides.get(name, {}))
        p.add_argument(*f.metadata["names"], dest=name, **kw)


class StageParser(argparse.ArgumentParser):
    """An argument parser whose -v/-q take effect as soon as the arguments are parsed, and whose
    errors are one line (argparse printed the whole usage first: 20 lines for `quantize`)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        problem = _output_problem(parsed) or _input_folder_problem(
            parsed, sys.argv[1:] if args is None else args
        )
        if problem:
            self.error(problem)
        return apply_common(parsed)


# folders a command reads from; one given on the command line that is not there is a typo (`report
# --onnx-dir`, `reference check --train-dir`, `calibration --data-dir` went on without it)
INPUT_FOLDERS = ("data_dir", "onnx_dir", "train_dir", "checkpoint_dir", "bench_dir", "arm_dir")


def _input_folder_problem(args: argparse.Namespace, argv: Any) -> str | None:
    given = [str(a) for a in argv or ()]
    for key in INPUT_FOLDERS:
        value, flag = getattr(args, key, None), "--" + key.replace("_", "-")
        typed = any(a == flag or a.startswith(flag + "=") for a in given)
        if isinstance(value, Path) and typed and not value.exists():  # --data-dir may name a .npz
            return f"argument {flag}: {value}: not found"
    return None


def _output_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a command's --out-dir or --json, found before any work, or None."""
    out_dir = getattr(args, "out_dir", None)
    if isinstance(out_dir, Path):
        problem = write_problem(out_dir, folder=True)
        if problem:  # `export --out-dir /proc/x` failed after the export
            return f"argument --out-dir: {out_dir}: {problem}"
    return _json_problem(args)


# models and the records beside them (what the stages read back), named by the pipeline
MODEL_SUFFIXES = (".onnx", ".tflite", ".ort", ".npz", ".pdparams")
RECORD_SUFFIXES = (".quantize.json", ".export.json", ".optimize.json", ".variants.json", ".train.json")


def _pipeline_file(path: Path) -> bool:
    """A model, a record of one (<model>.fp32.export.json, <file>.quantize.json, <model>.tflite.json),
    or an unpacked bundle's manifest: never a place for a command's --json result."""
    name = path.name
    return (
        path.suffix in MODEL_SUFFIXES
        or name.endswith(RECORD_SUFFIXES)
        or (name.endswith(".tflite.json") and path.exists())
        or (name == "manifest.json" and (path.parent / "runtime").is_dir())
    )


def _json_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a command's --json path, found before any work, or None: `evaluate M --json
    M` (bench, size too) overwrote the model it read, so the result (or its Markdown twin) may not be
    a file another path argument of the same command names; `bench --json x.md` was refused by the
    writer, after the benchmark."""
    out = getattr(args, "json", None)
    if isinstance(out, str) and out != "-":  # evaluate's --json also takes '-' (stdout)
        out = Path(out)
    if not isinstance(out, Path):
        return None
    if out.suffix == ".md":  # found only by the writer, after the work (a benchmark's minutes)
        return f"argument --json: {out}: name the JSON result something other than .md (its Markdown twin)"
    if _pipeline_file(out):  # `search --json <its FP32 export>`, `select --json <a record it read>`
        return f"argument --json: {out}: a model or record of the pipeline; write the result elsewhere"
    for path in (out, out.with_suffix(".md")):  # the result and the Markdown twin most commands write
        problem = write_problem(path)
        if problem:  # `study --json /proc/x.json` failed after the study
            return f"argument --json: {path}: {problem}"
    inputs: list[Path] = []
    for key, value in vars(args).items():
        if key in ("json", "out_dir"):
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, Path) and v.is_file():
                inputs.append(v)
    for o in (out, out.with_suffix(".md")):
        for i in inputs:
            if o.exists() and o.resolve() == i.resolve():
                return f"argument --json: {out} would overwrite {i}, an input of this command"
    return None


def parser(module: str, doc: str | None = None, description: str | None = None, **kw: Any) -> StageParser:
    """A stage's argument parser: named after the command the user ran, described by
    `description` or else the first line of the module's docstring; with -v/-q."""
    if description is None and doc and doc.strip():
        description = doc.strip().splitlines()[0]
    p = StageParser(prog=PROG or f"python -m {module}", description=description, **kw)
    add_common(p, "verbose", "quiet")
    return p


def apply_common(args: argparse.Namespace) -> argparse.Namespace:
    """-q and -v take effect here, for this process and the stage's child processes."""
    if getattr(args, "quiet", False):
        os.environ["LENET_EDGE_QUIET"] = "1"
    if getattr(args, "verbose", False):
        os.environ["LENET_EDGE_VERBOSE"] = "1"
        logging.basicConfig(level=logging.INFO)
    return args


def quiet() -> bool:
    return os.environ.get("LENET_EDGE_QUIET") == "1"


def closed_pipe() -> int:
    """The reader of stdout went away (`lenet-edge goals | head -3`): no traceback, and none when
    Python flushes stdout at exit either; the exit status of a process killed by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except LenetEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return closed_pipe()
    except OSError as e:
        # the file system refused a path the user gave (a file where a folder should be, /proc, no
        # permission, a full disk): one line naming it; writes are atomic, so nothing half-written
        if e.filename is None:
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        print(f"error: {where}: {e.strerror or e.__class__.__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a child of a parallel run (train --jobs) names its job: the sibling of a failure stops too
        job = os.environ.get("LENET_EDGE_JOB")
        print(
            f"{job + ': ' if job else ''}interrupted: nothing was written for the unfinished step",
            file=sys.stderr,
        )
        return 130
