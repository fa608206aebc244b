"""PyTorch reference losses and the ONNX parity check that every export ends with.

The reference is computed from the unmodified Hugging Face model with its full logits,
independently of heads.py and lowrank.py, so a parity pass means the graph (low-rank
path, logit gathering, probe tiling) computes what PyTorch computes.
"""

from __future__ import annotations

import copy
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edge_zo.bundle import Manifest
from edge_zo.errors import UserError

TOLERANCE = {"fp32": 1e-5, "fp16": 2e-2}  # relative, on the loss
VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "edge-zo")


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def example_batch(task: str, vocab_size: int, batch: int, length: int, num_labels: int,
                  seed: int, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens, right padding of varied lengths, random labels or a loss mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=gen)
    lengths = torch.linspace(length, max(2, length // 2), batch).round().long()
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_token_id))
    out = {"input_ids": ids, "attention_mask": mask}
    if task == "classification":
        out["labels"] = torch.randint(0, max(num_labels, 1), (batch,), generator=gen)
    else:
        loss_mask = mask.float()
        loss_mask[:, : length // 3] = 0  # score the continuation, not the prompt
        out["loss_mask"] = loss_mask
    return out


@torch.no_grad()
def reference(model, head: str, label_token_ids: list[int], batch: dict) -> tuple[float, np.ndarray]:
    """(loss, scores) from the HF model's own forward and full logits."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    if head == "causal-lm":
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(2, ids[:, 1:, None]).squeeze(2) * batch["loss_mask"][:, 1:]
        return float(nll.sum() / batch["loss_mask"][:, 1:].sum()), nll.sum(1).numpy()
    if head == "label-words":
        last = mask.sum(1) - 1  # right padding
        logits = logits[torch.arange(ids.shape[0]), last][:, label_token_ids]
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    return float(loss), logits.numpy()


def perturbed(model, manifest: Manifest, A: dict, D: dict):
    """A copy of `model` whose trained weights are W + A·D (in each layer's stored layout)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for mat in (mat for mat in manifest.matrices if mat.name in A):
            delta = torch.from_numpy(A[mat.name] @ D[mat.name])  # m x n
            weight = twin.get_parameter(mat.name)
            weight += (delta if mat.layout == "out_in" else delta.t()).to(weight.dtype)
    return twin


def read_weight(bundle: Path, mat) -> np.ndarray:
    """W in its stored layout, from the manifest's record into model.onnx.data."""
    rec = mat.weight_data
    count = int(np.prod(mat.stored_shape))
    return np.fromfile(bundle / rec["location"], dtype=mat.dtype, count=count,
                       offset=rec["offset"]).reshape(mat.stored_shape)


def run_bundle(bundle: Path, manifest: Manifest, batch: dict, A: dict | None = None,
               D: dict | None = None, session=None) -> tuple[np.ndarray, np.ndarray]:
    """(loss [P], scores) from onnxruntime; A, D default to zeros with P = 1."""
    import onnxruntime as ort
    if session is None:
        session = ort.InferenceSession(str(bundle / manifest.model_file),
                                       providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in batch.items()}
    for mat in manifest.matrices:
        feed[mat.inputs["W"]] = read_weight(bundle, mat)
        if "A" in mat.inputs:
            m, n = mat.shape
            feed[mat.inputs["A"]] = A[mat.name] if A else np.zeros((m, manifest.rank), np.float32)
            feed[mat.inputs["D"]] = D[mat.name] if D else np.zeros((1, manifest.rank, n), np.float32)
    loss, scores = session.run(["loss", "scores"], feed)
    return loss, scores


def check_bundle(bundle: Path, manifest: Manifest, batch: dict, expected: tuple, dtype: str) -> None:
    """Refuse to finish an export whose ONNX loss differs from PyTorch's (D = 0)."""
    loss, _ = run_bundle(bundle, manifest, batch)
    want = expected[0]
    if not np.isfinite(loss[0]) or abs(loss[0] - want) > TOLERANCE[dtype] * max(abs(want), 1.0):
        raise UserError(f"parity check failed: onnxruntime loss {loss[0]:.7g}, PyTorch {want:.7g}; "
                        f"the bundle was not written (rerun with --no-check to inspect it anyway)")
