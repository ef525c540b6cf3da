"""Two embedded meshkey nodes for NAT lab tests that need more than the CLI gives: a node
that records every message it receives (blue), and one that sends a numbered stream through a
secure channel without waiting for answers (yellow). Each runs in a lab host's namespace::

    python -m tests.natlab.peers blue --udp 10.1.0.2:4100 --relay ROUTE --name NAME \\
        --observer A:P --observer B:P
    python -m tests.natlab.peers yellow --udp 10.2.0.2:4100 --to ROUTE --count 600 \\
        --interval 0.02 --observer A:P --observer B:P

blue prints ``READY <relay address>``, records what reaches ``/service/record`` and, when a
line comes on stdin, prints the payloads it received (JSON) and exits. yellow prints
``CHANNEL <address>``, then ``PATH direct|relay <sent so far>`` whenever the channel's path
changes, and ``SENT <n>`` at the end (then it waits for a line on stdin before stopping, so
that what it resends on a path switch still goes out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import uvloop

from meshkey import Node
from meshkey.routing.address import ServiceAddress, parse_route
from meshkey.routing.message import Message


def say(line: str) -> None:
    print(line, flush=True)


async def stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def blue(args: argparse.Namespace) -> None:
    async with Node(udp=args.udp, tcp=args.tcp, observers=args.observer) as node:
        received: list[str] = []

        async def record(message: Message) -> None:
            if not message.is_error:
                received.append(message.payload.decode())

        node.register_worker("record", record)
        relay = await node.create_relay(args.name, args.relay)
        say(f"READY {relay.address}")
        await stdin_line()
        say(json.dumps(received))


async def yellow(args: argparse.Namespace) -> None:
    async with Node(udp=args.udp, tcp=args.tcp, observers=args.observer) as node:
        address = await node.create_secure_channel(args.to, timeout=30)
        channel = node.channels.get(address)
        assert channel is not None
        say(f"CHANNEL {address}")
        route = (*parse_route(address), ServiceAddress("record"))
        shown = ""
        for index in range(args.count):
            path = node.channels.describe(channel).get("path") or {}
            now = "direct" if path.get("direct") else "relay"
            if now != shown:
                shown = now
                say(f"PATH {now} {index}")
            await node.router.route(Message(route, (), f"m{index}".encode()))
            await asyncio.sleep(args.interval)
        say(f"SENT {args.count}")
        await stdin_line()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.natlab.peers")
    parser.add_argument("role", choices=["blue", "yellow"])
    parser.add_argument("--udp", required=True)
    parser.add_argument("--tcp", default=None)
    parser.add_argument("--observer", action="append", default=[])
    parser.add_argument("--relay", help="blue: the route of the relay node")
    parser.add_argument("--name", help="blue: the relay name")
    parser.add_argument("--to", help="yellow: the route to blue's listener through the relay")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    uvloop.run(blue(args) if args.role == "blue" else yellow(args))


if __name__ == "__main__":
    main()
