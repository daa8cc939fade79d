"""Trains one LeNet on in-memory MNIST; writes <model>.npz and <model>.train.json atomically."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.contract import normalize
from lenet_edge.runtime.errors import ConfigError, LenetEdgeError
from lenet_edge.runtime.evaluate import topk_accuracy
from lenet_edge.runtime.files import read_json, sha256_file, write_json_atomic
from lenet_edge.runtime.mnist import load_split
from lenet_edge.train.checkpoint import record_path, write_checkpoint
from lenet_edge.train.paddle_env import import_paddle

TRAIN_DIR = Path(__file__).resolve().parent


class TrainingError(LenetEdgeError):
    """Training diverged (a non-finite loss or weights): no checkpoint is written."""


@dataclass(frozen=True)
class TrainConfig:
    """The blog's recipe by default. `train_limit`/`test_limit` shrink the data for tests."""

    model: str  # a workflow's name
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None

    def __post_init__(self) -> None:
        from lenet_edge.train.models import MODELS

        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; expected one of {sorted(MODELS)}")
        from lenet_edge.train import recipe_problem

        problem = recipe_problem(
            self.epochs, self.batch_size, self.lr, self.seed, (self.train_limit, self.test_limit)
        )
        if problem:
            raise ConfigError(f"{self.model}: {problem}")


def source_sha256() -> str:
    """Hash of the training code (its whole import closure): a record made by other code is not 'up to date'."""
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("train.loop")


def library_versions() -> dict[str, str]:
    paddle = import_paddle()

    return {"python": platform.python_version(), "paddle": paddle.__version__, "numpy": np.__version__}


def training_environment() -> dict[str, Any]:
    """The CPU class a checkpoint was trained on: training is bitwise reproducible per CPU model,
    ISA and library versions, not across them (check-reference compares these)."""
    from lenet_edge.runtime.env import cpu_info

    cpu = cpu_info()
    return {"cpu_model": cpu["model"], "isa_flags": cpu["isa_flags"], "machine": platform.machine()}


def is_up_to_date(
    checkpoint: Path, config: TrainConfig, data_sha256: dict[str, str], conv_kernel: str | None = None
) -> bool:
    rec = record_path(checkpoint)
    if not (checkpoint.is_file() and rec.is_file()):
        return False
    try:
        r = read_json(rec)
    except Exception:
        return False
    return (
        r.get("config") == asdict(config)
        and r.get("data_sha256") == data_sha256
        and r.get("source_sha256") == source_sha256()
        and r.get("checkpoint_sha256") == sha256_file(checkpoint)
        and (conv_kernel is None or r.get("versions", {}).get("conv_kernel") == conv_kernel)
    )


def _evaluate(model: Any, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> dict[str, float]:
    paddle = import_paddle()

    model.eval()
    with paddle.no_grad():
        logits = np.concatenate(
            [model(paddle.to_tensor(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
        )
    model.train()
    acc = topk_accuracy(logits, labels)
    return {"test_top1": acc.top1, "test_top2": acc.top2}


def train_epoch(
    model: Any, opt: Any, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int, bar: Any = None
) -> tuple[float, int]:
    """One pass over x[order] in batches (last one partial, as fit()); returns (loss sum, correct)."""
    paddle = import_paddle()
    import paddle.nn.functional as F

    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        xb, yb = paddle.to_tensor(x[idx]), paddle.to_tensor(y[idx])
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        opt.clear_grad()
        lv, cb = float(loss), int((logits.argmax(1) == yb).sum())
        loss_sum += lv * len(idx)
        correct += cb
        if bar is not None:
            bar.update(1)
            if (start // batch_size) % 50 == 0:
                bar.set_postfix(loss=f"{lv:.4f}", acc=f"{cb / len(idx):.3f}", refresh=False)
    return loss_sum, correct


def train(
    config: TrainConfig,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    conv_kernel: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate on the test set, write checkpoint then record; return the record.
    `conv_kernel`: auto | onednn | paddle (train/fastconv.py; default $LENET_EDGE_CONV_KERNEL, auto)."""
    from lenet_edge.train import fastconv
    from lenet_edge.train.models import fastconv_in_force

    out_dir = Path(out_dir)
    ckpt = out_dir / f"{config.model}.npz"
    train_split, test_split = load_split("train", data_dir), load_split("test", data_dir)
    data_sha = {**train_split.sha256, **test_split.sha256}
    ops, kernel = fastconv.choose(conv_kernel)
    if not force and is_up_to_date(ckpt, config, data_sha, kernel):
        print(f"{ckpt}: up to date (same config, data, code and conv kernel); --force retrains")
        return read_json(record_path(ckpt))
    with fastconv_in_force(ops):
        return _train(config, ckpt, train_split, test_split, data_sha, kernel, progress)


def _train(
    config: TrainConfig,
    ckpt: Path,
    train_split: Any,
    test_split: Any,
    data_sha: dict[str, str],
    kernel: str,
    progress: bool,
) -> dict[str, Any]:
    paddle = import_paddle()
    from lenet_edge.runtime.progress import Progress
    from lenet_edge.train.models import build_model, count_params

    # Whole data set in memory, normalised once by the shared contract function.
    x_train = normalize(train_split.images[: config.train_limit, None])
    y_train = train_split.labels[: config.train_limit]
    x_test = normalize(test_split.images[: config.test_limit, None])
    y_test = test_split.labels[: config.test_limit]

    paddle.seed(config.seed)  # initialisation
    rng = np.random.default_rng(config.seed)  # data order: depends on the seed, unlike fit()
    model = build_model(config.model)
    opt = paddle.optimizer.Adam(learning_rate=config.lr, parameters=model.parameters())
    model.train()

    n = len(x_train)
    steps = (n + config.batch_size - 1) // config.batch_size  # keep the last partial batch, as fit()
    epochs: list[dict[str, Any]] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        # a live bar on a terminal; in a log only the epoch line below (no redraws)
        bar = Progress(
            steps, f"{config.model} epoch {epoch + 1}/{config.epochs}", "step", enabled=progress, every=None
        )
        loss_sum, correct = train_epoch(
            model, opt, x_train, y_train, rng.permutation(n), config.batch_size, bar
        )
        bar.close()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n,
            "train_top1": correct / n,
            **_evaluate(model, x_test, y_test),
            "seconds": time.perf_counter() - t0,
        }
        bar.write(
            f"{config.model} epoch {epoch + 1}: loss {metrics['train_loss']:.4f}  "
            f"test top-1 {100 * metrics['test_top1']:.2f} %  top-2 {100 * metrics['test_top2']:.2f} %  "
            f"{metrics['seconds']:.1f} s"
        )
        epochs.append(metrics)
        if not np.isfinite(metrics["train_loss"]):  # diverged: every later epoch and the weights are NaN
            raise TrainingError(
                f"{config.model}: the training loss is {metrics['train_loss']} after epoch {epoch + 1} "
                f"(lr {config.lr:g}, batch {config.batch_size}); nothing written"
            )

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if not np.isfinite(v).all()]
    if bad:
        raise TrainingError(
            f"{config.model}: non-finite weights after training ({', '.join(bad)}); nothing written"
        )
    sha = write_checkpoint(ckpt, state)
    record = {
        "model": config.model,
        "config": asdict(config),
        "seed": config.seed,
        "params": count_params(model),
        "epochs": epochs,
        "test_top1": epochs[-1]["test_top1"],
        "test_top2": epochs[-1]["test_top2"],
        "test_images": len(x_test),
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        "seconds_per_epoch": (time.perf_counter() - wall0) / config.epochs,
        "versions": {**library_versions(), "conv_kernel": kernel},
        "environment": training_environment(),
        "data_sha256": data_sha,
        "source_sha256": source_sha256(),
        "checkpoint": ckpt.name,
        "checkpoint_sha256": sha,
    }
    # The record is written last: a checkpoint without a matching record is refused by loaders.
    write_json_atomic(record_path(ckpt), record)
    return record
