"""Write the training graph to ONNX: dynamo exporter through torch.func.functional_call.

functional_call turns the trained weights (and A, D) into named graph inputs; everything
else stays an initializer in external data (model.onnx.data). Recipe and failure modes:
/work/shared/notes/runtime.md section 1. Opset 20 (IR 10) by default; opset 18 is saved
with IR 9 so that onnxruntime 1.16 (JetPack 5) loads it.

The trained W values must reach the device too, and the device has no `onnx` package to
read initializers with: they are appended to model.onnx.data, not referenced by the graph
(so onnxruntime never loads a second copy), and the manifest records each one's offset.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge_zo_export.heads import TrainingGraph

DATA_SUFFIX = ".data"
ALIGN = 64  # byte alignment of the appended weights, so the runtime can memory-map them
IR_FOR_OPSET = {18: 9, 20: 10}


@dataclass
class LiftedInput:
    """One graph input that replaces a state tensor of the model."""

    name: str  # graph input name
    key: str  # state name inside TrainingGraph (functional_call key)
    example: torch.Tensor
    dynamic: dict  # dim index -> torch.export.Dim


class _Lifted(nn.Module):
    """Calls the TrainingGraph with the lifted tensors swapped in (functional_call)."""

    def __init__(self, core: TrainingGraph, keys: list[str]):
        super().__init__()
        self.core, self.keys = core, keys

    def forward(self, input_ids, attention_mask, target, *tensors):
        return torch.func.functional_call(self.core, dict(zip(self.keys, tensors)),
                                          (input_ids, attention_mask, target), strict=False)


def target_input(task: str) -> str:
    return "labels" if task == "classification" else "loss_mask"


def export_graph(core: TrainingGraph, task: str, lifted: list[LiftedInput], path: Path,
                 opset: int, examples: dict[str, torch.Tensor], dims: dict) -> None:
    """Export `core` to `path` (+ external data) with dynamic batch, sequence and P."""
    if opset not in IR_FOR_OPSET:
        raise ValueError(f"opset {opset} unsupported; use one of {sorted(IR_FOR_OPSET)}")
    wrapper = _Lifted(core, [item.key for item in lifted])
    wrapper.eval()  # export restores the wrapper's mode: a training-mode wrapper = dropout on
    batch, seq = dims["batch"], dims["seq"]
    target = target_input(task)
    target_dims = {0: batch} if task == "classification" else {0: batch, 1: seq}
    args = (examples["input_ids"], examples["attention_mask"], examples[target],
            *[item.example for item in lifted])
    # *tensors is one positional entry: its shapes go in a nested tuple (runtime.md 1).
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, target_dims)
    if lifted:
        shapes += (tuple(item.dynamic for item in lifted),)  # {}: all static
    # The exporter's chatter (deprecations, "torchvision is not installed") is not the user's.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, args, dynamo=True, verbose=False, opset_version=opset, dynamic_shapes=shapes,
            input_names=["input_ids", "attention_mask", target, *[i.name for i in lifted]],
            output_names=core.outputs, optimize=True)
    program.model.ir_version = IR_FOR_OPSET[opset]
    program.save(str(path), external_data=True)
    data = data_path(path)
    if not data.exists():  # a graph with no initializers: keep the layout uniform
        data.write_bytes(b"")


def data_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + DATA_SUFFIX)


def append_weights(model_path: Path, tensors: list[torch.Tensor]) -> list[dict]:
    """Append each tensor's bytes to model.onnx.data; return {location, offset, length}."""
    data = data_path(model_path)
    records = []
    with open(data, "ab") as out:
        for tensor in tensors:
            pad = (-out.tell()) % ALIGN
            out.write(b"\0" * pad)
            raw = tensor.detach().contiguous().cpu().numpy().tobytes()
            records.append({"location": data.name, "offset": out.tell(), "length": len(raw)})
            out.write(raw)
    return records
