"""The fleet server: drives rounds, averages the clients' losses, keeps the fleet's journal.

It holds no model. Round t sends each client the aggregated losses it lacks and step t's
key; the clients that answer with their losses of step t's probes are averaged (weighted
by examples, edge_zo/fleet/wire.py) into step t's entry of journal.jsonl, fsynced
before the round counts, the same journal a finetune run keeps (edge_zo/checkpoint.py).
Killed (even by kill -9) and started again on the same folder, the server reads its
journal and goes on at the next step; clients are greeted again and told what they lack.

A client that does not answer a round is dropped from it (its losses are not waited
for past the transport's timeout); the round completes with the others. Round `steps`
only delivers the last step, so every replica ends on the same weights; a server started
again on a finished folder runs that round again, for clients that were away.

Transports (Flower's Grid, or direct calls in the tests) implement:
    nodes() -> [node ids]; exchange(kind, {node: payload}) -> {node: reply}
where kind is "hello" or "round" and a reply is a dict (wire.py) or {"error": message};
`sizes` (optional) maps node -> (bytes down, bytes up) of the last exchange.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Protocol

from edge_zo import checkpoint
from edge_zo.errors import FleetError
from edge_zo.fleet import wire

FLEET_NAME = "fleet.json"


class Transport(Protocol):
    def nodes(self) -> list[int]: ...

    def exchange(self, kind: str, payloads: dict[int, dict]) -> dict[int, dict]: ...


def _stderr(message: str) -> None:
    print(f"edge-zo fleet: {message}", file=sys.stderr, flush=True)


class FleetServer:
    """The rounds of one fleet, from its folder (fleet.json, journal.jsonl, wire.jsonl)."""

    def __init__(self, folder: str | Path, fleet: wire.Fleet, max_empty_rounds: int = 3,
                 say: Callable[[str], None] = _stderr):
        self.folder, self.fleet, self.say = Path(folder).expanduser(), fleet, say
        self.max_empty_rounds = max_empty_rounds
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_fleet()
        self.journal = checkpoint.Journal(self.folder / "journal.jsonl")
        self.history = self._read_history()
        self.known: dict[int, int] = {}  # node -> the step it has reached (steps before it applied)
        self.sizes: dict = {}  # the replicas' weights and LoRA sizes, from the first hello
        self.refused: set[int] = set()  # nodes of another model or run: not greeted again

    def _check_fleet(self) -> None:
        path = self.folder / FLEET_NAME
        if path.is_file():
            saved = wire.Fleet.from_json(path.read_text())
            if saved != self.fleet:
                raise FleetError(f"{self.folder} holds the fleet {saved.to_json()}, not {self.fleet.to_json()}: "
                                 "start it with the same settings, or give a new folder")
        else:
            checkpoint.atomic_write(path, self.fleet.to_json().encode())

    def _read_history(self) -> list[list[float]]:
        records = self.journal.read()
        history = []
        for record in records:
            if record["step"] != len(history):
                break  # a gap: nothing after it can be trusted
            history.append(record["losses"])
        self.journal.truncate_after(len(history) - 1)  # and cut a line torn by a kill
        return history

    @property
    def step(self) -> int:
        return len(self.history)

    # ---- rounds ---------------------------------------------------------------------------

    def run(self, transport: Transport) -> dict:
        """Rounds until every step is journaled and delivered; returns a summary."""
        empty = 0
        while True:
            t = self.step
            contributions = self.round(transport, t)
            if t >= self.fleet.steps:
                break
            if not contributions:
                empty += 1
                if empty >= self.max_empty_rounds:
                    raise FleetError(f"no client answered step {t} in {empty} rounds; the journal "
                                     f"{self.folder / 'journal.jsonl'} keeps the {t} steps done: start the "
                                     "server again once clients are up")
                continue
            empty = 0
            self.record(t, contributions)
        self.journal.close()
        summary = {"steps": self.step, "clients": sorted(self.known), **self.sizes, **wire_means(self.folder)}
        checkpoint.atomic_write(self.folder / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    def greet(self, transport: Transport, nodes: list[int]) -> None:
        """First contact: the fleet's config down, each node's step (and model size) up."""
        replies = transport.exchange("hello", {n: {"fleet": self.fleet.to_json()} for n in nodes})
        for node in nodes:
            reply = replies.get(node)
            if reply is None or "error" in reply:
                self.say(f"node {node} left out: {reply['error'] if reply else 'no answer to hello'}")
            elif not self._same_bundle(int(reply.get("bundle_id", -1))):
                self.say(f"node {node} left out: its bundle is not the fleet's (another model or export; "
                         "every device needs the same bundle folder)")
                self.refused.add(node)
            elif int(reply["step"]) > self.step:
                self.say(f"node {node} left out: its replica is at step {reply['step']}, past this server's "
                         f"journal ({self.step} steps): it belongs to another run of the fleet")
                self.refused.add(node)
            else:
                self.known[node] = int(reply["step"])
                if not self.sizes:
                    self.sizes = {k: int(reply[k]) for k in ("weights_bytes", "lora_bytes") if k in reply}

    def _same_bundle(self, bundle_id: int) -> bool:
        """The first device's bundle is the fleet's (kept in the folder across restarts)."""
        path = self.folder / "bundle_id"
        if not path.is_file():
            checkpoint.atomic_write(path, str(bundle_id).encode())
        return int(path.read_text()) == bundle_id

    def round(self, transport: Transport, t: int) -> dict[int, dict]:
        """Round t: every known node gets what it lacks and step t's key; returns the probes."""
        nodes = list(transport.nodes())
        self.greet(transport, [n for n in nodes if n not in self.known and n not in self.refused])
        payloads = {n: wire.round_payload(self.fleet.seed, t, self.known[n], self.history)
                    for n in nodes if n in self.known}
        replies = transport.exchange("round", payloads)
        contributions = {}
        for node in payloads:
            reply = replies.get(node)
            if reply is None:  # killed mid-round, or too slow: dropped from this round
                self.say(f"step {t}: node {node} did not answer; the round goes on without it")
            elif "error" in reply:
                self.say(f"step {t}: node {node} left out: {reply['error']}")
                self.known.pop(node, None)
            else:
                self.known[node] = int(reply["step"])
                if "losses" in reply and int(reply["step"]) == t:
                    contributions[node] = reply
        self._log_wire(t, payloads, contributions, getattr(transport, "sizes", {}))
        return contributions

    def record(self, t: int, contributions: dict[int, dict]) -> None:
        """Average the probes of step t and journal them: from here the step counts."""
        width = len(next(iter(contributions.values()))["losses"])
        odd = [n for n, r in contributions.items() if len(r["losses"]) != width]
        for node in odd:  # a client under another optimizer config: never averaged in
            self.say(f"step {t}: node {node} sent {len(contributions[node]['losses'])} losses, not {width}")
            contributions.pop(node)
        losses, examples = wire.aggregate(contributions)
        self.journal.append({"step": t, "losses": losses, "clients": len(contributions), "examples": examples})
        self.history.append(losses)

    def _log_wire(self, t: int, payloads: dict, contributions: dict, sizes: dict) -> None:
        record = {"step": t, "sent": len(payloads), "answered": len(contributions)}
        if sizes:
            down = [d for d, _ in sizes.values()]
            up = [u for _, u in sizes.values()]
            record.update(down_bytes=max(down), up_bytes=max(up) if up else 0)
        with open(self.folder / "wire.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def wire_means(folder: Path) -> dict:
    """Bytes per round per client, down and up, over the rounds that measured them (the
    largest client's message: a round's own; a catch-up round carries more losses)."""
    path = folder / "wire.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    measured = [r for r in records if "down_bytes" in r]
    if not measured:
        return {}
    return {"down_bytes_per_round": sum(r["down_bytes"] for r in measured) / len(measured),
            "up_bytes_per_round": sum(r["up_bytes"] for r in measured) / len(measured),
            "rounds_measured": len(measured)}
