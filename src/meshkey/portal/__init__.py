"""TCP portals: inlets and outlets over a route, and portal streams (DESIGN.md decision 13).

``session`` (one TCP connection's bytes, sans-IO, made of ``send_half`` and ``receive_half``,
with its allowed inputs in ``transitions``) and ``mux`` (many sessions on one route, sans-IO)
are the cores; ``driver``, ``inlet``, ``outlet`` and ``stream`` are the asyncio glue.
"""

from meshkey.portal.inlet import Inlet, InsecureRouteError, check_end_to_end
from meshkey.portal.outlet import DEFAULT_OUTLET, Outlet
from meshkey.portal.session import Outcome, PortalLocalError, PortalPeerError, SessionLimits
from meshkey.portal.stream import open_portal_stream

__all__ = [
    "DEFAULT_OUTLET",
    "Inlet",
    "InsecureRouteError",
    "Outcome",
    "Outlet",
    "PortalLocalError",
    "PortalPeerError",
    "SessionLimits",
    "check_end_to_end",
    "open_portal_stream",
]
