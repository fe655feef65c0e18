"""Error types: every user-facing failure says what was got, what was expected, and how to fix it."""

from __future__ import annotations


class FeditError(Exception):
    """Base class for errors caused by user input or environment; the CLI prints these without a traceback."""


class ConfigError(FeditError):
    """A configuration value is invalid or inconsistent."""


class DataError(FeditError):
    """Input data is malformed: the message names the file, line/row and field."""


class AggregationError(FeditError):
    """Client updates cannot be combined (mismatched keys, shapes, or no updates)."""


class ClientError(FeditError):
    """A client failed to train in a round."""


class CheckpointError(FeditError):
    """A run directory is missing, corrupt, or belongs to a different run."""
