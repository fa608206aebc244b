"""What every optimizer shares: state, step info, the divergence guard (probes and the Oracle
they are evaluated by live in edge_zo/probes.py and are re-exported here).

An optimizer never holds the model. The weights live in the runtime (ONNX Runtime
buffers); the optimizer holds its own state (low-rank, except LOREN's momentum) and
talks to the runtime through an `Oracle`: "give me the losses of these probes", "bind
this sketch", "fold this update into the weights", "add this much of the noise of this
key", "add this dense update". Each optimizer module exposes two pure-ish functions,
optax style:

    state = init(shapes, config, key)
    state, info = step(state, oracle, key)      # `key` = run_key.child("step", t)

`step` never mutates its input state (arrays are replaced, not written into), so a
state can be checkpointed, compared or replayed. States serialize to flat dicts of
numpy arrays (`to_arrays` / `from_arrays`) that round-trip bit-exactly through np.savez.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from edge_zo.errors import ConfigError, DivergedError  # noqa: F401  (re-exported: the optimizers import them from here)
from edge_zo.probes import LowRankProbe, NoiseProbe, Oracle, Probe  # noqa: F401  (re-exported)
from edge_zo.rng import Key

Arrays = dict[str, np.ndarray]
# How an optimizer state is laid out in a checkpoint (State.to_arrays): 1 names the
# optimizer by its registry name; 0 (no "__format__") named the state and config classes.
STATE_FORMAT = 1




# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class StepInfo:
    """What the journal and the metrics need from one step."""

    step: int  # index of the step just taken (state.step before it)
    forward_passes: int  # losses evaluated this step
    losses: np.ndarray  # float32, one per probe, in probe order
    projected_grads: np.ndarray  # float64 scalars g_i, one per probe direction
    key: Key  # the step key: with the config it regenerates every draw of the step
    lr: float  # η used for this step's update
    redraw: bool = False  # a new sketch (A, or LOZO's V) was drawn this step
    fold: bool = False  # the accumulated update C was folded into W this step


# ------------------------------------------------------------------------------ state


@dataclass(frozen=True, eq=False)
class State:
    """Base of every optimizer state: the config, the step counter, named arrays.

    Subclasses add fields that are ints, floats or dicts name -> array. `to_arrays`
    flattens them ("step", "M/layer.0.q_proj", ...) plus the config as JSON, so a state
    is saved with np.savez (no pickle) and restored bit-exactly by `from_arrays`.
    """

    config: typing.Any
    step: int
    # Mean probe loss of the first step: the reference of the divergence guard.
    loss0: float = field(default=math.nan, kw_only=True)

    def to_arrays(self) -> Arrays:
        # Named by the registry's optimizer name (stable), not by class names (a rename would
        # break every resume); STATE_FORMAT says how to read the rest.
        out: Arrays = {"__format__": np.array(STATE_FORMAT), "__optimizer__": np.array(self.config.name)}
        out["config"] = np.array(json.dumps(dataclasses.asdict(self.config), sort_keys=True))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "config":
                continue
            if isinstance(value, dict):
                # "field/" marks the dict even when it is empty
                out[f"{f.name}/"] = np.zeros(0, np.int8)
                out.update({f"{f.name}/{name}": a for name, a in value.items()})
            else:
                out[f.name] = np.array(value)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]):
        config_cls = _saved_config_class(cls, arrays)
        kwargs = {"config": config_cls(**_tuples(json.loads(str(arrays["config"]))))}
        for f in dataclasses.fields(cls):
            if f.name == "config":
                continue
            if f"{f.name}/" in arrays:
                prefix = f"{f.name}/"
                kwargs[f.name] = {k[len(prefix):]: np.array(v) for k, v in arrays.items() if k.startswith(prefix) and k != prefix}
            else:
                kwargs[f.name] = np.asarray(arrays[f.name]).item()
        return cls(**kwargs)


def _saved_config_class(cls: type, arrays: Mapping[str, np.ndarray]) -> type:
    """The config class a saved state was written with: by its optimizer name (format 1),
    or by class names (format 0, before 2026-12-05: still read). Another optimizer's
    state or a format this edge-zo does not know is refused, naming the fix."""
    fmt = int(arrays["__format__"]) if "__format__" in arrays else 0
    if fmt > STATE_FORMAT or fmt < 0:
        raise ConfigError(f"the optimizer state is in format {fmt}, which this edge-zo (formats 0-{STATE_FORMAT}) "
                          f"cannot read: resume with the edge-zo version that wrote it, or upgrade edge-zo")
    declared = typing.get_type_hints(cls)["config"]
    family = _subclasses(declared)
    if fmt == 0:
        kind, match = str(arrays["__state__"]), [c for c in family if c.__name__ == str(arrays["config_class"])]
        if kind != cls.__name__:
            match = []
    else:
        kind = str(arrays["__optimizer__"])
        match = [c for c in family if c.name == kind]
    if not match:
        raise ConfigError(f"the checkpoint holds a {kind} optimizer state, not a {declared.name} one: "
                          f"resume with the optimizer it was written by")
    return match[0]


def _subclasses(base: type) -> list[type]:
    # The state's declared config class and its subclasses (LozoMConfig of LOZO).
    found, todo = [], [base]
    while todo:
        c = todo.pop()
        found.append(c)
        todo.extend(c.__subclasses__())
    return found


def _tuples(d: dict) -> dict:
    # JSON has no tuples; config fields that are tuples come back as lists.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def state_bytes(state: State) -> int:
    """Bytes of a state's arrays (its dict fields): what it holds between steps."""
    total = 0
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, dict):
            total += sum(np.asarray(a).nbytes for a in value.values())
    return total


# ------------------------------------------------------------------ shared small checks


_FIX = "Lower eta (or one_d_lr)."  # the loop adds how to resume (edge_zo/loop.py)


def guard(losses: np.ndarray, g: np.ndarray, state: State) -> float:
    """Stop with a clear error rather than let NaN, inf or a runaway loss reach the weights.

    Returns the reference loss (the first step's mean loss) to keep in the state. A run
    whose mean probe loss exceeds `diverge_ratio` times the reference has diverged even
    if every number is still finite; ZO-SGD on a badly scaled problem gets there fast.
    """
    if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(g.astype(np.float32)))):
        raise DivergedError(f"step {state.step}: non-finite loss or gradient estimate (losses {losses.tolist()}); the run diverged. {_FIX}")
    mean = float(np.mean(losses, dtype=np.float64))
    loss0 = mean if math.isnan(state.loss0) else state.loss0
    ratio = state.config.diverge_ratio
    if ratio > 0 and loss0 > 0 and mean > ratio * loss0:
        raise DivergedError(
            f"step {state.step}: mean loss {mean:.4g} is over diverge_ratio={ratio:g} times the first step's {loss0:.4g}; "
            f"the run diverged. {_FIX}"
        )
    return loss0
