"""Exit codes, and the one place where any failure becomes a line on stderr and a status."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # anything not listed below
    USAGE = 2  # bad arguments: malformed route, unknown option, invalid name
    NOT_FOUND = 3  # no such node, identity or service
    CONFLICT = 4  # already exists, already running, not running, still in use
    UNREACHABLE = 5  # nothing listens there, the connection broke
    TIMEOUT = 6  # no answer in time
    REFUSED = 7  # authentication failed, access refused


_BY_CODE = {
    "invalid": ExitCode.USAGE,
    "malformed": ExitCode.USAGE,
    "unsupported": ExitCode.USAGE,
    "route_too_long": ExitCode.USAGE,
    "too_large": ExitCode.USAGE,
    "not_found": ExitCode.NOT_FOUND,
    "no_such_service": ExitCode.NOT_FOUND,
    "conflict": ExitCode.CONFLICT,
    "unreachable": ExitCode.UNREACHABLE,
    "busy": ExitCode.UNREACHABLE,
    "timeout": ExitCode.TIMEOUT,
    "refused": ExitCode.REFUSED,
    "auth_failed": ExitCode.REFUSED,
}


def exit_code_for(code: str) -> ExitCode:
    return _BY_CODE.get(code, ExitCode.FAILURE)


class CliError(Exception):
    def __init__(self, message: str, exit_code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


EXIT_CODES_HELP = """\b
Exit codes:
  0 success            4 conflict (exists, running, not running)
  1 failure            5 unreachable
  2 bad arguments      6 timeout
  3 not found          7 refused (authentication, policy)"""
