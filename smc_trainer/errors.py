"""Errors that mean "the user asked for something that cannot be done", as opposed to a bug.

`run_smc.py` turns these into one line `run_smc.py: error: <message>` and exit status 2, like argparse;
any other exception is a bug and keeps its traceback. Each class also derives from the builtin a caller
would expect (`ValueError`, `FileNotFoundError`, ...), so `except ValueError` code keeps working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad flag value, an invalid combination, an unknown recipe or method: the message names the bad
    value and the valid choices."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named (or the recipe needs) does not exist."""


class OfflineError(UsageError, OSError):
    """A model or dataset could neither be downloaded nor found in the local cache."""


class ExistingOutputError(UsageError, FileExistsError):
    """Writing here would replace files the user made (checkpoints, releases, results)."""
