"""`edge-zo plan`: predict a job's peak memory on a device profile and what would fit.

The prediction model and its calibration are edge_zo/memory/plan.py (docs/plan.md).
"""

from __future__ import annotations

import argparse
import json

from edge_zo.errors import EXIT_DOES_NOT_FIT, EXIT_OK, UserError

HELP = "predict a fine-tuning job's peak memory on a device and the largest shape that fits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder written by `edge-zo export`")
    parser.add_argument("--profile", help="device profile name (see `edge-zo profiles`) or file")
    parser.add_argument("--batch", type=int, default=16, help="examples per forward pass")
    parser.add_argument("--seq-len", type=int, help="tokens per example (default: the bundle's maximum)")
    parser.add_argument("--probe-slots", type=int, default=1, help="probes evaluated per forward call")
    parser.add_argument("--memory-budget", type=int, metavar="MiB", help="override the profile's budget")
    parser.add_argument("--data", nargs="*", default=[], metavar="FILE",
                        help="the job's data files, counted in the prediction")
    parser.add_argument("--optimizer", metavar="NAME",
                        help="optimizer or preset whose state to count (default zo-mopi on a low-rank "
                             "bundle, mezo on a full-rank one)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (for scripts)")


def run(args: argparse.Namespace) -> int:
    from edge_zo.bundle import read_manifest
    from edge_zo.memory import plan as planner
    from edge_zo.memory.profiles import load_profile

    if not args.bundle:
        raise UserError("no bundle: pass --bundle DIR (a folder made by `edge-zo export`)")
    if not args.profile and args.memory_budget is None:
        raise UserError("no budget: pass --profile NAME (see `edge-zo profiles`) or --memory-budget MiB")
    if args.memory_budget is not None and args.memory_budget <= 0:
        raise UserError(f"--memory-budget {args.memory_budget}: a budget is a positive number of MiB")
    manifest = read_manifest(args.bundle)
    profile = load_profile(args.profile) if args.profile else None
    shape = planner.Shape(args.probe_slots, args.batch, args.seq_len or manifest.max_seq_len)
    _check_shape(shape, manifest)
    budget = args.memory_budget if args.memory_budget is not None else profile.budget_mib
    provider = profile.execution_provider if profile else "cpu"
    cal = planner.calibrate(args.bundle, shape, provider, profile.threads if profile else None,
                            profile=profile)
    data = planner.data_mib(args.data)
    plan = planner.make_plan(cal, manifest, shape, budget, _optimizer_mib(manifest, args.optimizer), data)
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.table())
    return EXIT_OK if plan.fits else EXIT_DOES_NOT_FIT


def _check_shape(shape, manifest) -> None:
    if min(shape.batch, shape.seq_len, shape.probe_slots) < 1:
        raise UserError(f"{shape.text}: batch, sequence length and probe slots must be >= 1")
    if shape.seq_len > manifest.max_seq_len:
        raise UserError(f"--seq-len {shape.seq_len} is over the bundle's max_seq_len {manifest.max_seq_len}; "
                        "re-export with a larger --max-seq-len or plan a shorter one")
    if shape.probe_slots > manifest.probe_slots:
        raise UserError(f"--probe-slots {shape.probe_slots} is over the bundle's {manifest.probe_slots}")


def _optimizer_mib(manifest, preset: str | None) -> float:
    """The optimizer's state; by default zo-mopi on a low-rank bundle, mezo on a full-rank one."""
    from edge_zo.memory.plan import optimizer_mib
    from edge_zo.runconfig import RunConfig

    preset = preset or ("zo-mopi" if manifest.graph == "lowrank" else "mezo")
    return optimizer_mib(manifest, RunConfig(bundle="(plan)", data="(plan)", preset=preset)
                         .optimizer_config(manifest.rank))
