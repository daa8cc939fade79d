"""The input contract shared by training, export, calibration, evaluation and the device runner.

Models take raw pixels: [N, 1, 28, 28], values 0..255 (MNIST polarity, white digit on black), as
float32 or as the uint8 bytes a camera gives (both hold every pixel value exactly; each runner
feeds its model the dtype it takes natively, converting only when they differ). The
normalisation below is baked into every exported graph, so a device feeds pixels.
"""

from __future__ import annotations

import numpy as np

from .errors import ContractError

INPUT_NAME = "pixels"
OUTPUT_NAME = "scores"
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
# Limits on what a command is asked to run: beyond them a flag is a typo, not a workload (a
# 65,536-image batch is 51 MB of pixels; onnxruntime takes a C int of threads).
MAX_BATCH = 65536
MAX_THREADS = 1024
MAX_RUNS = 1_000_000  # timed (or warm-up) calls per configuration: ~20 s of a 20 µs model, 36 MB of samples
PIXEL_MAX = 255.0
# Paddle 2.0's MNIST example: Normalize(mean=127.5, std=127.5) maps 0..255 to [-1, 1].
NORM_MEAN = 127.5
NORM_STD = 127.5


def runs_problem(counts: dict[str, int]) -> str | None:
    """The first timing count (`--runs`, `--warmup`, `--rounds` of bench and the searches) above
    MAX_RUNS, as "--runs N: must be <= 1,000,000"; None when every one is within it."""
    for flag, value in counts.items():
        if value > MAX_RUNS:
            return f"{flag} {value}: must be <= {MAX_RUNS:,}"
    return None


def contract_text(dtype: str = "float32") -> str:
    """The contract as stored in a model's metadata, for a graph whose input is `dtype`."""
    also = "; runners also take uint8" if dtype == "float32" else ""
    return (
        f"input 'pixels': {dtype} [N,1,28,28], raw pixel values 0..255 (white digit on black, "
        f"as in the MNIST IDX files{also}); the graph normalises (x-127.5)/127.5 itself. "
        "output 'scores': float32 [N,10] logits, argmax is the digit."
    )


CONTRACT_TEXT = contract_text()


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Raw pixels (any real dtype, 0..255) -> float32 in [-1, 1]. The one preprocessing function."""
    return (pixels.astype(np.float32) - np.float32(NORM_MEAN)) / np.float32(NORM_STD)


def to_pixels(images_u8: np.ndarray) -> np.ndarray:
    """uint8 images as read from a data set -> the model input, float32 [N, C, H, W]: IDX's
    [N, 28, 28] gains its one channel, [N, C, H, W] stays."""
    if images_u8.ndim == 3:
        images_u8 = images_u8[:, None]
    return images_u8.astype(np.float32)


def check_pixels(x: object, image_shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """Validate a batch against the contract (of a model taking `image_shape` = C, H, W); return
    it unchanged or raise ContractError."""
    if not isinstance(x, np.ndarray):
        raise ContractError(f"input must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32 and x.dtype != np.uint8:
        raise ContractError(f"input dtype must be float32 or uint8 raw pixels 0..255, got {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != tuple(image_shape) or x.shape[0] < 1:
        want = ",".join(map(str, image_shape))
        raise ContractError(f"input shape must be [N,{want}] with N >= 1, got {list(x.shape)}")
    if x.dtype == np.uint8:
        return x  # every uint8 value is a valid pixel
    if not np.isfinite(x).all():
        raise ContractError("input contains NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > PIXEL_MAX:
        raise ContractError(f"input values must lie in 0..255, got {lo:g}..{hi:g}")
    if 0.0 < hi <= 1.0 and (x != np.round(x)).any():
        # Raw pixels reach 255 on a digit's stroke; fractions that never pass 1 are an image
        # already scaled to [0, 1], which the graph would normalise a second time.
        raise ContractError(f"input looks scaled to [0, 1] (values {lo:g}..{hi:g}); feed raw pixels 0..255")
    return x
