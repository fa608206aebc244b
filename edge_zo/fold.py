"""The low-rank fold on the bound buffers (the exact full-rank perturbation is in noise.py).

Fold (low-rank methods): W <- W + A C once per sketch window, on the execution provider,
by a one-node graph (Gemm computes A C + W without an m x n intermediate, which MatMul +
Add would allocate) written into a small scratch buffer, then copied into the bound W. fp16 weights add a Cast on each side so the sum is taken in fp32.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge_zo import onnxproto
from edge_zo.providers import Buffer, Placement, session_options


def fold_model(dtype: str = "float32") -> bytes:
    """Y = A B + W for W [x, y] of `dtype`, A [x, k] and B [k, y] float32."""
    a = onnxproto.value_info("a", "float32", ["x", "k"])
    b = onnxproto.value_info("b", "float32", ["k", "y"])
    w = onnxproto.value_info("w", dtype, ["x", "y"])
    y = onnxproto.value_info("y", dtype, ["x", "y"])
    if dtype == "float32":
        nodes = [onnxproto.node("Gemm", ["a", "b", "w"], ["y"])]
    else:
        nodes = [onnxproto.node("Cast", ["w"], ["w32"], to=1),
                 onnxproto.node("Gemm", ["a", "b", "w32"], ["y32"]),
                 onnxproto.node("Cast", ["y32"], ["y"], to=onnxproto.ELEM_CODES[dtype])]
    return onnxproto.model(nodes, [a, b, w], [y])


class Folder:
    """Runs the fold graph on the session's provider, through a small scratch buffer."""

    CHUNK = 1 << 20  # elements per fold run on CPU: a 4 MiB scratch, whatever the model

    def __init__(self, placement: Placement, dtype: str, threads: int | None = None):
        self.placement = placement
        self.dtype = np.dtype(dtype)
        self.session = ort.InferenceSession(fold_model(dtype), session_options(threads),
                                            providers=placement.providers)
        self._scratch = np.empty(0, self.dtype)

    def scratch(self, size: int) -> np.ndarray:
        """Host memory the provider writes Y into before it is copied into the bound W."""
        if self._scratch.size < size:
            self._scratch = np.empty(size, self.dtype)
        return self._scratch[:size]

    def fold(self, w: Buffer, a: np.ndarray, c: np.ndarray, layout: str = "out_in") -> None:
        """W <- W + A C; a W stored in,out ("in_out") gets (A C)^T = C^T A^T.

        CPU (zero-copy W): row blocks of W are folded through a scratch of CHUNK elements.
        A device W cannot be sliced, so it goes through a scratch of its own size (one
        matrix, never all of them).
        """
        left, right = (a, c) if layout == "out_in" else (c.T, a.T)
        if not w.zero_copy:
            out = self.scratch(int(np.prod(w.shape))).reshape(w.shape)
            self.run(w.value, left, right, out)
            w.write(out)
            return
        rows = max(1, self.CHUNK // w.shape[1])
        for start in range(0, w.shape[0], rows):
            block = w.host[start:start + rows]
            out = self.scratch(block.size).reshape(block.shape)
            self.run(ort.OrtValue.ortvalue_from_numpy(block), left[start:start + rows], right, out)
            np.copyto(block, out)
        w.counter[0] += w.host.nbytes

    def run(self, w_value: ort.OrtValue, left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
        device, device_id = self.placement.device, self.placement.device_id
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("w", w_value)
        for name, arr in (("a", left), ("b", right)):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, device, device_id))
        binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(out))
        self.session.run_with_iobinding(binding)


def startup_check(placement: Placement) -> None:
    """One real run on the provider, checked against numpy: a CUDA wheel built for another
    GPU lists the provider and fails only when a kernel runs."""
    rng = np.random.default_rng(0)
    w, a, b = (rng.standard_normal(s, dtype=np.float32) for s in ((8, 8), (8, 2), (2, 8)))
    folder = Folder(placement, "float32", threads=1)
    out = np.empty_like(w)
    folder.run(ort.OrtValue.ortvalue_from_numpy(w, placement.device, placement.device_id), a, b, out)
    if not np.allclose(out, w + a @ b, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the provider's result differs from numpy's")
