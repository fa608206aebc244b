"""The configuration of a fine-tuning run: one dataclass, a TOML file, `key=value` overrides.

Precedence: dataclass defaults < `--config FILE` < command-line options < `key=value`
overrides. Keys prefixed `optimizer.` go to the optimizer's own config (edge_zo/optim),
which checks them the same way. The resolved config is written to `RUN/config.json`, and
`finetune --resume RUN` reads it back from there, so a resumed run is the same run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from edge_zo.checkpoint import atomic_write
from edge_zo.optim import build_config
from edge_zo.optim.base import ConfigError
from edge_zo.optim.configs import make_config, opt, parse_overrides, require

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is a function of, besides its data files' contents."""

    name: ClassVar[str] = "finetune"
    bundle: str = opt("", "bundle folder written by `edge-zo export`")
    data: str = opt("", "training data: .jsonl, .csv or .tsv")
    eval_data: str = opt("", "held-out data scored every eval_every steps (empty: none)")
    template: str = opt("review", "prompt template for classification: a built-in name (edge_zo.data.TEMPLATES)")
    text_field: str = opt("text", "causal-lm: the field whose tokens are scored")
    prompt_field: str = opt("", "causal-lm: a field prepended unscored (empty: score the whole text)")
    skip_bad: bool = opt(False, "skip and count bad data rows instead of stopping at the first one")
    preset: str = opt("zo-mopi", "optimizer preset: zo-mopi, paper-code, zo-muon, lozo, lozo-m, mezo, loren, ...")
    optimizer: dict = field(default_factory=dict, metadata={"help": "optimizer.KEY=VALUE overrides"})
    steps: int = opt(500, "optimizer steps")
    batch_size: int = opt(16, "examples per step (one minibatch shared by all probes of a step)")
    eval_every: int = opt(100, "steps between evaluations (0: only at the start and the end)")
    eval_examples: int = opt(0, "score at most this many eval examples (0: all)")
    checkpoint_every: int = opt(100, "steps between checkpoints; the journal covers the steps between")
    seed: int = opt(0, "run seed: the run is a function of its config and seed")
    provider: str = opt("cpu", "execution provider: cpu or cuda (falls back to cpu with a warning)")
    threads: int = opt(0, "intra-op threads (0: physical cores)")
    probe_slots: int = opt(1, "probes evaluated per forward call (at most the bundle's)")

    def __post_init__(self):
        require(bool(self.bundle), "no bundle: pass --bundle DIR (a folder made by `edge-zo export`)")
        require(bool(self.data), "no training data: pass --data FILE")
        for key in ("steps", "batch_size", "probe_slots"):
            require(getattr(self, key) >= 1, f"{key}={getattr(self, key)} must be >= 1")
        for key in ("eval_every", "eval_examples", "checkpoint_every", "threads"):
            require(getattr(self, key) >= 0, f"{key}={getattr(self, key)} must be >= 0")
        require(self.provider in ("cpu", "cuda"), f"provider={self.provider!r} must be cpu or cuda")

    def optimizer_config(self, bundle_rank: int = 0):
        """The optimizer's config: the preset, with `optimizer.` overrides (checked there).

        Two values follow the run unless given explicitly: a decaying η schedule ends at
        the run's last step, and, since a low-rank bundle fixes r at export, r is the
        bundle's (an explicit `optimizer.r` must agree) with a preset's k above it
        lowered to r // 2.
        """
        config = build_config(self.preset, self.optimizer)
        values = dict(self.optimizer)
        if config.schedule != "constant" and "decay_steps" not in values:
            values["decay_steps"] = max(self.steps, config.warmup + 1)
        if bundle_rank and hasattr(config, "r") and config.r != bundle_rank:
            if "r" in values:
                raise ConfigError(f"optimizer.r={config.r} but the bundle was exported with rank "
                                  f"{bundle_rank}: drop optimizer.r or re-export with --rank {config.r}")
            values["r"] = bundle_rank
            if getattr(config, "k", 0) > bundle_rank and "k" not in values:
                values["k"] = max(1, bundle_rank // 2)
        return build_config(self.preset, values)


def resolve(file: str | None, options: dict[str, Any], overrides: list[str]) -> RunConfig:
    """Defaults < TOML file < options (None means not given) < key=value overrides."""
    values: dict[str, Any] = {}
    if file:
        try:
            values.update(_flatten(tomllib.loads(Path(file).read_text())))
        except FileNotFoundError:
            raise ConfigError(f"{file}: config file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{file}: not valid TOML ({err})") from None
    values.update({k: v for k, v in options.items() if v is not None})
    values.update(parse_overrides(overrides))
    optimizer = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("optimizer.")}
    values = {k: v for k, v in values.items() if not k.startswith("optimizer.")}
    config = dataclasses.replace(make_config(RunConfig, values), optimizer=optimizer)
    config.optimizer_config()  # reject bad optimizer keys before anything heavy loads
    return config


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    # [optimizer] tables in the file become optimizer.KEY like the command line's.
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def save(config: RunConfig, run_dir: Path) -> None:
    text = json.dumps(dataclasses.asdict(config), indent=2) + "\n"
    atomic_write(run_dir / CONFIG_NAME, text.encode())


def load(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: missing; is {run_dir} a run folder made by `edge-zo finetune`?")
    values = json.loads(path.read_text())
    optimizer = values.pop("optimizer", {})
    return dataclasses.replace(make_config(RunConfig, values), optimizer=optimizer)
