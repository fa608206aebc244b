"""`edge-zo plan`: predict a job's peak memory on a device profile and what would fit."""

from __future__ import annotations

import argparse

from edge_zo.commands._pending import not_yet

HELP = "predict a fine-tuning job's peak memory on a device and the largest shape that fits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder written by `edge-zo export`")
    parser.add_argument("--profile", help="device profile name (see `edge-zo profiles`) or file")
    parser.add_argument("--batch", type=int, default=16, help="examples per forward pass")
    parser.add_argument("--seq-len", type=int, help="tokens per example (default: the bundle's maximum)")
    parser.add_argument("--probe-slots", type=int, default=1, help="probes evaluated per forward call")
    parser.add_argument("--memory-budget", type=int, metavar="MiB", help="override the profile's budget")


def run(args: argparse.Namespace) -> int:
    raise not_yet("plan", "issue 7")
