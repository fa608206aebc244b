"""`edge-zo finetune`: fine-tune a bundle on local data with a zeroth-order optimizer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_zo.errors import UserError

HELP = "fine-tune a bundle on local data (JSONL, CSV, TSV) with forward passes only"

# CLI option -> RunConfig field; None means "not given" so the config file can supply it.
OPTIONS = ("bundle", "data", "eval_data", "preset", "seed", "steps", "batch_size", "template", "provider")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder written by `edge-zo export`")
    parser.add_argument("--data", metavar="FILE", help="training data: .jsonl, .csv or .tsv")
    parser.add_argument("--eval-data", metavar="FILE", help="held-out data scored at intervals")
    parser.add_argument("--optimizer", "--preset", dest="preset", metavar="NAME",
                        help="optimizer or preset: zo-mopi, paper-code, zo-muon, lozo, lozo-m, mezo "
                             "(default zo-mopi)")
    parser.add_argument("--template", help="prompt template for classification data (default review)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 500)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 16)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), help="execution provider (default cpu)")
    parser.add_argument("--seed", type=int, help="run seed: a run is a function of config and seed (default 0)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file; options and key=value win over it")
    parser.add_argument("--out", metavar="RUN", help="run folder: config, journal, metrics, checkpoints")
    parser.add_argument("--resume", metavar="RUN", help="continue a run that stopped or was killed")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. steps=2000 eval_every=50 optimizer.eta=1e-3; "
                             "`edge-zo finetune --help` lists options, docs/finetune.md every key")


def run(args: argparse.Namespace) -> int:
    from edge_zo import loop, runconfig  # onnxruntime loads here, not for --help

    if args.resume:
        if args.out or args.config or args.overrides or any(getattr(args, k) is not None for k in OPTIONS):
            raise UserError("--resume RUN continues a run with its saved config; give no other options")
        run_dir = Path(args.resume)
        config = runconfig.load(run_dir)
    else:
        if not args.out:
            raise UserError("no run folder: pass --out RUN (or --resume RUN to continue one)")
        run_dir = Path(args.out)
        if (run_dir / runconfig.CONFIG_NAME).exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or choose another --out")
        config = runconfig.resolve(args.config, {k: getattr(args, k) for k in OPTIONS}, args.overrides)
    record = loop.finetune(config, run_dir, resume=bool(args.resume))
    print(json.dumps({"run": str(run_dir), **record}))
    return 0
