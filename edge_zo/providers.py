"""Execution providers: session options, CUDA options from a profile, fallback, buffers.

Everything here that is not CUDA itself runs (and is tested) on a CPU-only machine: the
option dictionaries, the choice of provider, the fallback to CPU with a warning when the
CUDA provider is missing or fails its start-up run, and where buffers live.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnxruntime as ort
import psutil

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA}


class ProviderFallback(UserWarning):
    """CUDA was asked for but the session runs on the CPU; the message says why."""


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def session_options(threads: int | None = None, initializers: dict | None = None) -> ort.SessionOptions:
    """Options every edge-zo session uses.

    ORT_ENABLE_ALL: optimization levels below EXTENDED cost +200-250 MiB peak on OPT-125m.
    intra-op threads = physical cores: hyper-threads only contend for the same FPUs.
    `initializers` (graph name -> OrtValue) replace the model's own copies of the base
    weights, so onnxruntime never loads them (they are overridable: also graph inputs).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Memory patterns off: with them on, the second run of each shape allocated a fresh
    # block beside the first run's, doubling a job's activation memory (measured: peak of a
    # P=4, B=32 fixture job 441 -> 282 MiB, a tiny Llama forward 696 -> 395 MiB, same speed).
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3  # the overridable-initializer warning is expected, by design
    for name, value in (initializers or {}).items():
        opts.add_initializer(name, value)
    return opts


def cuda_options(profile=None, device_id: int = 0, mem_limit_mib: int | None = None) -> dict:
    """CUDA provider options from a device profile (DESIGN.md section 3).

    gpu_mem_limit caps the arena: the discrete GPU's memory, or on a unified-memory board
    (Jetson) the host budget, unless the planner passes a tighter `mem_limit_mib`.
    kSameAsRequested: the default power-of-two arena growth can overshoot a small board.
    """
    if mem_limit_mib is None and profile is not None:
        mem_limit_mib = profile.gpu_memory_mib or profile.budget_mib
    opts = {"device_id": str(device_id), "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC"}
    if mem_limit_mib:
        opts["gpu_mem_limit"] = str(int(mem_limit_mib) << 20)
    return opts


@dataclass
class Placement:
    """Where the session runs and where its input buffers live."""

    provider: str  # "cpu" or "cuda": what actually runs
    device: str  # OrtValue device for bound buffers: "cpu" or "cuda"
    device_id: int = 0
    requested: str = "cpu"
    fallback_reason: str = ""
    options: dict = field(default_factory=dict)

    @property
    def providers(self) -> list:
        if self.provider == "cuda":
            return [(CUDA, self.options), CPU]
        return [CPU]


def place(requested: str, profile=None, available: list[str] | None = None,
          device_id: int = 0, mem_limit_mib: int | None = None) -> Placement:
    """Decide provider and buffer device; CUDA missing from the build falls back to CPU.

    On CUDA the base weights live in device OrtValues and the host copy is dropped, also
    on a Jetson: CPU and GPU share its RAM, so a host copy would cost the same RAM twice.
    """
    if requested not in PROVIDER_NAMES:
        raise ValueError(f"execution provider {requested!r} is not one of {sorted(PROVIDER_NAMES)}")
    if requested == "cpu":
        return Placement("cpu", "cpu")
    available = ort.get_available_providers() if available is None else available
    if CUDA not in available:
        return Placement("cpu", "cpu", requested="cuda", fallback_reason=(
            f"this onnxruntime build has no CUDA provider (it has {', '.join(available)}); "
            "install onnxruntime-gpu for this device"))
    return Placement("cuda", "cuda", device_id, "cuda",
                     options=cuda_options(profile, device_id, mem_limit_mib))


def cpu_fallback(placement: Placement, reason: str) -> Placement:
    warnings.warn(f"CUDA requested but running on the CPU: {reason}", ProviderFallback, stacklevel=3)
    return Placement("cpu", "cpu", requested=placement.requested, fallback_reason=reason)


def open_session(model_path: str, placement: Placement, threads: int | None,
                 make_initializers: Callable[[Placement], dict],
                 startup_check: Callable[[ort.InferenceSession, Placement], None],
                 create=ort.InferenceSession):
    """(session, placement, seconds): a CUDA session that cannot start falls back to CPU.

    A wheel built for another GPU lists the CUDA provider and fails only when it runs, so
    `startup_check` runs real work on the session; any failure there or in session
    creation re-opens on the CPU with a warning. `make_initializers` builds the buffers
    for the chosen device (it is called again after a fallback).
    """
    if placement.fallback_reason:
        placement = cpu_fallback(placement, placement.fallback_reason)
    while True:
        start = time.perf_counter()
        try:
            opts = session_options(threads, make_initializers(placement))
            session = create(str(model_path), opts, providers=placement.providers)
            if placement.provider == "cuda":
                if CUDA not in session.get_providers():
                    raise RuntimeError("onnxruntime did not enable the CUDA provider for this session")
                startup_check(session, placement)
            return session, placement, time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - any CUDA failure means: run on the CPU
            if placement.provider != "cuda":
                raise
            placement = cpu_fallback(placement, f"start-up check failed ({type(err).__name__}: {err})")


class Buffer:
    """A bound input: an OrtValue the session reads, plus its host array when there is one.

    CPU: `ortvalue_from_numpy` wraps the numpy array without a copy, so writing the array
    is writing the input. Other devices: an ORT-owned device tensor written with
    `update_inplace`; `keep_host` keeps a host staging array (A, D: small), W keeps none.
    """

    def __init__(self, array: np.ndarray, device: str = "cpu", device_id: int = 0,
                 keep_host: bool = True, counter: list | None = None, zero_copy: bool | None = None):
        self.device = device
        # zero_copy=False on "cpu" runs the device code path (tests on a CPU-only machine)
        self.zero_copy = device == "cpu" if zero_copy is None else zero_copy
        self.counter = counter if counter is not None else [0]  # bytes written to inputs
        if self.zero_copy:
            self.host = np.ascontiguousarray(array)
            self.value = ort.OrtValue.ortvalue_from_numpy(self.host)
        else:
            self.value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, device, device_id)
            self.value.update_inplace(np.ascontiguousarray(array))
            self.host = np.array(array, copy=True) if keep_host else None
        self.shape, self.dtype = tuple(array.shape), array.dtype

    def read(self) -> np.ndarray:
        """The current values: the live array on CPU, a host copy elsewhere."""
        return self.host if self.zero_copy else self.value.numpy()

    def write(self, values: np.ndarray) -> None:
        if self.zero_copy:
            np.copyto(self.host, values)
        else:
            if self.host is not None:
                np.copyto(self.host, values)
            self.value.update_inplace(np.ascontiguousarray(values, dtype=self.dtype))
        self.counter[0] += self.host.nbytes if self.host is not None else int(np.asarray(values).nbytes)

    def push(self, nbytes: int) -> None:
        """The host staging array was written in place (`nbytes` of it): send it over."""
        if not self.zero_copy:
            self.value.update_inplace(self.host)
        self.counter[0] += nbytes


class SlotBuffer:
    """A probe-slot input D [P, r, n]; a call with p <= P probes binds the first p slots.

    On CPU the p-slot OrtValue is a zero-copy view of the first p slots of one array.
    """

    def __init__(self, shape: tuple, device: str = "cpu", device_id: int = 0, counter: list | None = None,
                 zero_copy: bool | None = None):
        self.host = np.zeros(shape, np.float32)
        self.device, self.device_id = device, device_id
        self.zero_copy = device == "cpu" if zero_copy is None else zero_copy
        self.counter = counter if counter is not None else [0]
        self._values: dict[int, ort.OrtValue] = {}

    def value(self, p: int) -> ort.OrtValue:
        if p not in self._values:
            if self.zero_copy:
                self._values[p] = ort.OrtValue.ortvalue_from_numpy(self.host[:p])
            else:
                self._values[p] = ort.OrtValue.ortvalue_from_shape_and_type(
                    (p,) + self.host.shape[1:], np.float32, self.device, self.device_id)
        return self._values[p]

    def push(self, p: int) -> None:
        """Slots 0..p-1 of `host` were written: make the bound p-slot input see them."""
        if not self.zero_copy:
            self.value(p).update_inplace(self.host[:p])
        self.counter[0] += self.host[:p].nbytes
