"""`edge-zo fleet`: a fleet of simulated devices on this machine, on Flower (docs/fleet.md).

Each virtual SuperNode k holds its own data file (the --data pattern with {partition-id}
= k) and its own replica folder OUT/client-k; the server's journal is OUT/server. Real
devices run the same apps under `flower-superlink` / `flower-supernode` / `flwr run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "fine-tune one model on a fleet of devices, exchanging seeds and losses (Flower simulation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle folder (every device holds the same one)")
    parser.add_argument("--data", required=True, metavar="PATTERN",
                        help="each device's training data; {partition-id} is the device's number 0..clients-1, "
                             "e.g. shards/part-{partition-id}.jsonl")
    parser.add_argument("--clients", type=int, default=4, help="simulated devices")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder: OUT/server (the fleet's journal), OUT/client-K (each device's replica, a run folder)")
    parser.add_argument("--optimizer", default="mezo", help="optimizer preset (any whose step is a function of keys "
                        "and losses: all of edge-zo's)")
    parser.add_argument("--steps", type=int, default=100, help="fleet steps (one round each, plus a last round)")
    parser.add_argument("--seed", type=int, default=0, help="the fleet's seed")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step on each device")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between each replica's checkpoints")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per device")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="optimizer settings, e.g. eta=1e-3 N=2")


def run(args: argparse.Namespace) -> int:
    from edge_zo.errors import UserError
    try:
        from flwr.simulation import run_simulation
    except ImportError:
        raise UserError("edge-zo fleet needs Flower with its simulation engine: "
                        "pip install 'edge-zo[fleet]'") from None
    from edge_zo.fleet import flower, wire

    if args.clients < 1:
        raise UserError(f"--clients {args.clients}: a fleet needs at least one device")
    overrides = " ".join(o.removeprefix("optimizer.") for o in args.overrides)
    wire.Fleet.parse(args.seed, args.optimizer, overrides, args.steps)  # bad settings stop here, not in a worker
    out = args.out.resolve()
    server = flower.server_app({"out": str(out / "server"), "seed": args.seed, "preset": args.optimizer,
                                "optimizer": overrides, "steps": args.steps, "min-clients": args.clients,
                                "wait-clients": 120.0})
    client = flower.client_app({"bundle": str(Path(args.bundle).resolve()), "data": str(Path(args.data).resolve()),
                                "folder": str(out / "client-{partition-id}"), "batch-size": args.batch_size,
                                "checkpoint-every": args.checkpoint_every, "threads": args.threads})
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server, client, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": min(args.clients, os.cpu_count() or 1)}})
    summary_path = out / "server" / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"the fleet stopped before its last round; {out / 'server'} keeps its journal: "
                        "run the same command again to go on")
    sys.stdout.write(summary_path.read_text())
    return 0
