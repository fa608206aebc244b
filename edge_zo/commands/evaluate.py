"""`edge-zo eval`: accuracy of a bundle, or of a run's trained weights, on labelled data."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from edge_zo.errors import UserError

HELP = "score a bundle (or a run's trained weights) on labelled data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="DIR", help="bundle folder (default: the run's)")
    parser.add_argument("--run", metavar="RUN", help="run folder whose weights to score (default: the bundle's own)")
    parser.add_argument("--data", metavar="FILE", required=True, help="labelled data: .jsonl, .csv or .tsv")
    parser.add_argument("--weights", choices=("best", "last"), default="best",
                        help="which of the run's weights: best on dev, or the last checkpoint")
    parser.add_argument("--template", help="built-in prompt template, e.g. sst2, copa (default: the run's, "
                        "else review for a classification bundle)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="execution provider")


def run(args: argparse.Namespace) -> int:
    from edge_zo import checkpoint, loop, runconfig
    from edge_zo.bundle import read_manifest
    from edge_zo.data import load_tokenizer
    from edge_zo.runtime import Runtime

    config = runconfig.load(Path(args.run)) if args.run else None
    bundle = args.bundle or (config.bundle if config else None)
    if not bundle:
        raise UserError("no bundle: pass --bundle DIR or --run RUN")
    given = {k: v for k, v in {"bundle": bundle, "data": args.data, "template": args.template}.items() if v}
    if args.template:  # a named built-in replaces the run's own template
        given.update(template_prompt="", template_labels=(), template_choices=())
    config = dataclasses.replace(config, **given) if config else runconfig.resolve(None, given, [])
    manifest = read_manifest(bundle)
    if args.run:
        runconfig.check_bundle(Path(args.run), config)  # its weights were trained on this model?
    runtime = Runtime(bundle, provider=args.provider)
    state = None
    if args.run:
        folder = Path(args.run) / ("best" if args.weights == "best" else "checkpoints")
        ckpt = checkpoint.load_latest(folder)
        if ckpt is None:
            raise UserError(f"{folder}: no complete checkpoint to score")
        state = loop.load_snapshot(ckpt, runtime, config)
    template = loop.template_for(config, manifest)
    examples = loop.load_examples(config, args.data, manifest, template)
    tokenizer = load_tokenizer(bundle)
    record = loop.evaluate(runtime, state, examples, tokenizer, manifest, args.batch_size)
    print(json.dumps({"data": args.data, "examples": len(examples), **record}))
    return 0
