"""inference.onnx: the bundle's plain inference graph, which `edge-zo deploy` bakes weights into.

The same model and head as the training graph (heads.TrainingGraph), but exported before
the low-rank layers are injected and with no probe axis, so it has no A/D inputs and no
tiled batch. The trained matrices' W stay graph inputs (named as in the manifest's
`matrices[i].inputs["W"]`): their values change with training, and deploy turns them into
initializers. Everything else (embeddings, norms, biases, the label-embedding constant) is
an initializer in `inference.onnx.data`.

Contract (docs/export.md, "inference.onnx"):
  inputs   input_ids int64 [B, T], attention_mask int64 [B, T],
           loss_mask float32 [B, T] (causal-lm only), and each trained W (stored layout)
  output   scores float32 [B, C] (classification: the training graph's label scores)
                          [B]    (causal-lm: per-row summed NLL of the tokens loss_mask marks,
                                  as the training graph's scores; lower is better)
No `labels` input and no loss: a served model is asked for scores, not graded.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_zo.errors import UserError
from edge_zo_export.graph import IR_FOR_OPSET
from edge_zo_export.heads import TrainingGraph

INFERENCE_FILE = "inference.onnx"
SCORE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-1}  # vs PyTorch's scores, relative to max(|s|, 1)


class _Scores(nn.Module):
    """(input_ids, attention_mask[, loss_mask], *W) -> scores of probe slot 0.

    Classification needs no labels: the loss the core also computes from dummy labels is
    not an output, so the exporter drops it.
    """

    def __init__(self, core: TrainingGraph, keys: list[str], causal: bool):
        super().__init__()
        self.core, self.keys, self.causal = core, keys, causal

    def forward(self, input_ids, attention_mask, *rest):
        if self.causal:
            target, tensors = rest[0], rest[1:]
        else:
            target, tensors = torch.zeros_like(input_ids[:, 0]), rest
        outputs = torch.func.functional_call(self.core, dict(zip(self.keys, tensors)),
                                             (input_ids, attention_mask, target), strict=False)
        return outputs[1][0]  # (loss, scores[, features]): scores of slot 0


def write_inference(core: TrainingGraph, task: str, weights: dict[str, torch.Tensor],
                    path: Path, opset: int, batch: dict, dims: dict) -> str:
    """Export `core` (no trained modules injected) to `path`; W named by parameter name."""
    causal = task == "causal-lm"
    names = list(weights)
    wrapper = _Scores(core, [f"model.{name}" for name in names], causal).eval()
    extra = ["loss_mask"] if causal else []
    args = (batch["input_ids"], batch["attention_mask"], *[batch[k] for k in extra],
            *[weights[name] for name in names])
    token_dims = {0: dims["batch"], 1: dims["seq"]}
    shapes = (token_dims, token_dims)
    rest = [token_dims for _ in extra] + [{} for _ in names]  # W: static shapes
    if rest:
        shapes += (tuple(rest),)  # *rest is one positional entry: a nested tuple (runtime.md 1)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, args, dynamo=True, verbose=False, opset_version=opset, dynamic_shapes=shapes,
            input_names=["input_ids", "attention_mask", *extra, *names], output_names=["scores"],
            optimize=True)
    program.model.ir_version = IR_FOR_OPSET[opset]
    program.save(str(path), external_data=True)
    return path.name


def check_inference(path: Path, task: str, weights: dict[str, torch.Tensor], batch: dict,
                    expected_scores: np.ndarray, dtype: str) -> None:
    """Refuse an export whose inference.onnx scores differ from PyTorch's reference."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    if task == "causal-lm":
        feed["loss_mask"] = batch["loss_mask"].numpy()
    feed.update({name: w.detach().cpu().numpy() for name, w in weights.items()})
    (scores,) = session.run(["scores"], feed)
    want = np.asarray(expected_scores, dtype=np.float64)
    bound = SCORE_TOLERANCE[dtype] * max(1.0, float(np.abs(want).max()))
    if scores.shape != want.shape or not np.all(np.abs(scores - want) <= bound):
        diff = np.abs(scores - want).max() if scores.shape == want.shape else "shape"
        raise UserError(f"parity check failed for {path.name}: scores differ from PyTorch's by "
                        f"{diff} (allowed {bound:.3g}); the bundle was not written")
