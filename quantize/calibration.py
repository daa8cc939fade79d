"""The fixed calibration subset (committed indices into MNIST train) and its ORT data reader.

Reads results/calibration.json; `lenet-edge calibration --write` creates it once (every committed INT8
figure was calibrated on it: replacing it takes `--force`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.cli import int_range, parser, path_arg
from lenet_edge.runtime.contract import INPUT_NAME, to_pixels
from lenet_edge.runtime.errors import ConfigError
from lenet_edge.runtime.files import read_json, sha256_bytes, write_json_atomic
from lenet_edge.runtime.mnist import load_split

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_FILE = ROOT / "results" / "calibration.json"
DEFAULT_SIZE = 1000
DEFAULT_SEED = 20261128


def indices_sha256(indices: np.ndarray) -> str:
    return sha256_bytes(np.asarray(indices, dtype="<i4").tobytes())


def make_indices(labels: np.ndarray, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Class-balanced sample of the training set: size/10 images per digit, sorted."""
    if size < 10 or size % 10:
        raise ConfigError(f"calibration size must be a positive multiple of 10, got {size}")
    fewest = int(min(np.count_nonzero(labels == c) for c in range(10)))
    if size // 10 > fewest:
        raise ConfigError(
            f"calibration size {size}: at most {10 * fewest} (the rarest digit has {fewest} images)"
        )
    if seed < 0:
        raise ConfigError(f"calibration seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), size // 10, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


@dataclass(frozen=True)
class Calibration:
    indices: np.ndarray
    sha256: str
    source: str

    def pixels(self, data_dir: str | Path | None = None) -> np.ndarray:
        images = load_split("train", data_dir).images
        return to_pixels(images[self.indices])


def calibration_for(
    data: str | Path | None,
    path: str | Path | None = None,
    size: int | None = None,
    seed: int | None = None,
) -> Calibration:
    """The calibration subset of a model's data: MNIST's committed subset (or `path`), or for a
    .npz data set a seeded uniform sample of its training images (at most `size`), recorded by
    the sha256 of its indices and of the data file."""
    if path is not None or data is None or Path(data).suffix != ".npz":
        return load_calibration(path or CALIBRATION_FILE)
    split = load_split("train", data)
    n = len(split.labels)
    size, seed = size or DEFAULT_SIZE, DEFAULT_SEED if seed is None else seed
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, min(size, n), replace=False)).astype(np.int64)
    ((fname, fsha),) = split.sha256.items()
    return Calibration(
        indices=idx,
        sha256=sha256_bytes(indices_sha256(idx).encode() + fsha.encode()),
        source=f"{data} (seed {seed} sample of {len(idx)})",
    )


def calibration_of(name: str, data: str | Path | None, path: str | Path | None = None) -> Calibration:
    """A model's calibration subset, as its workflow declares it ([data] calibration_size and
    calibration_seed, for a .npz or image-folder data set)."""
    from lenet_edge.workflow import get

    wf = get(name)
    return calibration_for(data, path, wf.calibration_size, wf.calibration_seed)


def calibration_label(c: Calibration) -> str:
    """How a record names a calibration subset: the committed file by its repository path."""
    return "results/calibration.json" if Path(c.source).resolve() == CALIBRATION_FILE.resolve() else c.source


def load_calibration(path: str | Path = CALIBRATION_FILE) -> Calibration:
    """Read and verify the committed subset: hash, range, uniqueness, non-empty."""
    d = read_json(path)
    raw = d.get("indices") if isinstance(d, dict) else None
    if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ConfigError(f"{path}: 'indices' must be a list of integers")
    if not all(0 <= i < 60000 for i in raw):
        raise ConfigError(f"{path}: indices must be unique and within the 60,000 training images")
    idx = np.asarray(raw, dtype=np.int64) if raw else np.zeros(0, np.int64)
    if idx.size == 0:
        raise ConfigError(f"{path}: the calibration set is empty")
    if idx.min() < 0 or idx.max() >= 60000 or len(np.unique(idx)) != idx.size:
        raise ConfigError(f"{path}: indices must be unique and within the 60,000 training images")
    if indices_sha256(idx) != d.get("sha256"):
        raise ConfigError(f"{path}: indices do not match their recorded sha256 (edited by hand?)")
    return Calibration(indices=idx, sha256=d["sha256"], source=str(path))


class PixelReader:
    """onnxruntime CalibrationDataReader over raw-pixel batches (the model's own contract)."""

    def __init__(
        self, pixels: np.ndarray, batch_size: int = 100, progress: bool = False, desc: str = ""
    ) -> None:
        if len(pixels) == 0:
            raise ConfigError("the calibration set is empty")
        self.pixels, self.batch_size = pixels, batch_size
        self.progress, self.desc = progress, desc
        self.rewind()

    def rewind(self) -> None:
        self._start = 0
        self._bar = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start == 0 and self.progress:
            from lenet_edge.runtime.progress import Progress

            self._bar = Progress(len(self.pixels), self.desc or "calibrate", "img", every=None, leave=False)
        if self._start >= len(self.pixels):
            if self._bar is not None:
                self._bar.close()
            return None
        batch = self.pixels[self._start : self._start + self.batch_size]
        self._start += len(batch)
        if self._bar is not None:
            self._bar.update(len(batch))
        return {INPUT_NAME: batch}

    def __iter__(self) -> Any:  # qdq_loss_debug iterates readers
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def main(argv: list[str] | None = None) -> int:
    p = parser("quantize.calibration", __doc__)
    p.add_argument("--write", action="store_true", help="create results/calibration.json (once)")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --write: replace an existing file (changes every INT8 model)",
    )
    p.add_argument(
        "--size", type=int_range(10, 60_000), default=DEFAULT_SIZE, help="images, a multiple of 10"
    )
    p.add_argument("--seed", type=int_range(0, 2**32 - 1), default=DEFAULT_SEED)
    p.add_argument("--data-dir", type=path_arg, default=None)
    args = p.parse_args(argv)
    if not args.write and ((args.size, args.seed) != (DEFAULT_SIZE, DEFAULT_SEED) or args.force):
        raise ConfigError(
            "--size, --seed and --force take effect only with --write (without it the file is only checked)"
        )
    if args.write:
        if CALIBRATION_FILE.exists() and not args.force:
            raise ConfigError(
                f"{CALIBRATION_FILE}: exists, and every INT8 model was calibrated on it; "
                "--write --force replaces it"
            )
        idx = make_indices(load_split("train", args.data_dir).labels, args.size, args.seed)
        write_json_atomic(
            CALIBRATION_FILE,
            {
                "about": "Fixed calibration subset for every quantizer: indices into MNIST train "
                "(60,000), class-balanced, drawn once with numpy default_rng(seed).",
                "split": "train",
                "size": int(idx.size),
                "seed": args.seed,
                "sha256": indices_sha256(idx),
                "indices": idx.tolist(),
            },
        )
    cal = load_calibration(CALIBRATION_FILE)
    print(f"{cal.source}: {cal.indices.size} images, sha256 {cal.sha256[:16]}…")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
