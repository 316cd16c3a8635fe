"""Exceptions whose message is one line naming the problem (the CLI prints it and exits 2),
and gpunet's own warning classes."""

from __future__ import annotations


class GpunetError(Exception):
    """Base of every error that is the user's input, not a bug: the CLI shows ``str(e)``."""


class DataError(GpunetError, ValueError):
    """Bad data: missing file or key, mismatched lengths, NaN/inf, labels out of range..."""


class CheckpointError(GpunetError, ValueError):
    """A corrupt, truncated, foreign or newer-version checkpoint, or one that does not fit."""


class ConfigError(GpunetError, ValueError):
    """A bad option or configuration value."""


class TrainingDiverged(GpunetError, RuntimeError):
    """The loss became NaN or inf."""


class DataDriftWarning(UserWarning):
    """The data's per-feature statistics clearly disagree with the training statistics a
    checkpoint stores (``gpunet.train.evaluation.data_drift``); results are computed as
    usual."""
