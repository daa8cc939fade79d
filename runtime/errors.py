"""Typed errors for user mistakes and failed checks; the CLI turns them into one stderr line."""


class LenetEdgeError(Exception):
    """A failure a user can act on. The message names the file (if any) and the problem."""


class DataError(LenetEdgeError):
    """A data file is missing, corrupt, truncated or not the one we expect."""


class ContractError(LenetEdgeError):
    """An input or a model does not honour the raw-pixel contract."""


class CheckpointError(LenetEdgeError):
    """A checkpoint is missing, unverified or does not fit the model."""


class ConversionError(LenetEdgeError):
    """A conversion (export, quantization) failed or did not pass its self-check."""


class ConfigError(LenetEdgeError):
    """A configuration value is out of range or inconsistent."""
