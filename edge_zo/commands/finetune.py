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
                        help="optimizer or preset: zo-mopi, paper-code, zo-muon, lozo, lozo-m, mezo, loren "
                             "(default zo-mopi)")
    parser.add_argument("--template", help="built-in prompt template: sst2, rte, cb, boolq, review, copa (multiple "
                        "choice, causal-lm bundle); default review for classification; your own: template_prompt=...")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 500)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 16)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), help="execution provider (default cpu)")
    parser.add_argument("--seed", type=int, help="run seed: a run is a function of config and seed (default 0)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file; options and key=value win over it")
    parser.add_argument("--out", metavar="RUN", help="run folder: config, journal, metrics, checkpoints")
    parser.add_argument("--resume", metavar="RUN", help="continue a run that stopped or was killed "
                        "(with --profile / --memory-budget if it stopped at its budget)")
    parser.add_argument("--profile", help="device profile (see `edge-zo profiles`) or .toml file: the job "
                        "is planned against its memory budget and refused if it cannot fit")
    parser.add_argument("--memory-budget", type=int, metavar="MiB",
                        help="memory budget in MiB (overrides the profile's); a guard keeps the job inside it")
    parser.add_argument("--no-plan", action="store_true",
                        help="with a budget: skip the up-front plan (a few seconds of calibration); the guard "
                             "still holds the budget")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. steps=2000 eval_every=50 optimizer.eta=1e-3; "
                             "`edge-zo finetune --help` lists options, docs/finetune.md every key")


def run(args: argparse.Namespace) -> int:
    from edge_zo import loop, runconfig  # onnxruntime loads here, not for --help

    if args.resume:
        if args.out or args.config or args.overrides or any(getattr(args, k) is not None for k in OPTIONS):
            raise UserError("--resume RUN continues a run with its saved config; give no other options "
                            "(--profile and --memory-budget excepted)")
        run_dir = Path(args.resume)
        config = runconfig.load(run_dir, resuming=True)
    else:
        if not args.out:
            raise UserError("no run folder: pass --out RUN (or --resume RUN to continue one)")
        run_dir = Path(args.out)
        if (run_dir / runconfig.CONFIG_NAME).exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or choose another --out")
        config = runconfig.resolve(args.config, {k: getattr(args, k) for k in OPTIONS}, args.overrides)
    budget = check_budget(config, args.profile, args.memory_budget, plan=not args.no_plan)
    record = loop.finetune(config, run_dir, resume=bool(args.resume), budget=budget)
    print(json.dumps({"run": str(run_dir), **record}))
    return 0


def check_budget(config, profile_name: str | None, budget_mib: int | None, plan: bool = True):
    """The job's Budget (None without one), after planning it: a job that cannot fit is
    refused here, before anything heavy loads (the plan's calibration runs in child
    processes and is cached; docs/plan.md). The budget is not saved in the run's config."""
    from edge_zo.memory.guard import Budget
    from edge_zo.memory.plan import plan_job
    from edge_zo.memory.profiles import load_profile

    if profile_name is None and budget_mib is None:
        return None
    profile = load_profile(profile_name) if profile_name else None
    if budget_mib is not None and budget_mib <= 0:
        raise UserError(f"--memory-budget {budget_mib}: a budget is a positive number of MiB")
    budget = Budget(budget_mib if budget_mib is not None else profile.budget_mib, profile)
    if plan:
        job = plan_job(config, budget.mib, profile.threads if profile else None)  # as the Runtime will
        if not job.fits:
            raise UserError(f"refused before starting: {job.refusal()}; `edge-zo plan` shows the breakdown")
    return budget
