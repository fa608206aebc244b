"""The fleet on Flower: a ServerApp driving rounds, a ClientApp wrapping a device's replica.

Flower's Message API (flwr >= 1.20; `pip install 'edge-zo[fleet]'`). Down, a
ConfigRecord "fleet" holds the round's dict (edge_zo/fleet/wire.py: step, key, the
aggregated losses the node lacks; on first contact the fleet's config), in a QUERY
message for the hello and a TRAIN message for a round. Up, a MetricRecord "fleet" holds
the client's step, losses and example count; a client's user error comes back as a
ConfigRecord "error". The server measures each message's bytes as serialized by Flower.

Settings are Flower's run config (`flwr run --run-config`, or [tool.flwr.app.config] in
the app's pyproject.toml) and each SuperNode's node config (`--node-config`), over the
defaults given to `server_app()` / `client_app()`. A value may name `{partition-id}` or
`{node-id}` (a simulation gives each virtual node a partition id): data and folder of
node k. `server_app` / `client_app` at module level are the app `flwr run` loads.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid, ServerApp

from edge_zo.errors import UserError
from edge_zo.fleet import wire
from edge_zo.fleet.client import ClientSettings, FleetClient
from edge_zo.fleet.local import handle
from edge_zo.fleet.server import FleetServer

SERVER_DEFAULTS: dict[str, Any] = {"out": "~/edge-zo-fleet/server", "seed": 0, "preset": "mezo", "optimizer": "",
                                   "steps": 100, "min-clients": 2, "round-timeout": 600.0, "wait-clients": 600.0}
CLIENT_DEFAULTS: dict[str, Any] = {"bundle": "", "data": "", "folder": "~/edge-zo-fleet/replica", "batch-size": 16,
                                   "checkpoint-every": 10, "threads": 0, "provider": "cpu", "template": "",
                                   "profile": "", "memory-budget": 0}
KINDS = {"hello": MessageType.QUERY, "round": MessageType.TRAIN}


def settings_of(context: Context, defaults: dict[str, Any]) -> dict[str, Any]:
    """defaults < run config < node config, with {partition-id} / {node-id} filled in."""
    values = {**defaults, **context.run_config, **context.node_config}
    fields = {"node-id": context.node_id, "partition-id": context.node_config.get("partition-id", context.node_id)}
    return {k: v.replace("{partition-id}", str(fields["partition-id"])).replace("{node-id}", str(fields["node-id"]))
            if isinstance(v, str) else v for k, v in values.items()}


# ---- the server ----------------------------------------------------------------------------

class FlowerTransport:
    """The server's transport (edge_zo/fleet/server.py) over a Flower Grid."""

    def __init__(self, grid: Grid, min_clients: int, round_timeout: float, wait_clients: float):
        self.grid, self.min_clients = grid, min_clients
        self.round_timeout, self.wait_clients = round_timeout, wait_clients
        self.sizes: dict[int, tuple[int, int]] = {}
        self.rounds = 0

    def nodes(self) -> list[int]:
        """The connected nodes, once `min_clients` are before the first round (later rounds:
        one), or once `wait_clients` seconds have passed; later rounds go on with who is there."""
        deadline = time.monotonic() + self.wait_clients
        needed = self.min_clients if self.rounds == 0 else 1
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < needed and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(self.grid.get_node_ids())
        return nodes

    def exchange(self, kind: str, payloads: dict[int, dict]) -> dict[int, dict]:
        self.rounds += 1
        messages = {node: Message(RecordDict({"fleet": ConfigRecord(payload)}), dst_node_id=node,
                                  message_type=KINDS[kind], group_id=f"{kind}-{self.rounds}")
                    for node, payload in payloads.items()}
        replies, self.sizes = {}, {}
        if not messages:
            return replies
        answers = self.grid.send_and_receive(list(messages.values()), timeout=self.round_timeout)
        # sent messages carry their ids now; a reply names the one it answers (an error
        # reply for an unreachable node comes from the SuperLink, not from that node)
        sent = {m.metadata.message_id: node for node, m in messages.items()}
        for reply in answers:
            node = sent.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            self.sizes[node] = (message_to_proto(messages[node]).ByteSize(), message_to_proto(reply).ByteSize())
            replies[node] = _unpack(reply)
        return replies


def _unpack(reply: Message) -> dict:
    if reply.has_error():
        return {"error": f"the ClientApp failed: {reply.error.reason}"}
    content = reply.content
    if "error" in content:
        return {"error": str(content["error"]["error"])}
    return dict(content["fleet"])


def server_app(defaults: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp running one fleet (edge_zo/fleet/server.py) with these default settings."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings_of(context, {**SERVER_DEFAULTS, **(defaults or {})})
        fleet = wire.Fleet.parse(s["seed"], s["preset"], s["optimizer"], s["steps"])
        transport = FlowerTransport(grid, int(s["min-clients"]), float(s["round-timeout"]), float(s["wait-clients"]))
        summary = FleetServer(s["out"], fleet).run(transport)
        print(f"edge-zo fleet: {summary['steps']} steps journaled in {s['out']}", flush=True)

    return app


# ---- the client ----------------------------------------------------------------------------

_REPLICAS: dict[str, FleetClient] = {}  # per process: folder -> its replica, kept open between rounds


def _replica(s: dict[str, Any]) -> FleetClient:
    missing = [key for key in ("bundle", "data") if not s[key]]
    if missing:
        raise UserError(f"this SuperNode has no {' or '.join(missing)}: start it with "
                        "--node-config 'bundle=\"DIR\" data=\"FILE\" folder=\"DIR\"' (docs/fleet.md)")
    settings = ClientSettings(bundle=s["bundle"], data=s["data"], folder=s["folder"], batch_size=int(s["batch-size"]),
                              checkpoint_every=int(s["checkpoint-every"]), threads=int(s["threads"]),
                              provider=s["provider"], template=s["template"], profile=s["profile"],
                              memory_budget=int(s["memory-budget"]))
    client = _REPLICAS.get(settings.folder)
    if client is None or client.settings != settings:
        client = _REPLICAS[settings.folder] = FleetClient(settings)
    return client


def _answer(kind: str, message: Message, context: Context, defaults: dict[str, Any]) -> Message:
    s = settings_of(context, {**CLIENT_DEFAULTS, **defaults})
    try:
        client = _replica(s)
    except UserError as err:
        client, reply = None, {"error": str(err)}
    if client is not None:
        reply = handle(client, kind, dict(message.content["fleet"]))
    if "error" in reply:
        return Message(RecordDict({"error": ConfigRecord(reply)}), reply_to=message)
    return Message(RecordDict({"fleet": MetricRecord(reply)}), reply_to=message)


def client_app(defaults: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp answering the fleet's hello (QUERY) and rounds (TRAIN) from a replica."""
    app = ClientApp()

    @app.query()
    def hello(message: Message, context: Context) -> Message:
        return _answer("hello", message, context, defaults or {})

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _answer("round", message, context, defaults or {})

    return app


serverapp = server_app()
clientapp = client_app()
