"""A fleet in one process: clients called directly, messages through JSON like on a wire.

Used by the tests and by benchmarks/fleet_accuracy.py; Flower's transport is flower.py.
`handle` is shared by both: a client's user error becomes an {"error": ...} reply, so the
server leaves that client out instead of stopping.
"""

from __future__ import annotations

import json

from edge_zo.errors import UserError
from edge_zo.fleet.client import FleetClient


def handle(client: FleetClient, kind: str, payload: dict) -> dict:
    """A client's answer to one message ("hello" or "round")."""
    try:
        return client.hello(payload) if kind == "hello" else client.round(payload)
    except UserError as err:
        return {"error": str(err)}


class LocalTransport:
    """node id -> FleetClient; nodes in `away` neither appear nor answer, and a node in
    `silent` receives a round but its answer is lost (a client killed mid-round)."""

    def __init__(self, clients: dict[int, FleetClient]):
        self.clients, self.away, self.silent = dict(clients), set(), set()
        self.sizes: dict[int, tuple[int, int]] = {}

    def nodes(self) -> list[int]:
        return [n for n in self.clients if n not in self.away]

    def exchange(self, kind: str, payloads: dict[int, dict]) -> dict[int, dict]:
        replies, self.sizes = {}, {}
        for node, payload in payloads.items():
            down = json.dumps(payload)
            reply = handle(self.clients[node], kind, json.loads(down))
            if node in self.silent:
                continue
            up = json.dumps(reply)
            self.sizes[node] = (len(down), len(up))
            replies[node] = json.loads(up)
        return replies
