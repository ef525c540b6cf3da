"""Share tickets (``meshkey share``/``connect``): short, signed, and refused when changed."""

from __future__ import annotations

import pytest

from meshkey.cli.ticket import (
    MAX_HINTS,
    PREFIX,
    RELAY,
    SEED,
    Hint,
    Ticket,
    TicketError,
    parse_ticket,
)
from meshkey.identity.keys import Identity
from meshkey.node.control_client import TICKET_SIGNATURE_CONTEXT

SHARER = Identity.generate()
SEED_NODE = Identity.generate().node_id.raw


def signed(ticket: Ticket, identity: Identity = SHARER) -> Ticket:
    signature = identity.sign(TICKET_SIGNATURE_CONTEXT + ticket.body())
    return Ticket(ticket.node_id, ticket.service, ticket.hints, signature)


def example() -> Ticket:
    hints = (
        Hint(SEED, None, "203.0.113.7", 4000),
        Hint(SEED | RELAY, SEED_NODE, "198.51.100.1", 7000, "blue"),
        Hint(SEED, SEED_NODE, "2001:db8::1", 7001),
    )
    return signed(Ticket(SHARER.node_id.raw, "share-a1b2c3", hints))


def test_a_ticket_round_trips_and_is_short_enough_to_paste() -> None:
    ticket = example()
    text = ticket.to_text()
    assert text.startswith(PREFIX) and text == text.lower() and text.isalnum()
    assert len(text) < 400
    parsed = parse_ticket(f"  {text[:100]}\n{text[100:]}  ")  # wrapped when pasted
    assert parsed == ticket
    parsed.verify()
    assert parsed.node == str(SHARER.node_id)
    assert parsed.hints[0].seed_text(parsed.node) == f"{SHARER.node_id}@203.0.113.7:4000"
    assert parsed.hints[2].seed_text(parsed.node).endswith("@[2001:db8::1]:7001")
    bare = signed(Ticket(SHARER.node_id.raw, "outlet"))
    assert len(bare.to_text()) < 180


def test_every_changed_letter_is_refused() -> None:
    text = example().to_text()
    body = text[len(PREFIX) :]
    for position in range(len(body)):
        for letter in "a7q":
            if body[position] == letter:
                continue
            changed = PREFIX + body[:position] + letter + body[position + 1 :]
            with pytest.raises(TicketError):
                parse_ticket(changed).verify()


def test_a_ticket_signed_by_another_node_or_cut_short_is_refused() -> None:
    forged = signed(Ticket(SHARER.node_id.raw, "outlet"), Identity.generate())
    with pytest.raises(TicketError, match="signature does not match"):
        parse_ticket(forged.to_text()).verify()
    text = example().to_text()
    for cut in (len(PREFIX), len(PREFIX) + 10, len(text) - 8):
        with pytest.raises(TicketError):
            parse_ticket(text[:cut])
    with pytest.raises(TicketError, match="starts with mk1"):
        parse_ticket("dumbpipe-ticket")
    with pytest.raises(TicketError, match="at most"):
        Ticket(
            SHARER.node_id.raw, "x", (Hint(SEED, None, "192.0.2.1", 1),) * (MAX_HINTS + 1)
        ).body()
