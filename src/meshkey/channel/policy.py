"""Trust policies: which identities may use which service (resource).

A service without a policy is open to everyone who can reach it. A service with one admits a
message only when the identity it arrived with (the authenticated peer at the far end of the
secure channel it came through) is allowed. A message that did not come through a secure
channel has no such identity and is refused. Two resources are not services:

* ``relay`` decides who may create relays here; it is checked against the relay's owner,
  which the registration proves by signature (:mod:`meshkey.relay.registry`);
* ``forward`` decides who may use this node as a hop to other nodes (checked against the
  channel peer, else the authenticated previous hop, of every message this node passes on
  to another node; :data:`meshkey.routing.router.FORWARD_RESOURCE`).

Both are open to every authenticated node until a policy names who may. One thing is not
open by default: a node opens a *new* connection for someone else only for identities a
``forward`` policy names (the router asks :data:`~meshkey.routing.router.FORWARD_DIAL`),
for programs on its own host and to destinations it knows; anyone else's messages go only
over connections the node already has (:mod:`meshkey.routing.router`).

Rules are kept as ``{"allow": [...]}`` documents so attribute-based rules (Ockam's ABAC) can
join ``allow`` later without changing how policies are stored or listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshkey.identity.node_id import NodeId
from meshkey.routing.router import FORWARD_DIAL, FORWARD_RESOURCE

RELAY_RESOURCE = "relay"
#: Resources that are not services but are policed the same way.
SPECIAL_RESOURCES = frozenset({RELAY_RESOURCE, FORWARD_RESOURCE})


@dataclass(frozen=True)
class Policy:
    resource: str
    allow: frozenset[NodeId]

    def admits(self, identity: NodeId | None) -> bool:
        return identity is not None and identity in self.allow

    def document(self) -> dict[str, Any]:
        return {"allow": sorted(str(n) for n in self.allow)}

    @classmethod
    def from_document(cls, resource: str, document: dict[str, Any]) -> Policy:
        allow = document.get("allow")
        if not isinstance(allow, list) or not allow:
            raise ValueError(f"policy for {resource!r} needs a non-empty 'allow' list")
        return cls(resource, frozenset(NodeId.parse(str(item)) for item in allow))


class Policies:
    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self._by_resource = {p.resource: p for p in policies}

    def set(self, policy: Policy) -> None:
        self._by_resource[policy.resource] = policy

    def delete(self, resource: str) -> bool:
        return self._by_resource.pop(resource, None) is not None

    def get(self, resource: str) -> Policy | None:
        return self._by_resource.get(resource)

    def list(self) -> list[Policy]:
        return [self._by_resource[r] for r in sorted(self._by_resource)]

    def admit(self, resource: str, identity: NodeId | None) -> str | None:
        """The router's admission hook: None, or why ``identity`` may not use ``resource``.
        :data:`FORWARD_DIAL` is admitted only for an identity a ``forward`` policy names."""
        if resource == FORWARD_DIAL:
            forward = self._by_resource.get(FORWARD_RESOURCE)
            if forward is not None and forward.admits(identity):
                return None
            return "no forward policy names it"
        policy = self._by_resource.get(resource)
        if policy is None or policy.admits(identity):
            return None
        if identity is None:
            return (
                f"service {resource!r} has a policy: it only accepts messages through a "
                "secure channel from an allowed identity"
            )
        return f"identity {identity} is not allowed to use {resource!r}"
