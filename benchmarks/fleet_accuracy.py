"""Fleet vs one device vs each device alone, at matched total forwards (docs/fleet.md).

K devices hold label-skewed (non-IID) slices of the training set: the rows sorted by
label, cut into K contiguous slices. Three ways to spend the same forwards:
  fleet   K devices, S steps, each step K x P forwards (P probes a device)
  pooled  one device holding all the rows, K*S steps
  alone   each device on its own slice, K*S steps (its own accuracy, K numbers)
Each is run by the fleet's own code in one process (edge_zo/fleet/local.py: the math of
the Flower fleet; a fleet of one is a finetune run, tests/fleet/test_mechanism.py), and
scored on the test file. Writes benchmarks/results/fleet_accuracy[-tiny].json.

    python benchmarks/fleet_accuracy.py --tiny                      # tiny model, seconds
    python benchmarks/fleet_accuracy.py --bundle B --train ../shared/data/sst2/train.tsv \\
        --test ../shared/data/sst2/dev.tsv --clients 4 --steps 250 --optimizer mezo eta=1e-6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from edge_zo.data import load_tokenizer  # noqa: E402
from edge_zo.fleet import wire  # noqa: E402
from edge_zo.fleet.client import ClientSettings, FleetClient  # noqa: E402
from edge_zo.fleet.local import LocalTransport  # noqa: E402
from edge_zo.fleet.server import FleetServer  # noqa: E402
from edge_zo.loop import evaluate, load_examples, template_for  # noqa: E402
from edge_zo.readers import read_rows  # noqa: E402


def label_skewed(rows: list[dict], k: int) -> list[list[dict]]:
    ordered = sorted(rows, key=lambda r: str(r["label"]))
    size = len(ordered) // k
    return [ordered[i * size:(i + 1) * size] for i in range(k)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_fleet(work: Path, name: str, shards: list[Path], args, steps: int) -> list[FleetClient]:
    fleet = wire.Fleet.parse(args.seed, args.optimizer, " ".join(args.overrides), steps)
    clients = {i + 1: FleetClient(ClientSettings(str(args.bundle), str(s), str(work / name / f"client-{i}"),
                                                 batch_size=args.batch_size, checkpoint_every=steps,
                                                 template=args.template))
               for i, s in enumerate(shards)}
    transport = LocalTransport(clients)
    FleetServer(work / name / "server", fleet, say=lambda m: None).run(transport)
    return list(clients.values())


def accuracy(client: FleetClient, test: str) -> float:
    manifest = client.manifest
    examples = load_examples(client.config, test, manifest, template_for(client.config, manifest))
    tokenizer = load_tokenizer(client.config.bundle, manifest)
    record = evaluate(client.runtime, client.state, examples, tokenizer, manifest, client.config.batch_size)
    return record.get("eval_acc", -record.get("eval_loss", 0.0))


def tiny_inputs(work: Path, args) -> None:
    from fleet.conftest import rows
    from runtime.fixtures import build
    build(work / "bundle", graph="fullrank", max_seq_len=16)
    args.bundle = work / "bundle"
    args.train = write_jsonl(work / "train.jsonl", rows(0.5, 96, 0))
    args.test = write_jsonl(work / "test.jsonl", rows(0.5, 48, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny test model and synthetic rows")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--train", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("--template", default="")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="fleet steps S (pooled and alone run K*S)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--optimizer", default="mezo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for the slices and runs (default: a new temp one)")
    p.add_argument("--out", type=Path, default=None, help="the JSON (default: benchmarks/results/)")
    p.add_argument("overrides", nargs="*", default=["eta=1e-2", "mu=1e-2"])
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edge-zo-fleet-acc-"))
    if args.tiny:
        tiny_inputs(work, args)
    rows = [row for _, row, _ in read_rows(str(args.train)) if row is not None]
    shards = [write_jsonl(work / f"shard-{i}.jsonl", s) for i, s in enumerate(label_skewed(rows, args.clients))]
    pooled_file = write_jsonl(work / "pooled.jsonl", [r for s in label_skewed(rows, args.clients) for r in s])
    k, S = args.clients, args.steps
    load = os.getloadavg()
    fleet = run_fleet(work, "fleet", shards, args, S)
    pooled = run_fleet(work, "pooled", [pooled_file], args, k * S)
    alone = [run_fleet(work, f"alone-{i}", [s], args, k * S)[0] for i, s in enumerate(shards)]
    result = {"clients": k, "fleet_steps": S, "single_steps": k * S, "optimizer": args.optimizer,
              "overrides": args.overrides, "batch_size": args.batch_size,
              "forwards": {"fleet": sum(c.progress["forward_passes"] for c in fleet),
                           "pooled": pooled[0].progress["forward_passes"],
                           "alone": alone[0].progress["forward_passes"]},
              "fleet": accuracy(fleet[0], str(args.test)), "pooled": accuracy(pooled[0], str(args.test)),
              "alone": [accuracy(c, str(args.test)) for c in alone], "loadavg": [load, os.getloadavg()]}
    out = args.out or REPO / "benchmarks" / "results" / f"fleet_accuracy{'-tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
