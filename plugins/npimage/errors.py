"""Errors the user can act on: the CLI prints them as one line and exits non-zero.

Raise a `UserError` subclass for anything caused by input, configuration or the
environment (a wrong path, an empty source, an unreachable database, a read-only folder),
with a message that says what went wrong and, as `hint`, what to do about it. The CLI
prints `npimage: error: <message> (<hint>)` and exits with the class's `exit_code`; it
never shows a traceback for these. Anything else is a bug and keeps its traceback.

    from npimage.errors import EmptySourceError
    raise EmptySourceError(f"no images found in {source}",
                           hint="point --source at a folder of images or a manifest CSV")

Exit codes: 2 a user error, 3 a run refused because another is in flight
(storage.locks.RunInProgress), 4 a service unreachable, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; `str()` is the one line the CLI prints."""

    exit_code: int = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(UserError, ValueError):
    """Bad input: a source, manifest, truth file or argument that cannot be used.

    Also a ValueError, so code that catches bad values catches it too."""


class EmptySourceError(InputError):
    """The source lists no images at all (an empty folder or manifest)."""


class TruthFileError(InputError):
    """A truth file (pairs or groups CSV) that cannot be read, e.g. an unknown label."""


class UnknownClientError(UserError, LookupError):
    """The client has no published run to report on, evaluate or search."""


class DataDirError(UserError):
    """The data dir cannot be used: not writable, not a folder."""


class ServiceUnavailable(UserError):
    """A service the run needs (PostgreSQL backend) cannot be reached."""

    exit_code = 4


class MissingExtra(UserError):
    """An optional part of npimage is not installed (e.g. the demo generator)."""
