"""What fleet messages hold, as plain dicts of ints, floats, strings and float lists.

The same dicts travel in Flower records (edge_zo/fleet/flower.py: a ConfigRecord down, a
MetricRecord up) or, in the tests, straight from server to client. Down, per round:

    step      the step t to probe (== steps: the last round, apply only)
    key       the step's key, JSON of its path: Key.root(seed).child("step", t)
    from      first step of the aggregated losses that follow
    per_step  losses per step (2N for central differences, N+1 for forward)
    losses    the aggregated losses of steps from..t-1, flat (float32 values)

Up: `step` (the step the client has reached, steps 0..step-1 applied), and when it probed
step t: `losses` (its probes' losses on its own minibatch) and `examples` (its batch size,
the weight of its losses in the mean). The first contact ("hello") carries the fleet
config down (`fleet`, JSON) and the client's step and model sizes up.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from edge_zo.optim import build_config
from edge_zo.optim.base import ConfigError
from edge_zo.optim.configs import parse_overrides
from edge_zo.rng import Key


@dataclass(frozen=True)
class Fleet:
    """What every replica must share: the run's seed, optimizer and length."""

    seed: int = 0
    preset: str = "mezo"
    optimizer: dict = field(default_factory=dict)  # optimizer.KEY overrides
    steps: int = 100

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"fleet steps={self.steps} must be >= 1")
        build_config(self.preset, self.optimizer)  # a bad key or value stops the server here

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Fleet":
        return cls(**json.loads(text))

    @classmethod
    def parse(cls, seed: int, preset: str, overrides: str, steps: int) -> "Fleet":
        """From settings: `overrides` is space-separated KEY=VALUE (optimizer keys)."""
        return cls(int(seed), preset, parse_overrides(overrides.split()), int(steps))


def step_key(seed: int, t: int) -> Key:
    """The key of step t: the same as a finetune run's with this seed (edge_zo/loop.py)."""
    return Key.root(seed).child("step", t)


def key_text(key: Key) -> str:
    return json.dumps(key.to_list())


def round_payload(seed: int, t: int, start: int, history: list[list[float]]) -> dict:
    """The down message of round t for a client at step `start` (history: losses by step)."""
    missing = history[start:t]
    per_step = len(missing[0]) if missing else 0
    return {"step": t, "key": key_text(step_key(seed, t)), "from": start, "per_step": per_step,
            "losses": [float(x) for losses in missing for x in losses]}


def entries(payload: dict) -> list[tuple[int, list[float]]]:
    """(step, aggregated losses) of each step a round message carries."""
    flat, per = list(payload.get("losses", [])), int(payload.get("per_step", 0))
    if per == 0:
        return []
    return [(payload["from"] + i, flat[i * per:(i + 1) * per]) for i in range(len(flat) // per)]


def aggregate(replies: dict[int, dict]) -> tuple[list[float], int]:
    """Mean of the clients' losses weighted by their examples, in node order (float64 sums,
    float32 result: what every client would have seen on the union of the minibatches)."""
    total, weight = None, 0
    for node in sorted(replies):
        reply = replies[node]
        losses = np.asarray(reply["losses"], dtype=np.float32).astype(np.float64)
        n = int(reply["examples"])
        total = losses * n if total is None else total + losses * n
        weight += n
    return (total / weight).astype(np.float32).tolist(), weight
