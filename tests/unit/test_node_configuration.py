"""The node configuration's pure parts: loading (files, inline YAML, Ockam's spellings),
checking everything before anything is done, and planning what a running node lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkey.node.configuration import ConfigurationError, load_configuration
from meshkey.node.convergence import Current, Wanted, node_differences, plan, resolve

YELLOW = "mk" + "a" * 52


def identities(values: list[str]) -> list[str]:
    known = {"yellow": YELLOW, YELLOW: YELLOW}
    missing = [v for v in values if v not in known]
    if missing:
        raise ValueError(f"{missing[0]!r} is neither a NodeId nor the name of a local node")
    return [known[v] for v in values]


def route(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text}: a route starts with /")
    return text


def same(a: str, b: str) -> bool:
    return a == b


def test_files_inline_yaml_and_ockam_spellings_load_the_same(tmp_path: Path) -> None:
    toml = tmp_path / "n.toml"
    toml.write_text('[node]\nname = "n"\n[[tcp_outlets]]\nalias = "db"\nto = 5432\n')
    inline = load_configuration("{name: n, tcp-outlets: {db: {to: 5432}}}", {})
    from_file = load_configuration(toml, {})
    for config in (inline, from_file):
        wanted = resolve(config, "n", identities, route)
        assert wanted.tcp_outlets == {
            "db": {"to": "127.0.0.1:5432", "name": "outlet", "allow": (), "insecure": False}
        }
    one = resolve(load_configuration("{tcp-outlets: {to: 8080}}", {}), "n", identities, route)
    assert list(one.tcp_outlets) == ["outlet"]


@pytest.mark.parametrize(
    ("text", "variables", "error"),
    [
        ("{name: n}", {"MY_VAR": ""}, "empty value for variable 'MY_VAR'"),
        ("{name: '${NOPE}'}", {}, "${NOPE} is not set"),
        ("{policies: {echo: {allow: [nobody]}}}", {}, "policies[0].allow: 'nobody'"),
        ("{tcp-outlets: {o: {to: 'localhost:65536'}}}", {}, "tcp_outlets.o.to"),
        ("{tcp-outlets: {o: {to: 1, at: other}}}", {}, "other is not this node"),
        ("{relays: {r: {at: green}}}", {}, "relays[0].at: green"),
        ("{relays: [{name: r, via: x}]}", {}, "unknown key(s) via"),
        ("{node: {dht_mode: always}}", {}, "dht_mode is one of"),
        ("{name: a, node: {name: b}}", {}, "name given twice"),
        ("{tcp-inlets: {from: '127.0.0.1:0', to: /x}}", {}, "a port (from) or an alias"),
    ],
)
def test_everything_is_checked_before_anything_is_done(
    text: str, variables: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve(load_configuration(text, variables), "n", identities, route)
    assert error in str(caught.value)


def test_a_node_that_has_everything_needs_no_change() -> None:
    wanted = Wanted(
        tcp_listeners=(("127.0.0.1", 0),),
        listeners={"private": (YELLOW,)},
        relays={"blue": "/node/green"},
        policies={"echo": (YELLOW,)},
        tcp_outlets={"db": {"to": "127.0.0.1:1", "name": "db", "allow": (), "insecure": False}},
    )
    empty = plan(wanted, Current(), same_route=same)
    assert [c.describe() for c in empty] == [
        "create tcp-listener 127.0.0.1:0",
        "create listener private",
        "create policy echo",
        "create relay blue",
        "create tcp-outlet db",
    ]
    current = Current(
        tcp_listeners=[
            {"address": "127.0.0.1:4000", "primary": True},
            {"address": "127.0.0.1:4001", "primary": False},
        ],
        listeners=[{"address": "/service/private", "authorized": [YELLOW]}],
        relays=[
            {"name": "blue", "at": "/node/green", "kind": "manual"},
            {"name": "a.x", "at": "/ip4/1.2.3.4/udp/1", "kind": "automatic"},
        ],
        policies=[{"resource": "echo", "allow": [YELLOW]}],
        tcp_outlets=[
            {
                "alias": "db",
                "address": "/service/db",
                "to": "127.0.0.1:1",
                "allow": [],
                "insecure": False,
            }
        ],
    )
    assert plan(wanted, current, same_route=same) == []


def test_what_differs_is_replaced_and_each_change_knows_its_undo() -> None:
    wanted = Wanted(relays={"blue": "/node/green"}, policies={"echo": (YELLOW,)})
    current = Current(
        relays=[{"name": "blue", "at": "/node/red", "kind": "manual"}],
        policies=[{"resource": "echo", "allow": ["mk" + "b" * 52]}],
    )
    changes = {c.kind: c for c in plan(wanted, current, same_route=same)}
    relay, policy = changes["relay"], changes["policy"]
    assert relay.verb == "replace" and [op for op, _ in relay.do] == [
        "relay.delete",
        "relay.create",
    ]
    assert relay.undo[-1] == ("relay.create", {"name": "blue", "at": "/node/red"})
    assert policy.do == (("policy.create", {"resource": "echo", "allow": [YELLOW]}),)
    assert policy.undo == (("policy.create", {"resource": "echo", "allow": ["mk" + "b" * 52]}),)


def test_node_settings_that_differ_are_all_named() -> None:
    stored = {"udp": "", "tcp": "127.0.0.1:4001", "dht_mode": "auto", "identity": "blue"}
    wanted = {"udp": "127.0.0.1:4000", "tcp": "127.0.0.1:4001", "dht_mode": "client"}
    assert node_differences(stored, wanted) == [
        "udp is (not set), not 127.0.0.1:4000",
        "dht-mode is auto, not client",
    ]
    assert node_differences(stored, {"identity": "blue", "seeds": None}) == []
