"""Services every node runs: ``echo``, ``uppercase`` and ``hop``."""

from __future__ import annotations

from meshkey.routing.address import ServiceAddress
from meshkey.routing.message import Message
from meshkey.routing.router import Router


def uppercase(payload: bytes) -> bytes:
    try:
        return payload.decode("utf-8").upper().encode("utf-8")
    except UnicodeDecodeError:
        return payload.upper()


def install_builtin_services(router: Router) -> None:
    # Errors (about replies that could not be delivered) are never answered: router.reply
    # drops them, so these services need no check of their own.
    async def echo(message: Message) -> None:
        await router.reply(message, message.payload)

    async def upper(message: Message) -> None:
        await router.reply(message, uppercase(message.payload))

    hop_address = ServiceAddress("hop")

    async def hop(message: Message) -> None:
        # Forward along the rest of the route and stay on the way back, like Ockam's hop.
        await router.route(message.step().with_return(hop_address))

    router.register("echo", echo)
    router.register("uppercase", upper)
    router.register("hop", hop, inline=True)
