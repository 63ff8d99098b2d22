"""The suite's own error types: bad input that the user fixes, not a bug in the code.

The command line reports these in one line (``ssl-bench: error: ...``) with exit status 2; every
other exception keeps its traceback, so an internal bug never looks like bad input. Each type also
derives from the built-in error that callers caught before it existed (``ValueError``,
``FileNotFoundError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SuiteError(Exception):
    """Bad input or a condition the user fixes; the message names the key or file and what was expected."""


class ConfigError(SuiteError, ValueError):
    """A config key or command-line value is invalid (the message names the key)."""


class DataError(SuiteError, ValueError):
    """A data file or folder holds content the suite cannot use (the message names the file)."""


class MissingDataError(SuiteError, FileNotFoundError):
    """A file or folder the run needs does not exist (the message names it and the key that points to it)."""


class OutputExistsError(SuiteError, FileExistsError):
    """An output the run would write already exists and is not to be replaced silently."""


class CheckpointError(SuiteError, ValueError):
    """A file is not the checkpoint expected, or its tensors do not fit the model."""


class StorageError(SuiteError, OSError):
    """Reading or writing a file failed at the OS level (a full disk, an I/O error); the message names it."""


class TrainingStopped(SuiteError, FloatingPointError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class BusyError(SuiteError, RuntimeError):
    """Another run holds a resource this run needs (an output folder's lock)."""
