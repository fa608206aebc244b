"""Checkpoints of a run, and resuming one: snapshot, restore, replay (DESIGN.md section 6).

A snapshot holds the weights (`W/NAME`, the logit bias among them), the optimizer's state
(`opt/KEY`) and the logit bias's Adam state (`bias/KEY`); the loop writes one every
checkpoint_every steps, at a stop and as the best-dev snapshot. Resuming loads the newest
intact one and replays the journaled steps after it with their recorded losses (and, for
the bias, their recorded gradients) instead of forward passes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edge_zo import checkpoint
from edge_zo.errors import UserError
from edge_zo.logit_bias import LogitBias
from edge_zo.metrics import Clock
from edge_zo.optim import ConfigError, optimizer_for
from edge_zo.rng import Key
from edge_zo.runconfig import RunConfig
from edge_zo.runtime import Runtime


def snapshot(folder: Path, step: int, runtime: Runtime, state, progress: dict, clock: Clock,
             bias: LogitBias | None = None) -> None:
    """Write checkpoint `step` into `folder`. With `bias` (RUN/checkpoints/ only: what a
    resume replays from) its Adam state goes in too, and the gradients no kept checkpoint
    needs any more are dropped."""
    arrays = {f"W/{name}": w for name, w in runtime.export_weights(copy=False).items()}
    arrays.update({f"opt/{k}": v for k, v in state.to_arrays().items()})
    arrays.update({f"bias/{k}": v for k, v in (bias.to_arrays() if bias else {}).items()})
    meta = {**progress, "step": step, "train_s": clock.train_s, "eval_s": clock.eval_s}
    checkpoint.save(folder, step, arrays, meta)
    if bias is not None:  # the older kept checkpoint is the fallback when the newest is damaged
        bias.forget_before(min(int(path.stem.split("-")[1]) for path in folder.glob("ckpt-*.npz")))


def load_snapshot(ckpt: checkpoint.Checkpoint, runtime: Runtime, config: RunConfig):
    """Put a snapshot's weights into the runtime; return its optimizer state, under the
    run's optimizer config (which differs from the saved one after a `--resume` override)."""
    runtime.load_weights({k[2:]: v for k, v in ckpt.arrays.items() if k.startswith("W/")})
    opt_config = config.optimizer_config(runtime.manifest.rank)
    try:
        state = optimizer_for(opt_config).state_cls.from_arrays(
            {k[4:]: v for k, v in ckpt.arrays.items() if k.startswith("opt/")})
    except ConfigError as err:
        raise ConfigError(f"{ckpt.path}: {err}") from None
    return state if state.config == opt_config else dataclasses.replace(state, config=opt_config)


def resume_advice(run_dir: Path) -> str:
    """How to go on after a divergence, true whether or not a checkpoint exists."""
    ckpt = checkpoint.latest_step(run_dir / "checkpoints")
    where = f"the last checkpoint (step {ckpt})" if ckpt is not None else "step 0 (no checkpoint yet)"
    return (f"Continue from {where} with a smaller value: edge-zo finetune --resume {run_dir} "
            "optimizer.eta=SMALLER (docs/finetune.md, resuming)")


def restore(run_dir: Path, runtime: Runtime, config: RunConfig, state, progress: dict,
            bias: LogitBias | None = None):
    """(state, whether a checkpoint was found) from the newest intact checkpoint; the
    bias's Adam state into `bias`."""
    ckpt = checkpoint.load_latest(run_dir / "checkpoints")
    best = checkpoint.load_latest(run_dir / "best")
    if ckpt is None:
        return state, False  # killed before the first checkpoint: replay from the start
    progress.update({k: ckpt.meta[k] for k in ("step", "forward_passes", "train_s", "eval_s")})
    # The count as of the checkpoint: the evaluations after it are redone as it is replayed.
    # A checkpoint from before the count: its evaluations done, the best best/'s, the count 0.
    progress["since_best"] = ckpt.meta.get("since_best", 0)
    progress["evaluated_at"] = ckpt.meta.get("evaluated_at", ckpt.step if ckpt.step else -1)
    if "evaluated_at" in ckpt.meta:
        progress["best"] = ckpt.meta["best"]
    elif best is not None:
        progress["best"] = best.meta["best"]
    if bias is not None:
        bias.load({k[5:]: v for k, v in ckpt.arrays.items() if k.startswith("bias/")})
    return load_snapshot(ckpt, runtime, config), True


class ReplayOracle:
    """The runtime, except that losses come from the journal instead of forward passes."""

    def __init__(self, runtime: Runtime, losses: list[float]):
        self._runtime, self._losses = runtime, list(losses)

    def __getattr__(self, name: str):
        # Everything that changes the weights (set_sketch, fold, add_noise, add) must run.
        return getattr(self._runtime, name)

    def losses(self, probes) -> np.ndarray:
        if len(probes) > len(self._losses):
            raise UserError("journal entry has fewer losses than the step asks for: "
                            "the run's config or edge-zo version changed since it was written")
        taken, self._losses = self._losses[:len(probes)], self._losses[len(probes):]
        return np.asarray(taken, dtype=np.float32)


def replay(journal, runtime: Runtime, opt, state, root: Key, progress: dict, settle=lambda state: False,
           bias: LogitBias | None = None):
    """The journaled steps after the restored one, with their recorded losses (and the
    bias's recorded gradients); `settle(state)`, at each step reached (the first included),
    redoes the evaluation due there and says whether patience stops the run at it (then the
    journal's later steps are dropped)."""
    stopped = settle(state)
    for record in journal.read(after_step=progress["step"] - 1):
        if stopped or record["step"] != progress["step"]:
            break  # a gap: nothing after it can be trusted
        g = bias.recorded(record["step"]) if bias is not None else None
        if bias is not None and g is None:
            break  # its gradient is missing or damaged: the step is redone with its forwards
        state, info = opt.step(state, ReplayOracle(runtime, record["losses"]), root.child("step", record["step"]))
        if bias is not None:
            bias.apply(runtime, g)
        progress["step"] += 1
        progress["forward_passes"] += info.forward_passes
        stopped = settle(state)
    journal.truncate_after(progress["step"] - 1)
    return state
