"""User-facing errors: each carries a one-line message saying what is wrong and what to do.

The CLI prints ``error: <message>`` and exits with ``exit_code``; nothing else
is shown to the user (tracebacks go to the log only).
"""

from __future__ import annotations


class CollectorError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StorageError(CollectorError):
    exit_code = 3


class NotFound(CollectorError):
    exit_code = 4


class Conflict(CollectorError):
    exit_code = 5


class InvalidInput(CollectorError):
    exit_code = 2


class DaemonUnavailable(CollectorError):
    exit_code = 6


class DeviceError(CollectorError):
    exit_code = 7


class NotAuthorised(CollectorError):
    """Not logged in, the login expired, a wrong password, or a role that may not do this."""

    exit_code = 10
