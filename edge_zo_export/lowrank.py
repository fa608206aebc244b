"""Trained matrices as perturbable layers: y = x W^T + b + ((x D[p]^T) A^T) (DESIGN.md 3).

Each trained nn.Linear (or GPT-2 Conv1D) is swapped for a `PerturbableLinear` that keeps
the original weight and bias parameters under the same names and adds buffers `A` [m, r]
and `D` [P, r, n]. The export lifts W, A and D to graph inputs through
`torch.func.functional_call`, so only their names matter here, not their values.

The token batch is tiled P times (probe-major) before the model runs, so inside a layer
the activations reshape to [P, rows, n] and probe p meets only its own D[p]. A·D is
never formed: two skinny matmuls cost O(rows·r·(m+n)) instead of O(m·n·r).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# Roles of one trained matrix's graph inputs, in the order they are passed to the graph.
LOWRANK_ROLES = ("W", "A", "D")
FULLRANK_ROLES = ("W",)


def layout_of(module: nn.Module) -> str:
    """How a layer stores its weight: nn.Linear is out x in, GPT-2's Conv1D in x out."""
    if isinstance(module, PerturbableLinear):
        return module.layout
    if isinstance(module, Conv1D):
        return "in_out"
    if isinstance(module, nn.Linear):
        return "out_in"
    raise TypeError(f"{type(module).__name__} is neither nn.Linear nor Conv1D")


def matrix_shape(module: nn.Module) -> tuple[int, int]:
    """(m, n) = (out features, in features) whatever the stored layout."""
    rows, cols = module.weight.shape
    return (rows, cols) if layout_of(module) == "out_in" else (cols, rows)


class PerturbableLinear(nn.Module):
    """A Linear/Conv1D whose effective weight is W + A·D[p] for probe slot p."""

    def __init__(self, base: nn.Module, rank: int):
        super().__init__()
        self.layout = layout_of(base)
        self.weight = base.weight  # same Parameter: the state-dict name is unchanged
        self.bias = base.bias
        m, n = matrix_shape(base)
        # Placeholders with the right shapes; the graph inputs replace them.
        self.register_buffer("A", torch.zeros(m, rank), persistent=False)
        self.register_buffer("D", torch.zeros(1, rank, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "out_in":
            y = nn.functional.linear(x, self.weight, self.bias)
        else:  # Conv1D: y = x W + b with W stored in x out
            y = x @ self.weight
            if self.bias is not None:
                y = y + self.bias
        D, A = self.D.to(x.dtype), self.A.to(x.dtype)  # fp16 models: A, D arrive fp32
        probes = D.shape[0]
        xs = x.reshape(probes, -1, x.shape[-1])
        # Measured (benchmarks/forward.py, MiniLM): flattening to 2-D Gemms, or adding
        # low·Aᵀ into y with one addmm, was no faster and used no less memory than this.
        delta = torch.matmul(torch.matmul(xs, D.transpose(1, 2)), A.t())
        return y + delta.reshape(y.shape)


def inject(model: nn.Module, module_names: list[str], rank: int) -> None:
    """Replace each named layer of `model` (in place) by a PerturbableLinear."""
    for name in module_names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, PerturbableLinear(parent.get_submodule(leaf), rank))


def probe_slots(model: nn.Module, module_names: list[str]) -> int | torch.SymInt:
    """P, read from the first trained layer's D (the graph input when exporting)."""
    if not module_names:
        return 1
    layer = model.get_submodule(module_names[0])
    return layer.D.shape[0] if isinstance(layer, PerturbableLinear) else 1


def graph_input_names(param_name: str, roles: tuple[str, ...]) -> dict[str, str]:
    """Readable, unique graph input names: W keeps the parameter name, A/D get '::A'/'::D'."""
    return {role: param_name if role == "W" else f"{param_name}::{role}" for role in roles}


def functional_keys(param_name: str, roles: tuple[str, ...]) -> dict[str, str]:
    """role -> the state name functional_call replaces (W: the weight, A/D: the buffers)."""
    module = param_name.rsplit(".", 1)[0]
    return {role: param_name if role == "W" else f"{module}.{role}" for role in roles}
