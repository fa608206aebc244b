"""`edge-zo finetune`: fine-tune a bundle on local data with a zeroth-order optimizer."""

from __future__ import annotations

import argparse

from edge_zo.commands._pending import not_yet

HELP = "fine-tune a bundle on local data (JSONL, CSV, TSV) with forward passes only"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder written by `edge-zo export`")
    parser.add_argument("--data", metavar="FILE", help="training data: .jsonl, .csv or .tsv")
    parser.add_argument("--eval-data", metavar="FILE", help="held-out data scored at intervals")
    parser.add_argument("--optimizer", default="zo-mopi",
                        help="zo-mopi, zo-muon, lozo, lozo-m or mezo")
    parser.add_argument("--preset", help="a named set of optimizer settings, e.g. paper-code")
    parser.add_argument("--config", metavar="FILE", help="TOML config file; key=value overrides win")
    parser.add_argument("--out", metavar="RUN", help="run folder: config, metrics, checkpoints")
    parser.add_argument("--resume", metavar="RUN", help="continue a run that stopped or was killed")
    parser.add_argument("--profile", help="device profile name or file: the job must fit it")
    parser.add_argument("--memory-budget", type=int, metavar="MiB",
                        help="memory cap in MiB; overrides the profile's")
    parser.add_argument("--seed", type=int, default=0, help="run seed: a run is a function of config and seed")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. steps=2000 optimizer.eta=1e-3")


def run(args: argparse.Namespace) -> int:
    raise not_yet("finetune", "issue 6")
