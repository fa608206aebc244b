"""Calibration: measure a bundle near a job's shape in child processes, and cache it.

The activation coefficients a..d of the memory model (model.py) are a non-negative
least-squares fit to four calibration children at the job's batch, P in {1, 2} x T in
{T/2, T}, each running what the job runs at that shape through the loop's own functions
(an evaluation, two optimizer steps of the job's optimizer with its values, an evaluation:
edge_zo/memory/child.py), each in its own process so that no onnxruntime arena serves two
calibrations. Why a job's sequence and not one forward: the arena keeps what a run
allocated, and the job's runs differ in shape (evaluations at P = 1, probe calls at P
slots) and in what they bind (probes, a fold), so its activations exceed one forward's.
Why the job's own batch: the arena makes activations superlinear in B and T, and
extrapolating from one small pass under-predicted large shapes by 20-28%.

Calibrations are cached under $XDG_CACHE_HOME/edge-zo/plan, keyed by the bundle's files,
onnxruntime's and Python's versions, provider, threads, the optimizer's resolved values,
rows per example and shapes: a first plan costs four child processes (MiniLM: 20-70 s on a
2-core CPU, a line said per pass), the next one (and `finetune --profile` after `plan` of
the same job) none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edge_zo.bundle import read_manifest
from edge_zo.errors import UserError
from edge_zo.memory.model import MiB, N_TERMS, Calibration, Job, Shape, features

CALIBRATION_TOKENS = 8192  # B·T of a calibration pass at most; larger jobs extrapolate in B


def calibration_shapes(job: Shape, max_slots: int, choices: int = 1) -> list[Shape]:
    """P in {1, 2} x T in {T/2, T} at the job's batch (capped, whole examples): a job's P only scales."""
    T = job.seq_len
    B = max(choices, min(job.batch, CALIBRATION_TOKENS // T) // choices * choices)
    return [Shape(p, B, t) for p in sorted({1, min(2, max_slots)}) for t in sorted({max(1, T // 2), T})]


def child_spec(job: Job) -> dict:
    """What a calibration child needs to run the job's passes (JSON: it crosses a process)."""
    return {"bundle": str(job.bundle), "provider": job.provider, "threads": job.threads, "preset": job.preset,
            "optimizer": dataclasses.asdict(job.opt_config), "choices": job.choices}


def calibrate(job: Job, use_cache: bool = True, profile=None) -> Calibration:
    """Measure the bundle near the job's shape (child processes), or read it from the cache.

    With the `profile` planned for, what a calibration on this host means for its device is
    said once (edge_zo/memory/target.py); without one, only a CUDA request calibrated on the CPU.
    """
    from edge_zo.data import load_tokenizer
    from edge_zo.memory import target

    manifest = read_manifest(job.bundle)
    load_tokenizer(job.bundle, manifest)  # a bad tokenizer.json: its one-line error here, not a child's traceback
    target.say(job.provider, job.threads or None, profile, manifest)
    slots = manifest.probe_slots if manifest.graph == "lowrank" else 1
    shapes = calibration_shapes(job.shape, slots, job.choices)
    spec = child_spec(job)
    # The schedule's length changes no array a step holds: `plan` (no steps) and a run of
    # any length share one calibration
    key = {**spec, "optimizer": {k: v for k, v in spec["optimizer"].items() if k != "decay_steps"}}
    path = _cache_path(Path(job.bundle), [json.dumps(key, sort_keys=True), *(s.text for s in shapes)])
    if use_cache and path.is_file():
        return Calibration(**json.loads(path.read_text()))
    points = [_measure({**spec, "shape": dataclasses.asdict(s), "plot": i == 0}, i, len(shapes))
              for i, s in enumerate(shapes)]
    first = points[0]
    cal = Calibration(libraries_mib=first["libraries"], model_mib=first["model"],
                      load_peak_mib=max(p["load_peak"] for p in points),
                      plot_mib=first["plot"], coef=_fit(points), points=points)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(cal)))
    return cal


def _measure(spec: dict, index: int = 0, count: int = 1) -> dict:
    """One calibration child; a line on the terminal per pass (a first plan takes tens of
    seconds on a small CPU, see docs/plan.md; the cache makes the next one instant)."""
    cmd = [sys.executable, "-m", "edge_zo.memory.child", json.dumps(spec)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # as `edge-zo` runs
    if index == 0:
        print(f"edge-zo: plan: calibrating in {count} child processes (cached for the next plan)", file=sys.stderr,
              flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    print(f"edge-zo: plan: calibration pass {index + 1}/{count} at {Shape(**spec['shape']).text}: "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"calibrating {spec['bundle']} at {Shape(**spec['shape']).text} failed "
                        f"(exit {result.returncode}: {last}); if it ran out of memory, so would the "
                        "job: plan a smaller --batch or --seq-len")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _fit(points: list[dict]) -> tuple:
    """Non-negative least squares of the features: every subset of free terms, best fit kept."""
    import numpy as np

    X = np.array([features(Shape(p["P"], p["B"], p["T"])) for p in points], float)
    y = np.array([p["activations"] * MiB for p in points], float)
    best, best_err = (0.0,) * N_TERMS, float(np.sum(y ** 2))
    for mask in range(1, 1 << N_TERMS):
        cols = [i for i in range(N_TERMS) if mask >> i & 1]
        sol = np.linalg.lstsq(X[:, cols], y, rcond=None)[0]
        if np.any(sol < 0):
            continue
        err = float(np.sum((X[:, cols] @ sol - y) ** 2))
        if err < best_err - 1e-9:
            coef = [0.0] * N_TERMS
            for i, v in zip(cols, sol):
                coef[i] = float(v)
            best, best_err = tuple(coef), err
    return best


def _cache_path(bundle: Path, what: list[str]) -> Path:
    import onnxruntime

    key = [onnxruntime.__version__, sys.version.split()[0], *what]
    for f in sorted(p for p in bundle.iterdir() if p.is_file()):
        st = f.stat()
        key.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:20]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "edge-zo" / "plan" / f"{digest}.json"
