"""A run's opening lines: what it will train, with what, where, in how much memory.

Printed (and recorded in RUN/metrics.jsonl as a "start" record) once the run's pieces are
loaded, as nanoGPT prints its config: the resolved optimizer values (defaults included;
the record keeps those that differ from the optimizer's defaults, config.json all of them),
the trained tensors and their parameter count, the execution provider the session really
got (after any fallback) and its threads, the data, and the planned peak against the
budget when the job has one. config.json holds the whole config; these are the lines a
user reads before waiting hours.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path


def summary(config, opt_config, runtime, train_rows: int, eval_rows: int, step: int, budget=None,
            logit_bias: bool = False) -> dict:
    """The "start" record of a run (or of a resumed stretch: `step` > 0); `logit_bias`: the
    bundle's bias is trained by its exact gradient (edge_zo/logit_bias.py)."""
    matrices = [m for m in runtime.manifest.matrices if not m.exact]
    dense = [m.name for m in matrices if m.dense]
    parameters = sum(math.prod(shape) for shape in runtime.shapes.values())
    return {
        "kind": "start", "step": step, "preset": config.preset, "optimizer": opt_config.name,
        "optimizer_changed": _changed(opt_config),  # config.json's optimizer_resolved has every value
        "bundle": Path(config.bundle).name, "graph": runtime.manifest.graph, "rank": runtime.manifest.rank,
        "trained_tensors": len(matrices), "dense_tensors": len(dense), "trained_parameters": parameters,
        "provider": runtime.startup["provider"], "threads": runtime.startup["intra_op_threads"],
        "train_examples": train_rows, "eval_examples": eval_rows, "batch_size": config.batch_size,
        "steps": config.steps, "seed": config.seed,
        "logit_bias_lr": config.logit_bias_lr if logit_bias else None,
        "budget_mib": budget.mib if budget else None,
        "planned_peak_mib": budget.planned_peak_mib if budget else None,
    }


def lines(record: dict, opt_config) -> list[str]:
    """The terminal's view of a "start" record, with every optimizer value."""
    values = ", ".join(f"{k} {_short(v)}" for k, v in dataclasses.asdict(opt_config).items())
    low = record["trained_tensors"] - record["dense_tensors"]
    kind = f"{low} low-rank (r {record['rank']})" if record["graph"] == "lowrank" else f"{low} full-rank"
    out = [f"run: {record['optimizer']} ({record['preset']}) from step {record['step']} of {record['steps']}, "
           f"seed {record['seed']}, batch {record['batch_size']}",
           f"run: optimizer {values}",
           f"run: trains {record['trained_tensors']} tensors ({kind}, {record['dense_tensors']} dense), "
           f"{record['trained_parameters']:,} parameters of {record['bundle']}",
           f"run: data {record['train_examples']} training examples, {record['eval_examples']} eval; "
           f"provider {record['provider']}, {record['threads']} threads"]
    if record.get("logit_bias_lr") is not None:
        out.append(f"run: and the logit bias by its exact gradient (Adam, lr {record['logit_bias_lr']:g})")
    if record["budget_mib"] is not None:
        planned = record["planned_peak_mib"]
        plan = f"planned peak {planned:.0f} MiB" if planned is not None else "not planned (--no-plan)"
        out.append(f"run: memory {plan}, budget {record['budget_mib']:.0f} MiB (the guard holds it)")
    return out


def _changed(opt_config) -> dict:
    """The optimizer values that differ from the preset's class defaults (config.json's
    `optimizer_resolved` holds all of them)."""
    defaults = type(opt_config)()
    return {f.name: getattr(opt_config, f.name) for f in dataclasses.fields(opt_config)
            if getattr(opt_config, f.name) != getattr(defaults, f.name)}


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
