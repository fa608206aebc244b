"""The runtime's checks of what it is given: a batch (the user's data, so UserError with
the fix) and the optimizers' arrays (a programming error when wrong, so ValueError)."""

from __future__ import annotations

import numpy as np

from edge_zo.errors import UserError


def shaped(what: str, arr, shape, dtype=np.float32) -> np.ndarray:
    """An optimizer's array (A, D, C, W, an offset) in the exact shape the buffer has: a
    wrong one is the caller's bug (ValueError), not the user's input."""
    arr = np.asarray(arr)
    if arr.shape != tuple(shape):
        raise ValueError(f"{what} has shape {list(arr.shape)}, expected {list(shape)}")
    return arr.astype(dtype, copy=False)


def int_matrix(name: str, arr, shape=None, max_len: int | None = None) -> np.ndarray:
    """A batch's token ids or attention mask: [batch, sequence] int64 within max_len."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"batch input {name!r}: expected a 2-D integer array [batch, sequence], "
                        f"got {arr.dtype} {list(arr.shape)}")
    if shape is not None and arr.shape != shape:
        raise UserError(f"batch input {name!r} has shape {list(arr.shape)}, input_ids has {list(shape)}")
    if max_len is not None and not 1 <= arr.shape[1] <= max_len:
        raise UserError(f"batch input {name!r}: sequence length {arr.shape[1]} is outside 1..{max_len}, "
                        "the bundle's max_seq_len")
    if arr.shape[0] < 1:
        raise UserError(f"batch input {name!r} is empty")
    return np.ascontiguousarray(arr, dtype=np.int64)


def labels(labels, batch: int, classes: int) -> np.ndarray:
    if labels is None:
        raise UserError("batch input 'labels' is required for a classification bundle")
    arr = np.asarray(labels)
    if arr.shape != (batch,) or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"batch input 'labels': expected {batch} integers, got {arr.dtype} {list(arr.shape)}")
    if arr.size and (arr.min() < 0 or arr.max() >= classes):
        raise UserError(f"batch input 'labels': values must be label indices 0..{classes - 1}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def loss_mask(mask, shape) -> np.ndarray:
    if mask is None:
        raise UserError("batch input 'loss_mask' is required for a causal-lm bundle")
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise UserError(f"batch input 'loss_mask' has shape {list(arr.shape)}, input_ids has {list(shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)
