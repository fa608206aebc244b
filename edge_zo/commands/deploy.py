"""`edge-zo deploy`: write a plain inference model with a run's trained weights merged."""

from __future__ import annotations

import argparse

from edge_zo.commands._pending import not_yet

HELP = "write a plain inference model.onnx with a run's trained weights merged in"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder written by `edge-zo finetune`")
    parser.add_argument("--out", metavar="FILE", help="output model file, e.g. model.onnx")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="weight precision of the output")
    parser.add_argument("--only-if-better", metavar="DATA",
                        help="keep the existing --out model unless the new one scores higher on DATA")


def run(args: argparse.Namespace) -> int:
    raise not_yet("deploy", "issue 6")
