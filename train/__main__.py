"""CLI: python -m train --model lenet_pool|lenet_stride|all [recipe flags]."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lenet_edge.runtime.cli import MAX_JOBS, add_common, int_range, parser, path_arg, run
from lenet_edge.runtime.errors import ConfigError, LenetEdgeError
from lenet_edge.workflow import add_model_flags, get, selected


def _in_parallel(names: list[str], argv: list[str], jobs: int) -> int:
    """One `python -m train --model NAME --jobs 1` process per model, `jobs` at a time. Paddle runs
    each single-threaded (it sets OMP_NUM_THREADS=1), exactly as when trained one by one. Their
    progress goes to the log as plain lines (two live bars would overwrite each other)."""
    rest: list[str] = []
    skip = False
    for a in argv:  # drop --model/--jobs (and their values); keep every other flag as given
        if skip:
            skip = False
        elif a in ("--model", "--jobs"):
            skip = True
        elif not a.startswith(("--model=", "--jobs=")):
            rest.append(a)
    env = {**os.environ, "LENET_EDGE_PROGRESS": "lines"}
    queue, running, failed = list(names), {}, []
    interrupted = False
    try:
        while queue or running:
            while queue and len(running) < jobs:
                name = queue.pop(0)
                cmd = [sys.executable, "-m", "lenet_edge.train", "--model", name, "--jobs", "1", *rest]
                # in the user's folder, as with --jobs 1: relative --out-dir/--data-dir/--workflow
                # and the default build/train mean the same folders for every model
                # LENET_EDGE_JOB: its "interrupted" line names the model (runtime.cli.run)
                running[name] = subprocess.Popen(cmd, env={**env, "LENET_EDGE_JOB": name})
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    if proc.returncode != 0:
                        failed.append(f"{name} (exit {proc.returncode})")
            if failed:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C reached the children too (one process group): no second SIGINT
        raise
    finally:
        # a failure stops the others too, with SIGINT: each says "interrupted" in one line (SIGTERM
        # made Paddle's handler print a C++ stack and "FatalError" for a sibling's failure)
        for proc in running.values():
            if not interrupted:
                proc.send_signal(signal.SIGINT)
        for proc in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if failed:
        raise LenetEdgeError(f"training failed: {', '.join(failed)} (its error is above)")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Only argparse here: Paddle is imported inside train(), so --help is instant.
    p = parser(
        "train",
        description="Train the workflows' models (workflows/*.toml) with their [train] recipe (the "
        "blog's: Adam, cross-entropy, input scaled to [-1, 1]); writes <model>.npz + <model>.train.json.",
    )
    add_model_flags(p)
    p.add_argument("--epochs", type=int, default=None, help="default: the workflow's [train] epochs")
    add_common(p, "batch", batch={"default": None, "help": "batch size (default: the workflow's)"})
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the workflow's)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order (default 0)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    add_common(
        p,
        "out_dir",
        out_dir={"default": Path("build/train"), "help": "default build/train"},
    )
    p.add_argument(
        "--data-dir", type=path_arg, default=None, help="MNIST folder (default: cache or $MNIST_DIR)"
    )
    p.add_argument("--force", action="store_true", help="retrain even if an up-to-date checkpoint exists")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--conv-kernel",
        choices=("auto", "onednn", "paddle"),
        default=None,
        help="convolution training kernel: oneDNN through lenet-edge's fastconv operator, built on "
        "first use (onednn), Paddle's own (paddle), or oneDNN where it builds (auto; the default, "
        "or $LENET_EDGE_CONV_KERNEL); the training record names the one used",
    )
    p.add_argument(
        "--jobs",
        type=int_range(1, MAX_JOBS),
        default=None,
        help="models trained at once, one single-threaded process each (default: one per core, "
        "up to the number of models); the weights are bitwise those of training one by one",
    )
    args = p.parse_args(argv)
    names = selected(args.model, args.workflow)
    if args.model == "all" and args.workflow is None:  # every model that is trained here
        names = [n for n in names if get(n).train is not None]
    jobs = min(len(names), args.jobs if args.jobs is not None else (os.cpu_count() or 1))
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    from lenet_edge.train import recipe_problem

    for name in names:  # every model's numbers checked before a training process starts
        wf = get(name)
        if wf.train is None:
            raise ConfigError(f"{wf.path}: source {wf.source!r} is a trained model file; nothing to train")
        problem = recipe_problem(
            wf.train.epochs if args.epochs is None else args.epochs,
            wf.train.batch if args.batch is None else args.batch,
            wf.train.lr if args.lr is None else args.lr,
            args.seed,
            (args.train_limit, args.test_limit),
        )
        if problem:
            raise ConfigError(f"{name}: {problem}")
    if jobs > 1:
        return _in_parallel(names, argv if argv is not None else sys.argv[1:], jobs)

    from lenet_edge.train.loop import TrainConfig, train

    for name in names:
        wf = get(name)
        cfg = TrainConfig(
            model=name,
            epochs=wf.train.epochs if args.epochs is None else args.epochs,
            batch_size=wf.train.batch if args.batch is None else args.batch,
            lr=wf.train.lr if args.lr is None else args.lr,
            seed=args.seed,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
        )
        rec = train(
            cfg,
            args.out_dir,
            args.data_dir,
            force=args.force,
            progress=args.progress and not args.quiet,
            conv_kernel=args.conv_kernel,
        )
        print(
            f"{name}: test top-1 {100 * rec['test_top1']:.2f} %  top-2 {100 * rec['test_top2']:.2f} %  "
            f"{rec['seconds_per_epoch']:.1f} s/epoch -> {args.out_dir / rec['checkpoint']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
