"""A folder of images and a labels file as a data set: converted once, on the host, to the .npz
form every stage and the device runtime read (numpy only there).

The labels file is CSV, one image per line: `split,file,label` (split `train` or `test`, `file`
relative to the folder, `label` 0..classes-1); a first line `split,file,label` is a header. Images
are decoded with Pillow (PNG, JPEG, BMP, ...), converted to the workflow's channels (L for 1, RGB
for 3) and must already have its height and width (nothing is resized behind the user's back). The
.npz goes to build/data/<model>-<hash>.npz, the hash covering the labels file and every image, so
any change makes a new one; it is written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np

from lenet_edge.runtime.errors import DataError, LenetEdgeError
from lenet_edge.runtime.files import inside, write_bytes_atomic

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "data"


def _rows(labels: Path, folder: Path, classes: int) -> list[tuple[str, Path, int]]:
    try:
        text = labels.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{labels}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{labels}: cannot read the labels file ({type(e).__name__})") from None
    rows = []
    for n, rec in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not rec or (n == 1 and [c.strip() for c in rec] == ["split", "file", "label"]):
            continue
        if len(rec) != 3:
            raise DataError(f"{labels}:{n}: expected 'split,file,label', got {len(rec)} fields")
        split, name, label = (c.strip() for c in rec)
        if split not in ("train", "test"):
            raise DataError(f"{labels}:{n}: split must be train or test, got {split!r}")
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{labels}:{n}: file {name!r} must be a relative path inside {folder}")
        try:  # a symlink on the way may not lead out either (as for a workflow's own paths)
            inside(folder, folder / rel)
        except LenetEdgeError:
            raise DataError(
                f"{labels}:{n}: file {name!r} leads outside {folder} (through a symlink)"
            ) from None
        try:
            k = int(label)
        except ValueError:
            raise DataError(f"{labels}:{n}: label {label!r} is not an integer") from None
        if not 0 <= k < classes:
            raise DataError(f"{labels}:{n}: label {k} outside 0..{classes - 1}")
        rows.append((split, folder / rel, k))
    for split in ("train", "test"):
        if not any(r[0] == split for r in rows):
            raise DataError(f"{labels}: no {split} images listed")
    return rows


def _image(path: Path, shape: tuple[int, int, int], where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{where}: image {path} not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: {path} is not a readable image ({type(e).__name__})") from None
    if arr.shape[:2] != (h, w):
        raise DataError(f"{where}: {path} is {arr.shape[1]}x{arr.shape[0]}, the workflow's input is {w}x{h}")
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def image_folder_npz(name: str, folder: Path, labels: Path, shape: tuple[int, ...], classes: int) -> Path:
    """The .npz of an image folder (made once per content; see the module docstring)."""
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"{folder}: an image folder gives 1 (L) or 3 (RGB) channels, the input wants {shape}")
    rows = _rows(labels, folder, classes)
    h = hashlib.sha256(labels.read_bytes())
    for _, path, _ in rows:
        try:
            h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
        except OSError:
            raise DataError(f"{labels}: image {path} not found or unreadable") from None
    out = CACHE / f"{name}-{h.hexdigest()[:16]}.npz"
    if out.is_file():
        return out
    arrays = {}
    for split in ("train", "test"):
        part = [(p, k) for s, p, k in rows if s == split]
        arrays[f"{split}_images"] = np.stack([_image(p, shape, str(labels)) for p, _ in part])
        arrays[f"{split}_labels"] = np.array([k for _, k in part], np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(out, buf.getvalue())
    return out
