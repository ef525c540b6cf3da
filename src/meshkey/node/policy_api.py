"""The policy part of :class:`~meshkey.node.core.Node`'s API: who may use which service (a
mixin, as :mod:`meshkey.node.portal_api` is, so node/core.py stays the composition root)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from meshkey.channel.manager import SecureChannels
from meshkey.channel.policy import SPECIAL_RESOURCES, Policies, Policy
from meshkey.identity.node_id import NodeId, node_ids
from meshkey.log import EventLogger
from meshkey.node.store import NodeStore
from meshkey.routing.router import Router, is_internal_worker

log = EventLogger("node")

_RESOURCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class PolicyMethods:
    policies: Policies
    _store: NodeStore | None

    @property
    def router(self) -> Router:
        raise NotImplementedError

    @property
    def channels(self) -> SecureChannels:
        raise NotImplementedError

    def set_policy(self, resource: str, allow: Iterable[NodeId | str]) -> Policy:
        """Only ``allow`` (NodeIds, or their text) may use ``resource`` from now on;
        InvalidNodeIdError (a ValueError) for anything that is not a NodeId, ValueError for a
        resource that cannot have a policy. :meth:`policy_warning` says whether it applies
        to anything yet."""
        if not _RESOURCE.fullmatch(resource) or is_internal_worker(resource):
            raise ValueError(
                f"invalid resource {resource!r}: a service name (letters, digits, '_', '.', "
                f"'-'), or one of {', '.join(sorted(SPECIAL_RESOURCES))}"
            )
        if self.channels.is_listener(resource):
            raise ValueError(
                f"{resource!r} is a secure channel listener: a policy on it would refuse every "
                "channel (handshakes do not come through a channel); choose who may open "
                "channels with `meshkey secure-channel-listener create ... --authorized ID`"
            )
        policy = Policy(resource, node_ids(allow))
        if not policy.allow:
            raise ValueError("a policy needs at least one allowed identity")
        self.policies.set(policy)
        if self._store:
            self._store.save_policy(policy)
        log.info("policy.set", resource=resource, allow=",".join(sorted(map(str, policy.allow))))
        return policy

    def policy_warning(self, resource: str) -> str | None:
        """Why a policy on ``resource`` protects nothing yet, if it does not."""
        if resource in SPECIAL_RESOURCES or self.router.has_worker(resource):
            return None
        return (
            f"there is no service {resource!r} on this node (yet): the policy applies once there is"
        )

    def delete_policy(self, resource: str) -> None:
        if not self.policies.delete(resource):
            raise KeyError(resource)
        if self._store:
            self._store.delete_policy(resource)
        log.info("policy.deleted", resource=resource)
