"""``meshkey status``: every node on one screen, as ``tailscale status`` shows a tailnet.

Each running node is asked once (``overview``: its status, relays, channels and portals),
all at once with a short timeout, so one node that does not answer is named and the others
are shown all the same.
"""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import get_home, local_names
from meshkey.cli.output import emit, output_option


def _short(node_id: str | None) -> str:
    return f"{node_id[:12]}…" if node_id else "-"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def _peer(node_id: str | None, names: dict[str, str]) -> str:
    if not node_id:
        return "-"
    name = names.get(node_id)
    return f"{name} ({_short(node_id)})" if name else _short(node_id)


def _overviews(ctx: click.Context) -> list[dict[str, Any]]:
    import concurrent.futures

    from meshkey.errors import MeshkeyError
    from meshkey.node.control_client import ControlClient
    from meshkey.node.launcher import node_summary

    home = get_home(ctx)
    summaries = [node_summary(home, name) for name in home.node_names()]

    def overview(summary: dict[str, Any]) -> dict[str, Any]:
        if summary["status"] != "running":
            return summary
        client = ControlClient(home.node(summary["name"]).socket_path, timeout=2.0)
        try:
            return {**summary, **client.call("overview")}
        except MeshkeyError as exc:
            return {**summary, "control": f"not answering: {exc}"}

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(summaries)))) as pool:
        return list(pool.map(overview, summaries))


def _nat(nat: dict[str, Any] | None) -> str:
    if not nat:
        return "NAT -"
    text = f"NAT {nat.get('class', 'unknown')}"
    if nat.get("public"):
        text += f", seen as {nat['public']}"
    return text


def _graph(graph: dict[str, Any] | None) -> str:
    if not graph:
        return "graph -"
    return f"graph {graph['mode']}, {graph['peers']} peers"


def _without_id(address: str) -> str:
    return address.split("/id/", maxsplit=1)[0]


def _node_text(node: dict[str, Any], names: dict[str, str]) -> list[str]:
    head = f"{node['name']}  {_short(node.get('node_id'))}  {node['status']}"
    if node["status"] != "running":
        return [head + (f": {node['error']}" if node.get("error") else "")]
    if node.get("control", "ok") != "ok":
        return [f"{head}  ({node['control']})"]
    lines = [f"{head}  {_nat(node.get('nat'))}  {_graph(node.get('graph'))}"]
    rows: list[tuple[str, str]] = []
    rows.append(("addresses", ", ".join(_without_id(a) for a in node.get("addresses", []))))
    relays = node.get("relays") or {}
    auto = relays.get("auto") or {}
    if auto:
        rows.append(("auto relay", auto["status"] if auto.get("enabled") else "off"))
    for relay in relays.get("relays", []):
        state = relay["status"] + (f" ({relay['error']})" if relay.get("error") else "")
        rows.append(("relay", f"{relay['name']} at {relay['at']}: {state} ({relay['kind']})"))
    for hosted in relays.get("hosted", []):
        online = "online" if hosted["online"] else "offline"
        rows.append(
            ("hosting", f"{hosted['address']} for {_peer(hosted['owner'], names)}: {online}")
        )
    for channel in node.get("channels", []):
        path = (channel.get("way") or {}).get("description") or "-"
        rtt_ms = channel.get("rtt_ms")
        if rtt_ms is None:
            rtt_ms = (channel.get("path") or {}).get("rtt_ms")
        rtt = f", rtt {rtt_ms} ms" if rtt_ms is not None else ""
        rows.append(
            ("channel", f"{_peer(channel.get('peer'), names)} {channel['state']}: {path}{rtt}")
        )
    for inlet in node.get("tcp_inlets", []):
        rows.append(
            (
                "inlet",
                f"{inlet['alias']} {inlet['address']} -> {inlet['to']}: {inlet['status']}, "
                f"{inlet['sessions_open']} open of {inlet['sessions_total']}, "
                f"{_size(inlet['bytes_to_outlet'])} out, {_size(inlet['bytes_from_outlet'])} in"
                + (f" (last error: {inlet['last_error']})" if inlet.get("last_error") else ""),
            )
        )
    for outlet in node.get("tcp_outlets", []):
        rows.append(
            (
                "outlet",
                f"{outlet['alias']} {outlet['address']} -> {outlet['to']}: "
                f"{outlet['sessions_open']} open of {outlet['sessions_total']}, "
                f"{_size(outlet['bytes_to_server'])} to the server, "
                f"{_size(outlet['bytes_from_server'])} from it"
                + (f" (last error: {outlet['last_error']})" if outlet.get("last_error") else ""),
            )
        )
    width = max(len(key) for key, _ in rows)
    lines += [f"  {key:<{width}}  {value}" for key, value in rows]
    return lines


@click.command("status")
@output_option
@click.pass_context
def status(ctx: click.Context, output: str) -> None:
    """Every node at a glance: NAT class and addresses, node graph, relays (its own and those
    it hosts), secure channels with their path and RTT, portals with sessions and bytes."""
    nodes = _overviews(ctx)
    names = local_names(ctx)

    def text() -> str:
        if not nodes:
            return "No nodes (create one with `meshkey node create NAME`)."
        return "\n\n".join("\n".join(_node_text(node, names)) for node in nodes)

    emit(output, nodes, text)
