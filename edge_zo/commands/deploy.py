"""`edge-zo deploy`: write a plain inference model with a run's trained weights merged (docs/deploy.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a run's trained weights merged into a self-describing model folder (or a plain model.onnx)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder written by `edge-zo finetune`")
    parser.add_argument("--out", metavar="DIR", required=True, type=Path,
                        help="output folder (created): model.onnx, tokenizer.json, edge_zo_model.json and a "
                             "model card, read by `edge-zo predict`; a name ending in .onnx writes the model alone "
                             "(its folder must exist)")
    parser.add_argument("--force", action="store_true", help="replace a model already at --out")
    parser.add_argument("--adapter", action="store_true",
                        help="also write adapter.npz: the update as LoRA-style B, A per matrix at the bundle's "
                             "rank (edge_zo.adapter.apply adds it onto the base weights)")
    parser.add_argument("--adapter-rank", type=int, default=0, metavar="K",
                        help="the adapter's rank (default: the bundle's); each sketch window adds up to r to "
                             "the update's rank, so a long run needs more to be exact (see its errors in "
                             "edge_zo_model.json)")
    parser.add_argument("--bundle", metavar="DIR", help="the run's bundle, if it is no longer where the run "
                        "recorded it nor beside the run (checked by its fingerprint)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="weight precision of the output (fp16: half the file, fp32 arithmetic)")
    parser.add_argument("--weights", choices=("best", "last"), default="best",
                        help="which of the run's weights: best on dev (else the last), or the last checkpoint")
    parser.add_argument("--only-if-better", metavar="DATA",
                        help="keep the existing --out model unless the new one scores strictly "
                             "better on DATA (accuracy, multiple choice too; mean NLL for causal-lm text)")


def run(args: argparse.Namespace) -> int:
    from edge_zo.deploy import DeployOptions, deploy

    report = deploy(DeployOptions(run=Path(args.run), out=args.out, dtype=args.dtype,
                                  weights=args.weights, only_if_better=args.only_if_better,
                                  bundle=args.bundle, force=args.force, adapter=args.adapter,
                                  adapter_rank=args.adapter_rank))
    if report.new_score is not None:
        verdict = "replaced it" if report.replaced else f"kept {report.out} (the new model is not better)"
        print(f"on {args.only_if_better}: {report.metric} new {report.new_score:.4f}, "
              f"previous {report.old_score:.4f}: {verdict}")
    if report.replaced:
        described = " with tokenizer.json, edge_zo_model.json and README.md" if report.out != args.out else ""
        print(f"wrote {report.out} ({args.dtype}, {report.bytes / 2**20:.1f} MiB){described} from {args.run}, "
              f"weights {report.weights}; parity with the training graph: max |score diff| "
              f"{report.parity_diff:.2g} on {report.parity_rows} rows of {report.parity_source}")
    return 0
