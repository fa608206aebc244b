"""Config dataclasses shared by the optimizers, and `key=value` overrides with checking.

Each optimizer's config is a frozen dataclass whose fields carry their help text
(`field(metadata={"help": ...})`); the shared fields are declared once here and
inherited. Names follow the papers: eta (η), mu (μ), r, k, nu (ν), N, beta (β).
Every check raises ConfigError with the fix in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from edge_zo.optim.base import ConfigError

SCHEDULES = ("constant", "linear", "cosine")
ESTIMATORS = ("central", "forward")
ONE_D = ("frozen", "sgd")

# Names users bring from the authors' scripts and from other trainers.
ALIASES = {
    "lr": "eta", "learning_rate": "eta", "eps": "mu", "zo_eps": "mu", "rank": "r",
    "rank_r": "r", "num_samples": "N", "n": "N", "queries": "N", "step_interval": "nu",
    "momentum": "beta", "zo_muon_beta": "beta", "k_start": "k", "warmup_steps": "warmup",
}


def opt(default, help: str, **kw):
    """A config field with its documentation attached."""
    return field(default=default, metadata={"help": help}, **kw)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{name}={value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class CommonConfig:
    """Fields every optimizer has: step size and its schedule, probe scale, targets."""

    name: ClassVar[str] = ""
    eta: float = opt(1e-2, "step size η (learning rate) of the trained matrices")
    mu: float = opt(1e-3, "probe scale μ of the finite differences")
    schedule: str = opt("constant", "η schedule after warm-up: constant | linear | cosine (decay to eta_min_ratio·η)")
    warmup: int = opt(0, "steps of linear warm-up from η/warmup to η")
    decay_steps: int = opt(0, "step at which linear/cosine decay reaches its floor (set it to the run's step count)")
    eta_min_ratio: float = opt(0.0, "floor of the decay as a fraction of η")
    targets: tuple[str, ...] = opt(("*",), "fnmatch patterns of the oracle's tensors to train (default: all it exposes)")
    diverge_ratio: float = opt(100.0, "stop with DivergedError when a step's mean loss exceeds this multiple of the first step's (0: off)")

    def __post_init__(self):
        require(self.eta >= 0, f"eta={self.eta} must be >= 0")
        require(self.mu > 0, f"mu={self.mu} must be > 0 (it divides the loss difference)")
        _choice("schedule", self.schedule, SCHEDULES)
        require(self.warmup >= 0, f"warmup={self.warmup} must be >= 0")
        require(0 <= self.eta_min_ratio <= 1, f"eta_min_ratio={self.eta_min_ratio} must be in [0, 1]")
        require(
            self.schedule == "constant" or self.decay_steps > self.warmup,
            f"schedule={self.schedule!r} needs decay_steps > warmup={self.warmup}: set decay_steps to the run's step count",
        )
        require(self.diverge_ratio >= 0, f"diverge_ratio={self.diverge_ratio} must be >= 0 (0 turns the guard off)")
        require(len(self.targets) > 0, "targets is empty: give at least one pattern, e.g. targets='*'")


@dataclass(frozen=True)
class LowRankConfig(CommonConfig):
    """Methods whose matrix probes are low-rank: rank, refresh interval, 1-D parameters."""

    r: int = opt(64, "rank of the perturbation subspace (clamped per matrix to min(r, m))")
    nu: int = opt(500, "steps between redraws of the subspace (ν)")
    one_d: str = opt("frozen", "1-D parameters (biases, norms) in targets: frozen | sgd (ZO-SGD, full Gaussian probes)")
    one_d_lr: float = opt(1e-7, "step size of the 1-D parameters when one_d='sgd' (not scheduled)")

    def __post_init__(self):
        super().__post_init__()
        require(self.r >= 1, f"r={self.r} must be >= 1")
        require(self.nu >= 1, f"nu={self.nu} must be >= 1")
        _choice("one_d", self.one_d, ONE_D)
        require(self.one_d_lr >= 0, f"one_d_lr={self.one_d_lr} must be >= 0")


@dataclass(frozen=True)
class SketchConfig(LowRankConfig):
    """Methods that estimate an r×n gradient in an orthonormal sketch A (ZO-MOPI, ZO-Muon)."""

    N: int = opt(4, "probe directions B_i per step")
    estimator: str = opt("central", "central: 2N forwards (F(X+μAB)−F(X−μAB))/2μ | forward: N+1 forwards (F(X+μAB)−F(X))/μ")

    def __post_init__(self):
        super().__post_init__()
        require(self.N >= 1, f"N={self.N} must be >= 1")
        _choice("estimator", self.estimator, ESTIMATORS)


def field_help(cls) -> dict[str, str]:
    """name -> help text of every field of a config class (for `--help` and docs)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, hint) -> Any:
    """Turn a `key=value` string (or a TOML/YAML value) into the field's type."""
    origin = typing.get_origin(hint)
    where = f"{key}={value!r}"
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        require(text in ("true", "false", "1", "0", "yes", "no"), f"{where}: expected true or false")
        return text in ("true", "1", "yes")
    if hint is int:
        require(not isinstance(value, (bool, float)), f"{where}: expected an integer")
        try:
            return int(str(value), 10)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer") from None
    if hint is float:
        require(not isinstance(value, bool), f"{where}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number such as 1e-3") from None
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(s).strip() for s in items if str(s).strip())
    return str(value)


def parse_overrides(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """["k=32", "eta=1e-3"] or {"k": 32} -> {"k": "32", ...} (values coerced later)."""
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        require(bool(sep) and bool(key.strip()), f"override {item!r} is not key=value, e.g. eta=1e-3")
        out[key.strip()] = value.strip()
    return out


def make_config(cls, values: Mapping[str, Any]):
    """Build `cls` from values, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            guess = ALIASES.get(key) if ALIASES.get(key) in known else None
            guess = guess or next(iter(difflib.get_close_matches(key, known, n=1)), None)
            hint = f"did you mean '{guess}'? " if guess else ""
            raise ConfigError(f"unknown key '{key}' for {cls.name}; {hint}known keys: {', '.join(known)}")
        kwargs[key] = _coerce(key, value, hints[key])
    return cls(**kwargs)
