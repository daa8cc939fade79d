"""Deterministic batch-1 LeNet input shared by verify_ort.py, count_insns.py and
make_reference.py (host and guest must feed byte-identical data)."""

import numpy as np


def make_input(batch: int = 1) -> np.ndarray:
    """float32 [batch,1,28,28], values 0..255: a centred bright blob plus a
    deterministic texture, so conv/relu/pool paths see non-trivial data."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    blob = 255.0 * np.exp(-(((yy - 14.0) / 6.0) ** 2 + ((xx - 13.0) / 4.0) ** 2))
    texture = ((np.arange(784, dtype=np.int64).reshape(28, 28) * 37) % 64).astype(np.float32)
    img = np.clip(np.rint(blob + texture), 0, 255).astype(np.float32)
    return np.broadcast_to(img, (batch, 1, 28, 28)).copy()
