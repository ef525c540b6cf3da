r"""What the control API's operations share: reading their arguments, and turning the node's
typed errors into :class:`ControlError`\ s of a kind the CLI maps to an exit code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from meshkey.dht.peers import PeerNotFoundError
from meshkey.identity.node_id import NodeId
from meshkey.node.control_client import ControlError
from meshkey.node.state import NodeStateError
from meshkey.routing.address import RouteError
from meshkey.routing.errors import RemoteError


def text_arg(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError("invalid", f"missing {key!r}")
    return value


def timeout_arg(args: dict[str, Any]) -> float:
    timeout = args.get("timeout", 10.0)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise ControlError("invalid", "timeout must be between 0 and 3600 seconds")
    return float(timeout)


def node_ids_arg(values: Any) -> list[NodeId] | None:
    if not values:
        return None
    if not isinstance(values, list):
        raise ControlError("invalid", "expected a list of NodeIds")
    try:
        return [NodeId.parse(str(value)) for value in values]
    except ValueError as exc:
        raise ControlError("invalid", str(exc)) from exc


@contextlib.contextmanager
def control_errors() -> Iterator[None]:
    """Turns the node's typed errors into control errors the CLI maps to exit codes."""
    try:
        yield
    except RouteError as exc:
        raise ControlError("invalid", str(exc)) from exc
    except NodeStateError as exc:
        raise ControlError(exc.code, str(exc)) from exc
    except RemoteError as exc:
        raise ControlError(exc.code.name.lower(), exc.text) from exc
    except PeerNotFoundError as exc:
        raise ControlError(exc.kind, str(exc)) from exc
    except ValueError as exc:
        raise ControlError("conflict" if "already" in str(exc) else "invalid", str(exc)) from exc
