"""Image transforms for the invariance study: integer shifts, rotations, scalings (numpy + scipy).

All take uint8 or float images [N, 28, 28] and return float32 raw pixels in 0..255 (the runtime
contract). Shifts are exact (zero-filled, no interpolation); rotation and scaling resample about
the image centre with bilinear interpolation and zero fill.
"""

from __future__ import annotations

import math

import numpy as np


def shift(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move content dx pixels right and dy pixels down; vacated pixels are 0."""
    x = np.asarray(images, dtype=np.float32)
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def _affine(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample each image with output(p) = input(matrix @ (p - c) + c), bilinear, zero fill."""
    from scipy import ndimage

    x = np.asarray(images, dtype=np.float32)
    c = (np.array(x.shape[-2:], dtype=float) - 1) / 2
    offset = c - matrix @ c
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = ndimage.affine_transform(x[i], matrix, offset=offset, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0, 255)


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate content counter-clockwise (as displayed, y down) by `degrees` about the centre."""
    t = math.radians(degrees)
    # (row, col) coordinates; inverse map of a counter-clockwise rotation on screen
    m = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return _affine(images, m)


def scale(images: np.ndarray, factor: float) -> np.ndarray:
    """Zoom content by `factor` about the centre (> 1 enlarges, < 1 shrinks)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    return _affine(images, np.eye(2) / factor)


def centre_of_mass(images: np.ndarray) -> np.ndarray:
    """(row, col) intensity centroid of each image, [N, 2]."""
    x = np.asarray(images, dtype=np.float64)
    h, w = x.shape[-2:]
    total = x.sum(axis=(-2, -1))
    rows = (x.sum(axis=-1) * np.arange(h)).sum(-1) / total
    cols = (x.sum(axis=-2) * np.arange(w)).sum(-1) / total
    return np.stack([rows, cols], axis=-1)


# The study's conditions: (family, parameter) -> transform. Shifts run in the 4 axis directions
# and are averaged per distance; rotations in both senses and are averaged per angle.
SHIFTS = (1, 2, 3, 4)
ANGLES = (5, 10, 15, 20)
SCALES = (0.8, 0.9, 1.1, 1.2)


def conditions() -> list[tuple[str, float, str, object]]:
    """[(family, magnitude, label, fn(images) -> pixels)]; magnitude 0 is the clean test set."""
    out: list[tuple[str, float, str, object]] = [("none", 0, "clean", lambda im: np.asarray(im, np.float32))]
    for k in SHIFTS:
        for dx, dy, d in ((k, 0, "right"), (-k, 0, "left"), (0, k, "down"), (0, -k, "up")):
            out.append(("shift", k, f"shift {d} {k}px", lambda im, dx=dx, dy=dy: shift(im, dx, dy)))
    for a in ANGLES:
        for s in (a, -a):
            out.append(("rotate", a, f"rotate {s:+d}°", lambda im, s=s: rotate(im, s)))
    for f in SCALES:
        out.append(("scale", f, f"scale ×{f}", lambda im, f=f: scale(im, f)))
    return out
