"""Checkpoints as deterministic .npz (no pickle) plus a JSON record that carries their sha256.

A checkpoint is usable only when its record exists and the file's sha256 matches the record:
a file left by an interrupted or foreign run is refused, never loaded.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.runtime.errors import CheckpointError
from lenet_edge.runtime.files import read_json, sha256_file, write_bytes_atomic

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: same weights -> same bytes -> same sha256


def record_path(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.name.removesuffix(".npz") + ".train.json")


def npz_bytes(state: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as an uncompressed .npz whose bytes depend only on names and values."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(state):
            arr = np.ascontiguousarray(state[name])
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), member.getvalue())
    return buf.getvalue()


def write_checkpoint(path: str | Path, state: dict[str, np.ndarray]) -> str:
    """Write atomically; return the file's sha256 (to be put in the record)."""
    write_bytes_atomic(path, npz_bytes(state))
    return sha256_file(path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Verify the sha256 against the record, then load arrays with pickle disabled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (run `make train`, or use results/checkpoints)")
    rec_path = record_path(path)
    if not rec_path.is_file():
        raise CheckpointError(f"{path}: no training record {rec_path.name} beside it; incomplete run?")
    record = read_json(rec_path)
    if not isinstance(record, dict) or not isinstance(record.get("model"), str):
        raise CheckpointError(f"{rec_path}: not a training record (no 'model' field)")
    want = record.get("checkpoint_sha256")
    got = sha256_file(path)
    if got != want:
        raise CheckpointError(f"{path}: sha256 {got[:16]}… does not match its record ({str(want)[:16]}…)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable .npz ({e})") from e
    for k, v in state.items():
        if v.dtype != np.float32:
            raise CheckpointError(f"{path}: array {k} is {v.dtype}, expected float32")
        if not np.isfinite(v).all():
            raise CheckpointError(f"{path}: array {k} holds {int((~np.isfinite(v)).sum())} NaN/Inf values")
    return state, record
