"""`edge-zo finetune`: fine-tune a bundle on local data with a zeroth-order optimizer."""

from __future__ import annotations

import argparse
import signal
import dataclasses
import json
from pathlib import Path

from edge_zo.errors import Stopped, UserError, writes_to
from edge_zo.templates import registry_help

HELP = "fine-tune a bundle on local data (JSONL, CSV, TSV) with forward passes only"

# CLI option -> RunConfig field; None means "not given" so the config file can supply it.
OPTIONS = ("bundle", "data", "eval_data", "preset", "seed", "steps", "batch_size", "template", "provider")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder written by `edge-zo export` (with --resume: "
                        "where the run's bundle is now, if it moved; checked by its fingerprint)")
    parser.add_argument("--data", metavar="FILE", help="training data: .jsonl, .csv or .tsv")
    parser.add_argument("--eval-data", metavar="FILE", help="held-out data scored at intervals")
    parser.add_argument("--optimizer", "--preset", dest="preset", metavar="NAME",
                        help="optimizer or preset: zo-mopi, paper-code, zo-muon, lozo, lozo-m, mezo, loren "
                             "(default zo-mopi)")
    parser.add_argument("--template", help=f"built-in prompt template: {registry_help()}; default: the bundle's "
                        "(review-plain, the bare text, for an encoder or classifier; review for a language "
                        "model's label words); your own: template_prompt=...")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 500)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 16)")
    parser.add_argument("--provider", choices=("cpu", "cuda"),
                        help="execution provider (default: the --profile's, else cpu)")
    parser.add_argument("--seed", type=int, help="run seed: a run is a function of config and seed (default 0)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file; options and key=value win over it")
    parser.add_argument("--out", metavar="RUN", help="run folder: config, journal, metrics, checkpoints")
    parser.add_argument("--resume", metavar="RUN", help="continue a run that stopped or was killed "
                        "(with --profile / --memory-budget if it stopped at its budget; --steps, "
                        "patience=N, optimizer.eta=... may change: docs/finetune.md, resuming); a run "
                        "that finished, or that patience stopped, says so and does nothing")
    parser.add_argument("--profile", help="device profile (see `edge-zo profiles`) or .toml file: the job "
                        "runs on its execution provider (unless --provider), is planned against its memory "
                        "budget and refused if it cannot fit or its bundle's weight format is not the device's")
    parser.add_argument("--memory-budget", type=int, metavar="MiB",
                        help="memory budget in MiB (overrides the profile's); a guard keeps the job inside it")
    parser.add_argument("--no-plan", action="store_true",
                        help="with a budget: skip the up-front plan (four calibration children, seconds to minutes "
                             "on a first plan, then cached); the guard still holds the budget")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. steps=2000 eval_every=50 optimizer.eta=1e-3; "
                             "`edge-zo finetune --help` lists options, docs/finetune.md every key")


# Where a moved run's files are now (edge_zo/runpaths.py): checked against what it recorded
RESUME_PATHS = ("bundle", "data", "eval_data")

# What `--resume RUN` may change (docs/finetune.md, resuming): the run goes on from its last
# checkpoint under the new values (the journal's steps after it are redone), except for
# patience, which changes no past step (the journal is replayed; edge_zo/loop.py).
RESUME_KEYS = ("steps", "patience", "optimizer.eta", "optimizer.one_d_lr", "optimizer.eta_cov", "logit_bias_lr")


def run(args: argparse.Namespace) -> int:
    from edge_zo import loop  # onnxruntime loads here, not for --help
    from edge_zo.runfolder import RunFolder
    from edge_zo.stopping import stop_on_signals

    if args.resume:
        folder, config = RunFolder.claim_existing(Path(args.resume)), None  # the lock before any read
    else:
        if not args.out:
            raise UserError("no run folder: pass --out RUN (or --resume RUN to continue one)")
        config = _resolved_config(args)  # a bad option is refused before the folder is touched
        folder, changed = RunFolder.claim_new(Path(args.out)), {}
    try:
        with stop_on_signals() as stop, writes_to(str(folder.path), lambda: _after_disk_fault(folder)):
            if args.resume:
                config, changed = _resumed_config(folder.path, args)
            budget = check_budget(config, args.profile, args.memory_budget, plan=not args.no_plan)
            record = loop.finetune(config, folder.path, resume=bool(args.resume), budget=budget,
                                   stop=stop, changed=changed)
    except KeyboardInterrupt:  # a second signal while the first was honoured: no checkpoint
        folder.abandon()
        if not folder.started():
            raise
        raise Stopped(signal.SIGINT, f"interrupted; {folder.path}'s journal keeps every completed step: "
                      f"continue with: edge-zo finetune --resume {folder.path}") from None
    except BaseException:
        folder.abandon()
        raise
    folder.release()
    print(json.dumps({"run": str(folder.path), **record}))
    return 0


def _resolved_config(args: argparse.Namespace):
    """The run's config; with --profile the profile fills what the run leaves open (its
    execution provider), below the config file, the options and key=value."""
    from edge_zo import runconfig
    from edge_zo.memory.profiles import load_profile

    defaults = load_profile(args.profile).run_defaults() if args.profile else {}
    return runconfig.resolve(args.config, {k: getattr(args, k) for k in OPTIONS}, args.overrides, defaults)


def _resumed_config(run_dir: Path, args: argparse.Namespace):
    """The run's saved config with the `RESUME_KEYS` given; (config, {key: new value})."""
    from edge_zo import runconfig
    from edge_zo.optim.configs import parse_overrides

    others = [k for k in OPTIONS if k not in RESUME_PATHS + ("steps",) and getattr(args, k) is not None]
    if args.out or args.config or others:
        raise UserError(f"--resume RUN continues a run with its saved config; of the options only --steps, "
                        f"--profile, --memory-budget and where its files now are (--bundle, --data, --eval-data) "
                        f"apply (and key=value for {', '.join(RESUME_KEYS)})")
    given = parse_overrides(args.overrides)
    if args.steps is not None:
        given["steps"] = str(args.steps)
    refused = sorted(set(given) - set(RESUME_KEYS))
    if refused:
        raise UserError(f"--resume cannot change {refused[0]}: a run is a function of its config; only "
                        f"{', '.join(RESUME_KEYS)} may change on resume (start a new run for others)")
    # A moved run finds its files itself; given ones must be the ones it was trained on
    config = runconfig.load(run_dir, resuming=True, bundle=args.bundle,
                            data={"data": args.data, "eval_data": args.eval_data})
    whole = {key: _whole(given, key, getattr(config, key)) for key in ("steps", "patience")}
    optimizer = {**config.optimizer, **{k.split(".", 1)[1]: v for k, v in given.items() if "." in k}}
    new = dataclasses.replace(config, **whole, optimizer=optimizer)  # a bad patience is refused here
    new.optimizer_config()  # a bad value is refused here, before anything loads
    changed = {k: v for k, v in given.items() if str(_value(config, k)) != str(v)}
    return new, changed


def _whole(given: dict, key: str, default: int) -> int:
    """A whole-number key given on `--resume` (else the run's value)."""
    try:
        return int(given[key]) if key in given else default
    except ValueError:
        raise UserError(f"{key}={given[key]!r}: expected a whole number") from None


def _value(config, key: str):
    return config.optimizer.get(key.split(".", 1)[1]) if "." in key else getattr(config, key)


def _after_disk_fault(folder) -> str:
    """What to do after a failed write: resume once the run has recorded its config (its
    last complete checkpoint is intact), else start it again."""
    if folder.started():
        from edge_zo.checkpoint import latest_step

        step = latest_step(folder.path / "checkpoints")
        kept = f"from its intact checkpoint of step {step}" if step is not None else "from its journal"
        return (f"free space (or lift the limit), then continue with: edge-zo finetune --resume "
                f"{folder.path} (it goes on {kept})")
    return "free space (or lift the limit) and start the run again, or choose another --out"


def check_budget(config, profile_name: str | None, budget_mib: int | None, plan: bool = True):
    """The job's Budget (None without one), after planning it: a job that cannot fit is
    refused here, before anything heavy loads (the plan's calibration runs in child
    processes and is cached; docs/plan.md). The budget is not saved in the run's config."""
    from edge_zo.memory import plan as planner
    from edge_zo.memory.guard import Budget
    from edge_zo.memory.profiles import load_profile

    if profile_name is None and budget_mib is None:
        return None
    profile = load_profile(profile_name) if profile_name else None
    if budget_mib is not None and budget_mib <= 0:
        raise UserError(f"--memory-budget {budget_mib}: a budget is a positive number of MiB")
    budget = Budget(budget_mib if budget_mib is not None else profile.budget_mib, profile)
    job = planner.job_of_run(config, profile)  # a weight format the profile does not run ends here
    if plan:
        planned = planner.plan_job(job, budget.mib, profile)  # the job `edge-zo plan` plans
        if not planned.fits:
            raise UserError(f"refused before starting: {planned.refusal()}; `edge-zo plan` shows the breakdown")
        budget = dataclasses.replace(budget, planned_peak_mib=planned.total_mib)
    return budget
