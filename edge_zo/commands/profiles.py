"""`edge-zo profiles`: list the built-in device profiles, or show one (or a user's file)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from edge_zo.memory.profiles import builtin_names, load_profile

HELP = "list device profiles (memory, execution provider, dtype, threads) or show one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", nargs="?",
                        help="a profile name or .toml file to show in full; omit to list all")


def run(args: argparse.Namespace) -> int:
    if args.profile:
        for key, value in asdict(load_profile(args.profile)).items():
            print(f"{key:20s} {value}")
        return 0
    print(f"{'name':24s} {'memory':>8s} {'budget':>8s}  {'EP':4s} {'dtype':5s} {'thr':>3s}  description")
    for name in builtin_names():
        p = load_profile(name)
        print(f"{p.name:24s} {p.memory_mib:>5d}MiB {p.budget_mib:>5d}MiB  {p.execution_provider:4s} "
              f"{p.dtype:5s} {p.threads:>3d}  {p.description}")
    return 0
