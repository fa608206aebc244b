"""`edge-zo eval`: accuracy of a bundle, or of a run's trained weights, on labelled data."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from edge_zo.errors import UserError
from edge_zo.templates import registry_help

HELP = "score a bundle (or a run's trained weights) on labelled data"

# The run keys that say how rows become examples: what eval may set (or change from the run's).
DATA_KEYS = ("template", "template_prompt", "template_labels", "template_choices", "template_separator",
             "text_field", "prompt_field", "data_format", "loss_on_prompt", "skip_bad")
TEMPLATE_KEYS = DATA_KEYS[:5]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder (default: the run's, where it recorded "
                        "it or beside it; with --run it must hold the run's model: checked by its fingerprint)")
    parser.add_argument("--run", metavar="RUN", help="run folder whose weights to score (default: the bundle's own)")
    parser.add_argument("--data", metavar="FILE", required=True, help="labelled data: .jsonl, .csv or .tsv")
    parser.add_argument("--weights", choices=("best", "last"), default="best",
                        help="which of the run's weights: best on dev, or the last checkpoint")
    parser.add_argument("--template", help=f"built-in prompt template: {registry_help()} (default: the run's, "
                        "else the bundle's: review-plain for an encoder or classifier, review for a language "
                        "model's label words); your own: template_prompt=...")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="execution provider")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"how the data is read, as finetune takes them: {', '.join(DATA_KEYS)}; e.g. "
                             "template_prompt='{text} =>' template_labels=negative,positive (docs/finetune.md)")


def run(args: argparse.Namespace) -> int:
    from edge_zo import checkpoint, loop, notices, resume, runconfig
    from edge_zo.bundle import read_manifest
    from edge_zo.data import load_tokenizer
    from edge_zo.runtime import Runtime

    config = runconfig.load(Path(args.run), bundle=args.bundle) if args.run else None  # its model, checked
    bundle = config.bundle if config else args.bundle
    if not bundle:
        raise UserError("no bundle: pass --bundle DIR or --run RUN")
    config = data_config(config, bundle, args)
    manifest = read_manifest(bundle)
    template = loop.template_for(config, manifest)  # bad input stops before the model loads
    tokenizer = load_tokenizer(bundle, manifest)
    skipped: list = []
    examples = loop.load_examples(config, args.data, manifest, template,
                                  lambda d: (skipped.append(len(d.skipped)), notices.skipped_rows(d, "evaluation")))
    runtime = Runtime(bundle, provider=args.provider)
    state = None
    if args.run:
        folder = Path(args.run) / ("best" if args.weights == "best" else "checkpoints")
        ckpt = checkpoint.load_latest(folder)
        if ckpt is None:
            raise UserError(f"{folder}: no complete checkpoint to score")
        state = resume.load_snapshot(ckpt, runtime, config)
    record = loop.evaluate(runtime, state, examples, tokenizer, manifest, args.batch_size)
    print(json.dumps({"data": args.data, "examples": len(examples), "skipped_rows": sum(skipped), **record}))
    return 0


def data_config(config, bundle: str, args: argparse.Namespace):
    """The run's config (or the defaults) with this call's data file and data keys; a
    template given here (--template or template_*) replaces the run's whole template."""
    from edge_zo.optim.configs import make_config, parse_overrides
    from edge_zo.runconfig import RunConfig

    given = parse_overrides(args.overrides)
    other = sorted(set(given) - set(DATA_KEYS))
    if other:
        raise UserError(f"eval takes key=value only for how data is read ({', '.join(DATA_KEYS)}); "
                        f"'{other[0]}' is not one of them (training keys belong to finetune)")
    if args.template:
        given["template"] = args.template
    values = {k: v for k, v in dataclasses.asdict(config).items() if k != "optimizer"} if config else {}
    if any(k in given for k in TEMPLATE_KEYS):
        values.update(template="", template_prompt="", template_labels=(), template_choices=(),
                      template_separator=" ")
    values.update(bundle=bundle, data=args.data, **given)
    made = make_config(RunConfig, values)
    return dataclasses.replace(made, optimizer=config.optimizer) if config else made
