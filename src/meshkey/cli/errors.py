"""Exit codes, and the one place where any failure becomes a line on stderr and a status."""

from __future__ import annotations

import enum

from meshkey.errors import MeshkeyError


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # anything not listed below
    USAGE = 2  # bad arguments: malformed route, unknown option, invalid name
    NOT_FOUND = 3  # no such node, identity or service
    CONFLICT = 4  # already exists, already running, not running, still in use
    UNREACHABLE = 5  # nothing listens there, the connection broke
    TIMEOUT = 6  # no answer in time
    REFUSED = 7  # authentication failed, access refused
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


_BY_CODE = {
    "invalid": ExitCode.USAGE,
    "malformed": ExitCode.USAGE,
    "unsupported": ExitCode.USAGE,
    "too_large": ExitCode.USAGE,
    "malformed_route": ExitCode.USAGE,
    "not_found": ExitCode.NOT_FOUND,
    "no_such_service": ExitCode.NOT_FOUND,
    "conflict": ExitCode.CONFLICT,
    "unreachable": ExitCode.UNREACHABLE,
    "busy": ExitCode.UNREACHABLE,
    "timeout": ExitCode.TIMEOUT,
    "no_answer": ExitCode.TIMEOUT,
    "refused": ExitCode.REFUSED,
    "auth_failed": ExitCode.REFUSED,
    "failed": ExitCode.FAILURE,
    "internal": ExitCode.FAILURE,
}


def exit_code_for(code: str) -> ExitCode:
    return _BY_CODE.get(code, ExitCode.FAILURE)


_KIND_OF_EXIT = {
    ExitCode.FAILURE: "failure",
    ExitCode.USAGE: "invalid",
    ExitCode.NOT_FOUND: "not_found",
    ExitCode.CONFLICT: "conflict",
    ExitCode.UNREACHABLE: "unreachable",
    ExitCode.TIMEOUT: "timeout",
    ExitCode.REFUSED: "refused",
    ExitCode.INTERRUPTED: "interrupted",
}


class CliError(MeshkeyError):
    def __init__(self, message: str, exit_code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    @property
    def kind(self) -> str:
        return _KIND_OF_EXIT.get(self.exit_code, "failure")


EXIT_CODES_HELP = """\b
Exit codes:
  0 success            4 conflict (exists, running, not running)
  1 failure            5 unreachable
  2 bad arguments      6 timeout
  3 not found          7 refused (authentication, policy)
                     130 interrupted (Ctrl-C)"""
