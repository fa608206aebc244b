"""`edge-zo export`: a Hugging Face model -> an ONNX training bundle (docs/export.md).

Imports nothing heavy at module level: `edge-zo --help` must work where torch is absent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_zo.errors import UserError

HELP = "export a Hugging Face model (local folder, minilm, smollm2-135m) to an ONNX training bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("model", metavar="MODEL",
        help="a local Hugging Face model folder, or a built-in name: minilm, smollm2-135m")
    add("--task", required=True, choices=["classification", "causal-lm"],
        help="classification: loss = cross-entropy over label words; causal-lm: mean NLL of "
             "the tokens marked by loss_mask")
    add("--out", required=True, type=Path, help="the bundle folder to write")
    add("--targets", nargs="+", default=[], metavar="PATTERN",
        help="glob patterns over parameter or layer names of the trained matrices "
             "(default: every attention and MLP matrix of the transformer blocks)")
    add("--rank", type=int, default=8, help="r: columns of A and rows of D per trained matrix")
    add("--probe-slots", type=int, default=4,
        help="P recorded as the most probe slots per forward call (P = 1 always works)")
    add("--dtype", choices=["fp32", "fp16"], default="fp32",
        help="dtype of the weights in the graph; A, D and the loss stay fp32")
    add("--max-seq-len", type=int, default=None,
        help="longest sequence the bundle accepts (default: 512, or the model's limit if lower)")
    add("--opset", type=int, choices=[18, 20], default=20,
        help="ONNX opset; 18 (saved as IR 9) loads on onnxruntime 1.16 (JetPack 5)")
    add("--label-words", nargs="+", default=[], metavar="WORD",
        help="classification: one word per class, in label order; with a language model each "
             "must be one token, leading space included (e.g. ' terrible' ' great')")
    add("--head", choices=["auto", "label-words", "linear", "label-embedding", "classifier"], default="auto",
        help="classification scores: label-word logits of the LM head; for encoders such as "
             "MiniLM, a trainable linear head on the sentence embedding (linear: starts as "
             "label-embedding, fitted by the linear probe of `finetune`; on a language model it reads "
             "the last token and starts as label words) or the fixed cosine "
             "similarity to each label word's embedding (label-embedding); or a "
             "sequence-classification head (auto: the folder's classifier, else linear)")
    add("--graph", choices=["lowrank", "fullrank"], default="lowrank",
        help="lowrank: inputs W, A, D per matrix (ZO-MOPI, ZO-Muon, LOZO); fullrank: W only (MeZO, LOREN)")
    add("--weights", choices=["fp32", "int8", "int4"], default="fp32",
        help="base W of the low-rank matrices: int8 (per-channel, integer MatMul: faster on CPU) or "
             "int4 (32-blocks: smaller), frozen in the graph with the token embedding and a causal "
             "LM head; the trained update then lives in a fp32 rank-R adapter beside it (low-rank "
             "methods only; docs/export.md)")
    add("--adapter-rank", type=int, default=None,
        help="R of a quantized bundle's adapter U [m, R] V [R, n] (default: 4 x --rank)")
    add("--logit-bias", action=argparse.BooleanOptionalAction, default=None,
        help="causal-lm: add a trained bias [V] to the next-token logits, which finetune moves by its exact "
             "gradient each step from the same forward passes as the ZO probes (logit_bias_lr; docs/export.md). "
             "Default: on for a causal-lm export with --weights fp32; --no-logit-bias leaves it out")
    add("--force", action="store_true", help="replace --out if it exists (once the new bundle is complete)")
    add("--no-check", dest="check", action="store_false",
        help="skip the onnxruntime-vs-PyTorch loss check at the end of the export")


def run(args: argparse.Namespace) -> int:
    joined = [w for w in args.label_words if "," in w and len(w.strip(",")) > 1]
    if joined:  # `--label-words negative,positive` would be one label word
        raise UserError(f"--label-words {joined[0]!r}: give one word per argument, e.g. --label-words "
                        f"{' '.join(w for w in joined[0].split(',') if w)}")
    try:
        from edge_zo_export.pipeline import ExportOptions, export_bundle
    except ImportError as err:  # the package is here, its [export] dependencies are not
        from edge_zo.cli import PLUGINS
        raise UserError(f"{PLUGINS['export'][1]} (here: {err})") from None
    opts = ExportOptions(
        model=args.model, task=args.task, out=args.out, targets=args.targets, rank=args.rank,
        probe_slots=args.probe_slots, dtype=args.dtype, max_seq_len=args.max_seq_len,
        opset=args.opset, label_words=args.label_words, head=args.head, graph=args.graph,
        weights=args.weights, adapter_rank=args.adapter_rank, logit_bias=args.logit_bias, force=args.force,
        check=args.check)
    manifest = export_bundle(opts)
    print(f"wrote {args.out}: {manifest.task}, {manifest.graph} graph, "
          f"{len(manifest.matrices)} trained matrices, rank {manifest.rank}, opset {manifest.opset}"
          + (f", {manifest.weights} base with a rank-{manifest.adapter_rank} adapter" if manifest.adapter_rank else "")
          + (", a logit bias trained by its exact gradient" if manifest.logit_bias else ""))
    return 0
