"""Seconds per epoch: lenet-edge's loop vs the blog's paddle.Model.fit + Paddle MNIST DataLoader.

All run in this process on the same data, the same architecture and batch size, interleaved
per round: the baseline, lenet-edge's loop with Paddle's conv kernel, and the loop as `lenet-edge
train` runs it (the fastconv oneDNN kernel where it builds); prints each time and the ratios
(baseline / ours). A benchmark, not a test.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.cli import add_common, int_range, parser, path_arg, run
from lenet_edge.runtime.contract import normalize
from lenet_edge.runtime.files import owned_temp_dir
from lenet_edge.runtime.mnist import default_data_dir, load_split
from lenet_edge.train.paddle_env import import_paddle
from lenet_edge.workflow import add_model_flags, selected

EPOCH_STEPS = 938  # 60,000 images at batch 64, the last step partial


def _fit_epoch(name: str, gz_dir: Path, steps: int | None, seed: int) -> tuple[float, int]:
    """The blog's way: Paddle's MNIST Dataset (per-sample Normalize) -> DataLoader -> Model.fit."""
    paddle = import_paddle()
    from paddle.vision.datasets import MNIST
    from paddle.vision.transforms import Normalize

    from lenet_edge.train.models import build_model

    paddle.seed(seed)
    ds = MNIST(
        image_path=str(gz_dir / "train-images-idx3-ubyte.gz"),
        label_path=str(gz_dir / "train-labels-idx1-ubyte.gz"),
        mode="train",
        transform=Normalize(mean=[127.5], std=[127.5], data_format="CHW"),
        download=False,
    )
    net = build_model(name, fast_bias=False)  # stock Paddle layers, as in the blog
    model = paddle.Model(net)
    model.prepare(
        paddle.optimizer.Adam(learning_rate=1e-3, parameters=net.parameters()),
        paddle.nn.CrossEntropyLoss(),
        paddle.metric.Accuracy(topk=(1, 2)),
    )
    if steps is not None:
        ds = paddle.io.Subset(ds, list(range(steps * 64)))
    n_steps = (len(ds) + 63) // 64
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, batch_size=64, verbose=0, shuffle=True)
    return time.perf_counter() - t0, n_steps


def _our_epoch(
    name: str, x: np.ndarray, y: np.ndarray, steps: int | None, seed: int, ops: Any
) -> tuple[float, int]:
    """lenet-edge's loop; `ops`: the fastconv operators, or None for Paddle's conv kernel."""
    paddle = import_paddle()

    from lenet_edge.train.loop import train_epoch
    from lenet_edge.train.models import build_model, fastconv_in_force

    paddle.seed(seed)
    net = build_model(name)
    opt = paddle.optimizer.Adam(learning_rate=1e-3, parameters=net.parameters())
    net.train()
    order = np.random.default_rng(seed).permutation(len(x))
    if steps is not None:
        order = order[: steps * 64]
    with fastconv_in_force(ops):
        t0 = time.perf_counter()
        train_epoch(net, opt, x, y, order, 64)
        return time.perf_counter() - t0, (len(order) + 63) // 64


def bench_train(models: list[str], rounds: int, steps: int | None, data_dir: Path | None) -> dict[str, Any]:
    train = load_split("train", data_dir)
    x, y = normalize(train.images[:, None]), train.labels
    results: dict[str, Any] = {}
    with owned_temp_dir("bench") as tmp:
        gz_dir = Path(tmp)
        src = Path(data_dir) if data_dir else default_data_dir()
        for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            (gz_dir / f"{f}.gz").write_bytes(gzip.compress((src / f).read_bytes(), compresslevel=1))
        from lenet_edge.train import fastconv

        ops, kernel = fastconv.choose()  # the kernel `lenet-edge train` uses here
        for name in models:
            fit_s, ours_s, stock_conv_s = [], [], []
            for r in range(rounds):
                t, n = _fit_epoch(name, gz_dir, steps, seed=r)
                fit_s.append(t / n)
                t, n = _our_epoch(name, x, y, steps, r, None)
                stock_conv_s.append(t / n)
                t, n = _our_epoch(name, x, y, steps, r, ops)
                ours_s.append(t / n)
                print(
                    f"{name} round {r + 1}/{rounds}: fit+DataLoader {1000 * fit_s[-1]:.1f} ms/step, "
                    f"ours {1000 * ours_s[-1]:.1f} ms/step ({kernel}; with Paddle's conv kernel "
                    f"{1000 * stock_conv_s[-1]:.1f})",
                    flush=True,
                )
            per_epoch = EPOCH_STEPS
            f_med, o_med = float(np.median(fit_s)), float(np.median(ours_s))
            p_med = float(np.median(stock_conv_s))
            results[name] = {
                "fit_dataloader_s_per_epoch": round(f_med * per_epoch, 2),
                "ours_s_per_epoch": round(o_med * per_epoch, 2),
                "speedup": round(f_med / o_med, 3),
                "conv_kernel": kernel,
                "ours_paddle_conv_s_per_epoch": round(p_med * per_epoch, 2),
                "speedup_paddle_conv": round(f_med / p_med, 3),
                "rounds": rounds,
                "steps_per_round": steps or per_epoch,
            }
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser("train.bench", __doc__)
    add_model_flags(p)
    p.add_argument(
        "--rounds",
        type=int_range(1, 100),
        default=1,
        help="interleaved rounds; the median is reported (default 1)",
    )
    p.add_argument(
        "--steps",
        type=int_range(1, EPOCH_STEPS),
        default=None,
        help=f"time only N steps per round (default: a full epoch, {EPOCH_STEPS})",
    )
    p.add_argument("--data-dir", type=path_arg, default=None)
    add_common(p, "json", json={"help": "also write the results here"})
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("GLOG_minloglevel", "2")
    models = selected(args.model, args.workflow)
    res = bench_train(models, args.rounds, args.steps, args.data_dir)
    for name, r in res.items():
        print(
            f"{name}: paddle.Model.fit + DataLoader {r['fit_dataloader_s_per_epoch']:.1f} s/epoch, "
            f"lenet-edge loop {r['ours_s_per_epoch']:.1f} s/epoch -> {r['speedup']:.2f}x faster "
            f"({r['conv_kernel']}; with Paddle's conv kernel {r['ours_paddle_conv_s_per_epoch']:.1f} s/epoch, "
            f"{r['speedup_paddle_conv']:.2f}x)"
        )
    from lenet_edge.runtime.env import command_line, environment

    report = {
        "schema": "lenet-edge/bench-train/v1",
        "command": command_line("bench-train", argv),
        "environment": environment({"paddle": import_paddle().__version__}),
        "settings": {"rounds": args.rounds, "steps": args.steps, "batch": 64, "threads": 1},
        "models": res,
    }
    if args.json:
        from lenet_edge.runtime.files import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    else:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
