"""chuan's error types: what the command line prints as one message instead of a traceback.

Bad input (a file, a record, a config field, a flag, a model dir) raises a `ChuanError` whose
message names the file, line, field or flag and says what to do next. `chuan` prints the
message and exits 1 (`chuan --debug VERB ...` shows the traceback too); any other exception
that reaches the command line is a bug in chuan. Each type also derives from the built-in
exception a Python caller would expect (`ValueError`, `FileNotFoundError`, ...), so
`except ValueError` around a library call keeps working.

A leaf: it imports nothing, and every room may raise these.
"""

from __future__ import annotations


class ChuanError(Exception):
    """Bad input, settings or state that the user can fix; the message says how."""


class InputError(ChuanError, ValueError):
    """A value, record, file content, config field or flag that chuan cannot use."""


class MissingError(ChuanError, FileNotFoundError):
    """A file or dir that should exist does not."""


class OutputExistsError(ChuanError, FileExistsError):
    """The output would replace or mix with an earlier output (`--overwrite` redoes it)."""


class DependencyError(ChuanError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
