"""The user's errors: what a bad config, a bad data file, a bad run directory or a bad spec raises.

Every error that the user's input causes is a :class:`HybridRNNError`; the command line prints those as one
``error:`` paragraph with exit code 2. Anything else is a bug and shows its traceback. The classes subclass
``ValueError`` so that code written against the first version's ``ValueError`` keeps working.
"""
from __future__ import annotations


class HybridRNNError(ValueError):
    """Base of every error caused by the user's input (the message names the file, key, column or value)."""


class ConfigError(HybridRNNError):
    """A configuration that cannot be used; the message names the key, its path and the fix."""


class DataError(HybridRNNError):
    """A data file or frame that cannot be used: missing, malformed, non-finite, too short (names file and column)."""


class RunDirError(HybridRNNError):
    """A run directory that cannot be read or written: missing, corrupt or inconsistent files (names them)."""


class SpecError(HybridRNNError):
    """A malformed encoder spec (the message points at the bad token)."""


class MissingExtraError(HybridRNNError, ImportError):
    """An optional dependency is not installed; the message says which extra to ``pip install``."""
