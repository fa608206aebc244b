"""`edge-zo plan`: predict a job's peak memory on a device profile and what would fit.

The job is made as `finetune --profile` makes it (edge_zo/memory/plan.py, one planner):
the provider is the profile's unless --provider says otherwise, the optimizer is
--optimizer with its optimizer.KEY=VALUE values, calibrated as that optimizer steps.
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
    parser.add_argument("--provider", choices=("cpu", "cuda"),
                        help="execution provider (default: the profile's, else cpu), as finetune's --provider")
    parser.add_argument("--data", nargs="*", default=[], metavar="FILE",
                        help="the job's data files, counted in the prediction")
    parser.add_argument("--optimizer", metavar="NAME",
                        help="optimizer or preset whose state is counted and whose steps are calibrated "
                             "(default zo-mopi on a low-rank bundle, mezo on a full-rank one)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (for scripts)")
    parser.add_argument("overrides", nargs="*", metavar="optimizer.KEY=VALUE",
                        help="the optimizer's values, as finetune takes them (e.g. optimizer.N=8)")


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
    preset = args.optimizer or ("zo-mopi" if manifest.graph == "lowrank" else "mezo")
    job = planner.make_job(args.bundle, manifest, profile, preset=preset,
                           opt_config=_optimizer_config(preset, args.overrides, manifest),
                           batch=args.batch, choices=1, probe_slots=args.probe_slots,
                           seq_len=args.seq_len or manifest.max_seq_len, provider=args.provider, data=args.data)
    _check_shape(job.shape, manifest)
    budget = args.memory_budget if args.memory_budget is not None else profile.budget_mib
    plan = planner.plan_job(job, budget, profile)
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.table())
    return EXIT_OK if plan.fits else EXIT_DOES_NOT_FIT


def _optimizer_config(preset: str, overrides: list[str], manifest):
    """The optimizer's config as a run resolves it (edge_zo/runconfig.optimizer_config)."""
    from edge_zo.optim.configs import parse_overrides
    from edge_zo.runconfig import optimizer_config

    given = parse_overrides(overrides)
    other = sorted(k for k in given if not k.startswith("optimizer."))
    if other:
        raise UserError(f"{other[0]}=...: plan takes only optimizer.KEY=VALUE (the shape is --batch, --seq-len, "
                        "--probe-slots)")
    return optimizer_config(preset, {k.split(".", 1)[1]: v for k, v in given.items()}, 0, manifest.rank)


def _check_shape(shape, manifest) -> None:
    if min(shape.batch, shape.seq_len, shape.probe_slots) < 1:
        raise UserError(f"{shape.text}: batch, sequence length and probe slots must be >= 1")
    if shape.seq_len > manifest.max_seq_len:
        raise UserError(f"--seq-len {shape.seq_len} is over the bundle's max_seq_len {manifest.max_seq_len}; "
                        "re-export with a larger --max-seq-len or plan a shorter one")
    if shape.probe_slots > manifest.probe_slots:
        raise UserError(f"--probe-slots {shape.probe_slots} is over the bundle's {manifest.probe_slots}")
