"""The base of every error meshkey raises on purpose.

Each has a :attr:`MeshkeyError.kind`: a short name the control API sends and the CLI maps to
its exit code (``not_found`` -> 3, ``conflict`` -> 4, ...; see ``meshkey.cli.errors``), so one
failure gets one exit code whichever command met it. A program embedding meshkey can catch
``MeshkeyError`` for all of them.

Imports nothing from meshkey: every layer may use it.
"""

from __future__ import annotations


class MeshkeyError(Exception):
    """A failure meshkey knows and explains; ``kind`` says which sort it is."""

    default_kind = "failure"

    @property
    def kind(self) -> str:
        return self.default_kind
