"""The bound W under full-rank probes: a probe's perturbation kept until W is next needed.

A full-rank probe (MeZO, LOREN, or a low-rank probe's `.noise` on a dense matrix) adds
scale z(key, name) to the bound W in place (edge_zo/noise.py: blocks of z regenerated,
never stored; the undo is exact, bit for bit). Rather than undo at once, `PerturbedWeights`
keeps the perturbation pending: MeZO's next probe of the same z (-mu after +mu) or its
update (`add_noise` with that z) undoes it and does its own work in one sweep over W;
anything else that needs W as the optimizer sees it calls `settle` first, which restores it.
edge_zo/runtime.py owns the buffers and runs the graph; this file owns what W holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge_zo import noise, rng
from edge_zo import runtime_inputs as checks


class PerturbedWeights:
    """Bound W (name -> providers.Buffer) with at most one pending full-rank perturbation.

    `shapes` are the optimizers' shapes (z's, `Runtime.shapes`); `matrices` the manifest's
    (their stored shape and layout).
    """

    def __init__(self, W: dict, shapes: dict, matrices: dict):
        self.W, self.shapes, self.matrices = W, shapes, matrices
        self.pending: noise.Perturbation | None = None

    def names(self, names) -> list[str]:
        """`names` checked against the trained tensors; None means all of them."""
        names = list(self.shapes) if names is None else list(names)
        unknown = sorted(set(names) - set(self.shapes))
        if unknown:
            raise ValueError(f"unknown trained matrices {unknown}")
        return names

    def perturb(self, new: noise.Perturbation) -> None:
        """W <- W + new, in place, all tensors' blocks on all cores: from W, or from the
        pending perturbation of the same z in the same sweep. If it fails, W is left
        unperturbed."""
        old = self._take_pending(new.key, new.names, new.offsets)
        op = noise.Sweep(undo=None if old is None else old.scale, perturb=new.scale)
        records = noise.sweep(*self._noise_args(new.key, new.names), new.offsets, op, old and old.records)
        self.pending = dataclasses.replace(new, records=records)

    def settle(self) -> None:
        """Restore W bit for bit if a probe left it perturbed."""
        self._take_pending(None, [], [])

    def add_noise(self, key, alpha: float, names=None) -> None:
        """W <- W + alpha z(key, name): the MeZO update (g folded into alpha by the caller);
        when the pending perturbation's z is this one, its undo and the update are one sweep."""
        names = self.names(names)
        plain = [None] * len(names)  # the update adds z itself, not a shifted probe's
        old = self._take_pending(key, names, plain)
        op = noise.Sweep(undo=None if old is None else old.scale, add=alpha)
        noise.sweep(*self._noise_args(key, names), plain, op, old and old.records)

    def add(self, delta: dict[str, np.ndarray]) -> None:
        """W <- W + delta (`shapes[name]`, or a last-dimension vector added to every row): LOREN's update."""
        self.settle()
        for name in self.names(delta):
            shape = self.shapes[name]
            d = np.asarray(delta[name], dtype=np.float32)
            noise.add(self._target(name), checks.shaped(f"delta[{name}]", d, shape[-1:] if d.ndim == 1 else shape))

    def _take_pending(self, key, names: list, offsets: list) -> noise.Perturbation | None:
        """The pending perturbation if it is of this z (the caller's sweep undoes it); else
        None, W restored from any other first."""
        old, self.pending = self.pending, None
        if old is not None and old.same_z(key, names, offsets):
            return old
        if old is not None:
            noise.restore(*self._noise_args(old.key, old.names), old.scale, old.offsets, old.records)
        return None

    def _target(self, name: str) -> noise.Target:
        """Tensor `name` for edge_zo.noise: bound W, z's shape, the stored layout."""
        mat = self.matrices[name]
        return noise.Target(self.W[name], self.shapes[name], tuple(mat.shape), mat.layout)

    def _noise_args(self, key, names) -> tuple[list, list]:
        """edge_zo.noise's targets and z streams for tensors `names` under `key`."""
        return [self._target(n) for n in names], [rng.noise_stream(key, n) for n in names]
