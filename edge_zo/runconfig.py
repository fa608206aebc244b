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

from edge_zo import rng, runpaths
from edge_zo.bundle import read_manifest
from edge_zo.bundle_hash import fingerprint
from edge_zo.checkpoint import atomic_write
from edge_zo.errors import UserError
from edge_zo.optim import build_config
from edge_zo.optim.base import ConfigError
from edge_zo.optim.configs import make_config, opt, parse_overrides, require
from edge_zo.formats import FORMATS
from edge_zo.templates import TEMPLATES, default_template_name, registry_help, user_template

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is a function of, besides its data files' contents."""

    name: ClassVar[str] = "finetune"
    bundle: str = opt("", "bundle folder written by `edge-zo export`")
    data: str = opt("", "training data: .jsonl, .csv or .tsv")
    eval_data: str = opt("", "held-out data scored every eval_every steps (empty: none)")
    template: str = opt("", f"prompt template: a built-in ({registry_help()}) or your own's name "
                        "(template_prompt); empty: the bundle's default, review-plain (the bare text) for an "
                        "encoder or classifier bundle, review for a language model's label words, plain text "
                        "(text_field) for a causal-lm bundle; a new run records the one it used")
    template_prompt: str = opt("", "your own template: a pattern over the row's fields, e.g. "
                               "'Review: {text}\\nSentiment:' (newlines: write it in the --config file)")
    template_labels: tuple[str, ...] = opt((), "your own classification template: the label values in the order "
                                           "of the bundle's label words, each VALUE or VALUE=WORD")
    template_choices: tuple[str, ...] = opt((), "your own multiple-choice template (causal-lm bundle): the candidate "
                                            "fields, e.g. choice1,choice2; the row's label is the right one's index")
    template_separator: str = opt(" ", "your own template: text between the prompt and a label word or candidate")
    text_field: str = opt("text", "causal-lm: the field whose tokens are scored")
    prompt_field: str = opt("", "causal-lm: a field prepended unscored (empty: score the whole text)")
    data_format: str = opt("auto", "causal-lm rows: auto (read off the first row's fields) | text | chat (messages) | "
                           "prompt-completion | alpaca (instruction, input, output); docs/data.md")
    loss_on_prompt: bool = opt(False, "causal-lm chat / prompt-completion / alpaca: score the prompt's tokens too "
                               "(default: only the response's)")
    skip_bad: bool = opt(False, "skip and count bad data rows instead of stopping at the first one")
    preset: str = opt("zo-mopi", "optimizer preset: zo-mopi, paper-code, zo-muon, lozo, lozo-m, mezo, loren, ...")
    optimizer: dict = field(default_factory=dict, metadata={"help": "optimizer.KEY=VALUE overrides"})
    steps: int = opt(500, "optimizer steps")
    batch_size: int = opt(16, "examples per step (one minibatch shared by all probes of a step)")
    eval_every: int = opt(100, "steps between evaluations (0: only at the start and the end)")
    eval_examples: int = opt(0, "score at most this many eval examples (0: all)")
    patience: int = opt(0, "early stopping: end the run (a final checkpoint, the verdict) once this many "
                        "evaluations in a row have not improved the best dev score (0: off; needs eval_data)")
    checkpoint_every: int = opt(100, "steps between checkpoints; the journal covers the steps between")
    seed: int = opt(0, "run seed: the run is a function of its config and seed")
    provider: str = opt("cpu", "execution provider: cpu or cuda (falls back to cpu with a warning); with "
                        "--profile, the profile's unless set")
    threads: int = opt(0, "intra-op threads (0: physical cores)")
    probe_slots: int = opt(1, "probes evaluated per forward call (at most the bundle's)")
    linear_probe: str = opt("auto", "fit a linear head on the training set before the ZO steps (LP-then-ZO): "
                            "auto (when the bundle has one: export --head linear) | on | off")
    logit_bias_lr: float = opt(1e-2, "causal-lm text: Adam's step size for the bundle's logit bias (export "
                               "--logit-bias), moved each step by its exact gradient from the ZO probes' own "
                               "forwards (0: the bias stays as it is)")

    def __post_init__(self):
        require(bool(self.bundle), "no bundle: pass --bundle DIR (a folder made by `edge-zo export`)")
        require(bool(self.data), "no training data: pass --data FILE")
        for key in ("steps", "batch_size", "probe_slots"):
            require(getattr(self, key) >= 1, f"{key}={getattr(self, key)} must be >= 1")
        for key in ("eval_every", "eval_examples", "checkpoint_every", "threads"):
            require(getattr(self, key) >= 0, f"{key}={getattr(self, key)} must be >= 0")
        require(self.logit_bias_lr >= 0, f"logit_bias_lr={self.logit_bias_lr} must be >= 0 (0 keeps the bias fixed)")
        require(self.patience >= 0, f"patience={self.patience} must be >= 0 (0 turns early stopping off)")
        require(not self.patience or bool(self.eval_data), f"patience={self.patience} counts evaluations on the "
                "eval data, but there is none: pass --eval-data FILE or drop patience")
        require(self.provider in ("cpu", "cuda"), f"provider={self.provider!r} must be cpu or cuda")
        require(self.linear_probe in ("auto", "on", "off"),
                f"linear_probe={self.linear_probe!r} must be auto, on or off")
        require(self.data_format in FORMATS, f"data_format={self.data_format!r} must be one of {', '.join(FORMATS)}")
        self.prompt_template()  # a bad template stops the run here, before anything loads

    def prompt_template(self):
        """The run's template: your own (template_prompt), a built-in by name, or None for
        the bundle's default (edge_zo.templates.fit_template checks it against the bundle)."""
        if not self.template_prompt:
            require(not (self.template_labels or self.template_choices),
                    "template_labels / template_choices describe your own template: set template_prompt too")
            require(not self.template or self.template in TEMPLATES,
                    f"template={self.template!r} is not one of {', '.join(TEMPLATES)}; to write your own, set "
                    "template_prompt and template_labels or template_choices (docs/data.md)")
            return TEMPLATES.get(self.template)
        require(self.template not in TEMPLATES,
                f"template={self.template!r} is a built-in, but template_prompt sets your own: drop one of them")
        try:
            return user_template(self.template_prompt, self.template_labels, self.template_choices,
                                 self.template_separator)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def optimizer_config(self, bundle_rank: int = 0):
        """The optimizer's config: the preset, with `optimizer.` overrides (checked there).

        Two values follow the run unless given explicitly: a decaying η schedule ends at
        the run's last step, and, since a low-rank bundle fixes r at export, r is the
        bundle's (an explicit `optimizer.r` must agree) with a preset's k above it
        lowered to r // 2.
        """
        return optimizer_config(self.preset, self.optimizer, self.steps, bundle_rank)


def optimizer_config(preset: str, overrides: dict, steps: int = 0, bundle_rank: int = 0):
    """`RunConfig.optimizer_config` of a run with these values (`steps` 0: no schedule to end;
    `edge-zo plan` resolves its --optimizer and optimizer.KEY=VALUE here too)."""
    config = build_config(preset, overrides)
    values = dict(overrides)
    if steps and config.schedule != "constant" and "decay_steps" not in values:
        values["decay_steps"] = max(steps, config.warmup + 1)
    if bundle_rank and hasattr(config, "r") and config.r != bundle_rank:
        if "r" in values:
            raise ConfigError(f"optimizer.r={config.r} but the bundle was exported with rank "
                              f"{bundle_rank}: drop optimizer.r or re-export with --rank {config.r}")
        values["r"] = bundle_rank
        if getattr(config, "k", 0) > bundle_rank and "k" not in values:
            values["k"] = max(1, bundle_rank // 2)
    return build_config(preset, values)


def pin_template(config: RunConfig, manifest) -> RunConfig:
    """A new run's config with the template its bundle gets by default named, so that what
    the run records (config.json) is what it read, whatever later defaults become."""
    if config.template or config.template_prompt:
        return config
    name = default_template_name(manifest)
    return dataclasses.replace(config, template=name) if name else config


def resolve(file: str | None, options: dict[str, Any], overrides: list[str],
            defaults: dict[str, Any] | None = None) -> RunConfig:
    """Defaults (the dataclass's, then `defaults`: a device profile's) < TOML file < options
    (None means not given) < key=value overrides."""
    values: dict[str, Any] = dict(defaults or {})
    if file:
        try:
            values.update(_flatten(tomllib.loads(Path(file).read_text())))
        except FileNotFoundError:
            raise ConfigError(f"{file}: config file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{file}: not valid TOML ({err})") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{file}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte offset "
                              f"{err.start}); save it as UTF-8") from None
    values.update({k: v for k, v in options.items() if v is not None})
    values.update(parse_overrides(overrides))
    dotted = sorted(k for k in values if "." in k and not k.startswith("optimizer."))
    require(not dotted, f"'{dotted[0] if dotted else ''}': only optimizer.KEY is dotted ([optimizer] is the "
            'only table); a list is a list, e.g. template_labels = ["negative", "positive"]')
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
    """config.json: the config, the noise stream, and where its files are (absolute, from
    the run folder, with the bundle's fingerprint and the data files' hashes:
    edge_zo/runpaths.py), so the run folder can move."""
    values = {**dataclasses.asdict(config), "noise_stream": rng.STREAM_VERSION}
    try:  # every optimizer value the run uses, typed, defaults included (for readers: `load` rebuilds it)
        values["optimizer_resolved"] = dataclasses.asdict(config.optimizer_config(read_manifest(config.bundle).rank))
    except (UserError, OSError):
        pass
    atomic_write(run_dir / CONFIG_NAME, (json.dumps(runpaths.record(values, run_dir), indent=2) + "\n").encode())


def _read(run_dir: Path) -> dict:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: missing; is {run_dir} a run folder made by `edge-zo finetune`?")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        values, problem = None, f"not valid JSON ({err})"
    else:
        problem = "not a run config (a JSON object)"
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: damaged, {problem}; the run cannot be continued from it: start a new "
                          f"run with the same options (its checkpoints in {run_dir / 'checkpoints'} stay)")
    return values


def record_fingerprint(run_dir: Path, config: RunConfig) -> None:
    """A run from before fingerprints gets one recorded (a resume holds the lock); the
    bundle itself was found by `load`."""
    values = _read(run_dir)
    if values.get("bundle_fingerprint") is None:
        atomic_write(run_dir / CONFIG_NAME, (json.dumps({**values, "bundle_fingerprint": fingerprint(config.bundle)},
                                                        indent=2) + "\n").encode())


def load(run_dir: Path, resuming: bool = False, bundle: str | None = None, data: dict | None = None) -> RunConfig:
    """A run's config, its bundle found (`bundle`: given now, checked) and, when
    `resuming`, its data files too (`data`: {data, eval_data} given now, checked) by
    edge_zo/runpaths.py; `resuming` also insists the run draws the noise this edge-zo draws
    (evaluating or deploying its weights does not need that)."""
    values = runpaths.locate(_read(run_dir), run_dir, bundle, data, need_data=resuming)
    for key in ("bundle_fingerprint", "paths_from_run", "data_files", "optimizer_resolved"):
        values.pop(key, None)
    # A run's random draws are only reproducible under the noise layout it started with.
    stream = values.pop("noise_stream", 1)
    if resuming and stream != rng.STREAM_VERSION:
        raise ConfigError(f"{run_dir} was started by an edge-zo that draws noise stream {stream}; this one "
                          f"draws stream {rng.STREAM_VERSION}, so a resume would not repeat the run: "
                          "start a new run, or resume with the edge-zo version that started it")
    optimizer = values.pop("optimizer", {})
    if not values.get("template") and not values.get("template_prompt"):
        # Runs record their default template (pin_template); before, an empty one meant
        # review for any classification bundle (and none on a causal-lm one, which
        # fit_template still reads "review" as).
        values["template"] = "review"
    values.setdefault("data_format", "text")  # a run from before data formats read its rows as text
    return dataclasses.replace(make_config(RunConfig, values), optimizer=optimizer)
