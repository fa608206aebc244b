"""How a fine-tuning run ends: its evaluation schedule, patience (early stopping) and the
dev verdict (issue 17: on most measured task cells the steps after the linear probe never
improved the dev score, and the job kept a device busy for hours).

The count that patience tests lives in the loop's `progress` dict ("since_best":
evaluations in a row that did not improve the best dev score; "evaluated_at": the last
step whose evaluation the count includes), so checkpoints and best/ snapshots carry it and
a resumed run stops where the uninterrupted one did. Old checkpoints without the keys
resume with a count of 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_zo.notices import announce


def eval_due(config, step: int) -> bool:
    """Whether `step` is an evaluation inside the run (step 0 and every eval_every; the last
    iterate's, at `config.steps`, is the end's)."""
    return step == 0 or bool(config.eval_every) and step % config.eval_every == 0 and step < config.steps


def score(record: dict) -> float:
    """The dev score an evaluation record is ranked by: accuracy, else minus the loss."""
    return record.get("eval_acc", -record.get("eval_loss", np.inf))


def count(progress: dict, step: int, value: float) -> bool:
    """Fold the evaluation at `step` into the best score and the patience count; whether it
    improved the best (strictly: a tie does not)."""
    improved = value > progress["best"]
    progress["best"] = value if improved else progress["best"]
    progress["since_best"] = 0 if improved else progress.get("since_best", 0) + 1
    progress["evaluated_at"] = step
    return improved


def exhausted(config, progress: dict) -> bool:
    """Patience is on and that many evaluations in a row did not improve the best."""
    return bool(config.patience) and progress.get("since_best", 0) >= config.patience


def finished(config, progress: dict) -> bool:
    """Nothing is left to step: the last step is reached, or patience ran out."""
    return progress["step"] >= config.steps or exhausted(config, progress)


def dev_verdict(records: list[dict], run_dir: Path) -> dict:
    """Whether the steps improved the dev score on the step-0 weights (the linear probe's
    where there is one), in one line: a job that did not help must say so."""
    evals = [r for r in records if r.get("kind") == "eval" and ("eval_acc" in r or "eval_loss" in r)]
    key, sign = ("eval_acc", 1.0) if "eval_acc" in evals[0] else ("eval_loss", -1.0)
    start, best = evals[0], max(evals, key=lambda r: (sign * r[key], -r["step"]))
    improved = best["step"] > 0 and sign * (best[key] - start[key]) > 0
    if improved:
        message = (f"dev {key[5:]} {start[key]:.4f} at step 0 -> {best[key]:.4f} at step {best['step']}: "
                   f"{run_dir / 'best'} holds that snapshot")
    else:
        message = (f"dev {key[5:]} did not improve on step 0's {start[key]:.4f}: {run_dir / 'best'} holds the "
                   "step-0 weights, and `edge-zo deploy --only-if-better` keeps a deployed model as it was")
    return {"improved": improved, "start": start[key], "best": best[key], "best_step": best["step"],
            "metric": key, "message": message}


def early_stop(config, progress: dict, verdict: dict, step: int) -> dict:
    """The "early_stop" record of a run that patience stopped at `step`, with its one line
    (which the verdict's line follows)."""
    count = progress.get("since_best", 0)
    message = (f"stopped early at step {step} of {config.steps}: {count} evaluations in a row did not improve "
               f"the best dev {verdict['metric'][5:]} ({verdict['best']:.4f} at step {verdict['best_step']}; "
               f"patience={config.patience})")
    return {"kind": "early_stop", "step": step, "steps": config.steps, "patience": config.patience,
            "evaluations_without_improvement": count, "best_step": verdict["best_step"],
            "best": verdict["best"], "message": message}


def nothing_to_do(config, progress: dict, run_dir: Path) -> str:
    """The one line of `--resume` on a run that has finished (its steps done, or stopped by
    patience): what would make it go on."""
    if exhausted(config, progress) and progress["step"] < config.steps:
        why = (f"stopped early by patience={config.patience} after {progress['since_best']} evaluations "
               "without improvement")
        more = f"patience=N (more than {progress['since_best']}) or patience=0"
    else:
        why, more = f"all {config.steps} steps done", "steps=N (more)"
    return (f"{run_dir} finished at step {progress['step']} ({why}): nothing to do; to go on: "
            f"edge-zo finetune --resume {run_dir} {more}")


# ---- the end of a run, and --resume of an ended one --------------------------------

def end_records(config, progress: dict, metrics, run_dir: Path, last: dict,
                end: int) -> dict:
    """The verdict (and early_stop) records of a run that reached its end, each written once
    (a run killed while writing them writes the missing ones on resume), their lines said;
    the result: the last evaluation, and whether patience stopped the run."""
    records = metrics.read()
    stopped = end < config.steps
    have = {r["kind"] for r in records if r.get("step") == end}
    if last:
        judged = dev_verdict(records, run_dir)
        if stopped:  # one line: why it ended where it did, then what it achieved
            stop = early_stop(config, progress, judged, end)
            judged.update(stopped_early=True, stop_step=end, message=f"{stop['message']}; {judged['message']}")
        if "verdict" not in have:
            metrics.write({"kind": "verdict", "step": end, **judged})
        if stopped and "early_stop" not in have:
            metrics.write(stop)
        tqdm.write(judged["message"], file=sys.stderr)  # stdout ends in the JSON record
    metrics.mirror.close()
    return {**last, "stopped_early": stopped, "step": end} if config.patience else last


def recorded_eval(records: list[dict], step: int) -> dict:
    """The evaluation record of `step` in the run's metrics ({} if none)."""
    return next((r for r in reversed(records) if r.get("kind") == "eval" and r.get("step") == step), {})


def ended(config, progress: dict, records: list[dict], evals: bool) -> bool:
    """A restored run has nothing left to do: it is finished, evaluated and judged."""
    judged = any(r.get("kind") == "verdict" and r.get("step") == progress["step"] for r in records)
    return finished(config, progress) and (not evals or judged)


def said_finished(config, progress: dict, metrics, run_dir: Path) -> dict:
    """`--resume` of a finished run: one line, no step, no evaluation; the result is its
    last evaluation's."""
    announce(nothing_to_do(config, progress, run_dir))
    last = recorded_eval(metrics.read(), progress["step"])
    return {**last, "stopped_early": progress["step"] < config.steps, "step": progress["step"]} \
        if config.patience else last
