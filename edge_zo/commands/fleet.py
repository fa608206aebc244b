"""`edge-zo fleet`: a fleet of simulated devices on this machine, on Flower (docs/fleet.md).

Each virtual SuperNode k holds its own data file (the --data pattern with {partition-id}
= k) and its own replica folder OUT/client-k; the server's journal is OUT/server. Real
devices run the same apps under `flower-superlink` / `flower-supernode` / `flwr run`:
`--app DIR` writes the Flower app folder that `flwr run DIR` submits, with these settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "fine-tune one model on a fleet of devices, exchanging seeds and losses (Flower simulation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="bundle folder (every device holds the same one)")
    parser.add_argument("--data", metavar="PATTERN",
                        help="each device's training data; {partition-id} is the device's number 0..clients-1, "
                             "e.g. shards/part-{partition-id}.jsonl")
    parser.add_argument("--clients", type=int, default=4, help="simulated devices")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder: OUT/server (the fleet's journal), OUT/client-K (each device's replica, a run "
                             "folder); with --app, where the server keeps the journal")
    parser.add_argument("--app", type=Path, metavar="DIR",
                        help="do not simulate: write the Flower app folder DIR (pyproject.toml) for `flwr run DIR` "
                             "on real SuperNodes, with these settings (--clients: the devices to wait for)")
    parser.add_argument("--optimizer", default="mezo", help="optimizer preset (any whose step is a function of keys "
                        "and losses: all of edge-zo's)")
    parser.add_argument("--steps", type=int, default=100, help="fleet steps (one round each, plus a last round)")
    parser.add_argument("--seed", type=int, default=0, help="the fleet's seed")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step on each device")
    parser.add_argument("--checkpoint-every", type=int, default=10,
                        help="steps between each replica's checkpoints (a ClientApp process that starts afresh "
                             "replays the steps after the newest one)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per device")
    parser.add_argument("--profile", default="", help="device profile (see `edge-zo profiles`): its memory budget "
                        "holds each device's replica, guarded as in a finetune job")
    parser.add_argument("--memory-budget", type=int, default=0, metavar="MiB",
                        help="memory budget per device in MiB (overrides the profile's; 0: the profile's or none)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="optimizer settings, e.g. eta=1e-3 N=2")


def run(args: argparse.Namespace) -> int:
    from edge_zo.errors import UserError
    from edge_zo.fleet import wire

    if args.clients < 1:
        raise UserError(f"--clients {args.clients}: a fleet needs at least one device")
    overrides = " ".join(o.removeprefix("optimizer.") for o in args.overrides)
    wire.Fleet.parse(args.seed, args.optimizer, overrides, args.steps)  # bad settings stop here, not in a worker
    out = args.out.resolve()
    server = {"out": str(out / "server"), "seed": args.seed, "preset": args.optimizer, "optimizer": overrides,
              "steps": args.steps, "min-clients": args.clients}
    client = {"batch-size": args.batch_size, "checkpoint-every": args.checkpoint_every, "threads": args.threads,
              "profile": args.profile, "memory-budget": args.memory_budget}
    if args.app:
        path = write_app(args.app, server, client)
        print(f"wrote {path}: start flower-superlink and a flower-supernode per device, then `flwr run {args.app} "
              "CONNECTION --stream` (docs/fleet.md)", file=sys.stderr)
        return 0
    missing = [flag for flag, value in (("--bundle", args.bundle), ("--data", args.data)) if not value]
    if missing:
        raise UserError(f"a simulated fleet needs {' and '.join(missing)}: the devices' bundle and data pattern")
    return simulate(args, out, server, client)


def flower_apps():
    """edge_zo.fleet.flower, or the one line that says how to install Flower."""
    from edge_zo.errors import UserError
    try:
        from edge_zo.fleet import flower
        import flwr.simulation  # noqa: F401  (the engine `edge-zo fleet` runs on: Ray)
    except ImportError as err:
        raise UserError(f"edge-zo fleet needs Flower with its simulation engine ({err.name} is missing): "
                        "pip install 'edge-zo[fleet]'") from None
    return flower


def simulate(args: argparse.Namespace, out: Path, server: dict, client: dict) -> int:
    from edge_zo.errors import UserError
    from flwr.simulation import run_simulation

    flower = flower_apps()

    server_app = flower.server_app({**server, "wait-clients": 120.0})
    client_app = flower.client_app({**client, "bundle": str(Path(args.bundle).resolve()),
                                    "data": str(Path(args.data).resolve()),
                                    "folder": str(out / "client-{partition-id}")})
    (out / "server" / "summary.json").unlink(missing_ok=True)  # written again once the last round is done
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server_app, client_app, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": min(args.clients, os.cpu_count() or 1)}})
    summary_path = out / "server" / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"the fleet stopped before its last round; {out / 'server'} keeps its journal: "
                        "run the same command again to go on")
    sys.stdout.write(summary_path.read_text())
    return 0


APP = """\
# The edge-zo fleet as a Flower app (docs/fleet.md), written by `edge-zo fleet --app`.
# Every device needs edge-zo installed ('edge-zo[fleet]'); its bundle, data and replica
# folder come from its SuperNode's --node-config, which overrides the values below.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edge-zo-fleet"
version = "1.0.0"
description = "edge-zo fleet fine-tuning: seeds and losses on the wire"
license = "Apache-2.0"
dependencies = ["edge-zo[fleet]"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edge-zo"

[tool.flwr.app.components]
serverapp = "edge_zo.fleet.flower:serverapp"
clientapp = "edge_zo.fleet.flower:clientapp"

[tool.flwr.app.config]
"""


def write_app(folder: Path, server: dict, client: dict) -> Path:
    """DIR/pyproject.toml: the app's components and every setting (`flwr run --run-config`
    overrides them; a SuperNode's --node-config overrides them for that device)."""
    app = flower_apps()
    values = {**app.SERVER_DEFAULTS, **server, **app.CLIENT_DEFAULTS, **client}
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(APP + "\n".join(lines) + "\n")
    return path
