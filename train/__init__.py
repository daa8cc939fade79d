"""Training stage: the two LeNets in Paddle, the blog's recipe, seeded and reproducible."""

import os
import warnings

# Paddle logs glog warnings and a ccache UserWarning on import; neither concerns the user.
os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")


# Training flags beyond these are typos, not workloads (the blog's recipe: 10 epochs, batch 64).
MAX_EPOCHS = 1000
MAX_BATCH = 60000  # the whole MNIST training set in one step
MAX_SEED = 2**32 - 1  # paddle.seed takes an unsigned 64-bit int, numpy any int >= 0: one range for both


def recipe_problem(
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    limits: tuple[int | None, ...] = (),
) -> str | None:
    """What is wrong with a training recipe's numbers (those given), or None. Standard library
    only: the command lines check their flags before they start a training process."""
    import math

    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:
        return f"epochs must be 1..{MAX_EPOCHS}, got {epochs}"
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
        return f"batch size must be 1..{MAX_BATCH}, got {batch_size}"
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        return f"lr must be a finite number > 0, got {lr}"
    if seed is not None and not 0 <= seed <= MAX_SEED:
        return f"seed must be 0..{MAX_SEED}, got {seed}"
    for lim in limits:
        if lim is not None and lim < 1:
            return f"data limits must be >= 1, got {lim}"
    return None
