"""CLI: python -m train --model lenet_pool|lenet_stride|all [recipe flags]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.cli import run


def main(argv: list[str] | None = None) -> int:
    # Only argparse here: Paddle is imported inside train(), so --help is instant.
    d = {"epochs": 10, "batch_size": 64, "lr": 1e-3, "seed": 0}
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train lenet_pool / lenet_stride on MNIST with the blog's recipe "
        "(Adam, cross-entropy, input scaled to [-1, 1]); writes <model>.npz + <model>.train.json.",
    )
    p.add_argument("--model", default="all", choices=["lenet_pool", "lenet_stride", "all"])
    p.add_argument("--epochs", type=int, default=d["epochs"], help=f"default {d['epochs']}")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"default {d['batch_size']}")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"Adam learning rate, default {d['lr']}")
    p.add_argument("--seed", type=int, default=d["seed"], help="initialisation and data order (default 0)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--out-dir", type=Path, default=Path("build/train"), help="default build/train")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default: cache or $MNIST_DIR)")
    p.add_argument("--force", action="store_true", help="retrain even if an up-to-date checkpoint exists")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)

    from train.loop import TrainConfig, train

    names = ["lenet_pool", "lenet_stride"] if args.model == "all" else [args.model]
    for name in names:
        cfg = TrainConfig(
            model=name,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
        )
        rec = train(cfg, args.out_dir, args.data_dir, force=args.force, progress=args.progress)
        print(
            f"{name}: test top-1 {100 * rec['test_top1']:.2f} %  top-2 {100 * rec['test_top2']:.2f} %  "
            f"{rec['seconds_per_epoch']:.1f} s/epoch -> {args.out_dir / rec['checkpoint']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
