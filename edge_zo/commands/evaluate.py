"""`edge-zo eval`: accuracy of a bundle, or of a run's trained weights, on labelled data."""

from __future__ import annotations

import argparse

from edge_zo.commands._pending import not_yet

HELP = "score a bundle (or a run's trained weights) on labelled data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder written by `edge-zo export`")
    parser.add_argument("--run", metavar="RUN", help="run folder whose weights to score (default: the bundle's)")
    parser.add_argument("--data", metavar="FILE", help="labelled data: .jsonl, .csv or .tsv")
    parser.add_argument("--weights", choices=("best", "last"), default="best",
                        help="which of the run's weights: best on dev, or the last iterate")


def run(args: argparse.Namespace) -> int:
    raise not_yet("eval", "issue 6")
