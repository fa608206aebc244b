"""`edge-zo predict`: run a deployed model folder on a data file (docs/deploy.md, predict)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "predict with a deployed model folder: label and probabilities per row (NLL per token for causal-lm)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="DIR", help="folder written by `edge-zo deploy RUN --out DIR`")
    parser.add_argument("--data", metavar="FILE", required=True,
                        help="rows to predict: .jsonl, .csv or .tsv with the template's fields (a `label` is ignored)")
    parser.add_argument("--out", metavar="FILE", type=Path, help="write the JSONL here instead of stdout")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="execution provider")


def run(args: argparse.Namespace) -> int:
    from edge_zo.predict import load
    from edge_zo.readers import read_rows
    from edge_zo.errors import UserError

    model = load(Path(args.model), args.provider)
    rows = []
    for line, row, reason in read_rows(args.data):
        if row is None:
            raise UserError(f"{args.data}, line {line}: {reason}")
        try:  # a row the template cannot read is named by its line
            model.prompt(row) if model.task == "classification" else None
        except ValueError as err:
            raise UserError(f"{args.data}, line {line}: {err}") from None
        rows.append(row)
    if model.task == "causal-lm":
        results = [{"nll_per_token": v, "tokens": n} for v, n in zip(*model.nll_with_tokens(rows))]
    else:
        proba = model.predict_proba(rows)
        results = [{"label": model.labels[int(p.argmax())],
                    "probabilities": {name: round(float(x), 6) for name, x in zip(model.labels, p)}} for p in proba]
    text = "".join(json.dumps(r) + "\n" for r in results)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {len(results)} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
