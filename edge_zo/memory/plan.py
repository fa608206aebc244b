"""The memory planner: predict a fine-tuning job's peak memory and what shape would fit.

DESIGN.md section 5; docs/plan.md has the measurements. A job's peak process memory is

    peak = max(start-up peak, running peak, plot peak)
    running peak = libraries + model + activations(P, B, T) + optimizer state + data
    plot peak = libraries + metrics plot   (drawn once the runtime is freed, edge_zo/loop.py)
    activations(P, B, T) = B·T·a + P·B·T·b + B·T²·c + P·B·T²·d

`libraries` (python, onnxruntime, numpy, tokenizers, the tokenizer), `model` (the session's
initializers, a quantized bundle's frozen base among them, plus the bound trained weights W
or adapter U, V), the start-up transient and the metrics
plot (~35-40 MiB of matplotlib) are read off a child process that opens the bundle. a..d
are a non-negative least-squares fit to four calibration children at the job's batch,
P in {1, 2} x T in {T/2, T}, each running what a job runs at that shape (an evaluation,
two real optimizer steps, an evaluation), each in its own process so that no arena
serves two calibrations. Why a job's sequence and not one forward: onnxruntime's arena
keeps what a run allocated and, with memory patterns on, a shape's second run allocates
its pattern beside the first run's blocks (a tiny exported Llama, P 4 B 8 T 256: one
forward 320 MiB, the job's activations ~390 MiB). Why the job's own batch: the arena
makes activations superlinear in B and T, and extrapolating from one small pass
under-predicted large shapes by 20-28%. Measured error of the whole model: -8% to +4% on
two fixture models and a tiny exported Llama (tests/memory/test_plan_accuracy.py) while the
plot was drawn beside the runtime; since it is drawn after, -13% to -5% on the fixtures (the
running sum alone falls short of the jobs' step peaks by 10-23 MiB).
The optimizer's state is exact (its `init` on the bundle's shapes, summed). Data: loading
examples peaks at up to ~4x their files' bytes (DATA_FACTOR); a batch's tokens stay
B x max_seq_len however long a text is (edge_zo/data.encode_tail).

Calibrations are cached under $XDG_CACHE_HOME/edge-zo/plan (keyed by the bundle's files,
onnxruntime's version, provider, threads, optimizer and shapes): a first plan costs four
child processes (MiniLM: 20-70 s on a 2-core CPU, a line said per pass), the next one (and
`finetune --profile` after `plan`) none. The children are edge_zo/memory/child.py; what a
plan made here means for a profile's device is edge_zo/memory/target.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_zo.bundle import read_manifest
from edge_zo.errors import UserError

MiB = 1 << 20
CALIBRATION_TOKENS = 8192  # B·T of a calibration pass at most; larger jobs extrapolate in B
# Peak RSS of loading examples per byte of data file: 3.9 for a one-line 2.8 MB JSONL (the
# line, its text, the JSON string and the prompt at once), 2.1 for 30k short rows (rows
# stream since issue 15; before, every parsed row was held beside the examples: 6.7)
DATA_FACTOR = 4.0


@dataclass(frozen=True)
class Shape:
    probe_slots: int  # P: probes per forward call
    batch: int  # B: examples per forward
    seq_len: int  # T: tokens per example

    @property
    def text(self) -> str:
        return f"P={self.probe_slots} B={self.batch} T={self.seq_len}"


@dataclass
class Calibration:
    """What one bundle measured on this machine; all sizes in MiB, coefficients in bytes."""

    libraries_mib: float
    model_mib: float
    load_peak_mib: float  # start-up transient above the libraries
    plot_mib: float
    coef: tuple  # bytes per feature of the activations model (`features`)
    points: list = field(default_factory=list)

    def activations_mib(self, shape: Shape) -> float:
        return sum(c * f for c, f in zip(self.coef, features(shape))) / MiB


N_TERMS = 4


def features(shape: Shape) -> tuple[int, int, int, int]:
    """B·T, P·B·T, B·T², P·B·T²: per batch and per probe slot, linear and attention-like."""
    P, B, T = shape.probe_slots, shape.batch, shape.seq_len
    return (B * T, P * B * T, B * T * T, P * B * T * T)


# ---- calibration ------------------------------------------------------------------------

def calibration_shapes(job: Shape, max_slots: int) -> list[Shape]:
    """P in {1, 2} x T in {T/2, T} at the job's batch (capped): a job's P only scales."""
    T = job.seq_len
    B = max(1, min(job.batch, CALIBRATION_TOKENS // T))
    return [Shape(p, B, t) for p in sorted({1, min(2, max_slots)}) for t in sorted({max(1, T // 2), T})]


def calibrate(bundle: str | Path, job: Shape, provider: str = "cpu", threads: int | None = None,
              preset: str | None = None, optimizer: dict | None = None, use_cache: bool = True,
              profile=None) -> Calibration:
    """Measure the bundle near `job` (child processes), or read the measurement from the cache.

    `preset` and `optimizer` (overrides) pick the optimizer whose steps are measured; the
    default is zo-mopi for a low-rank bundle, mezo for a full-rank one. With the `profile`
    planned for, what a calibration on this host means for its device is said once
    (edge_zo/memory/target.py); without one, only a CUDA request calibrated on the CPU.
    """
    from edge_zo.data import load_tokenizer
    from edge_zo.memory import target

    manifest = read_manifest(bundle)
    load_tokenizer(bundle, manifest)  # a bad tokenizer.json: its one-line error here, not a child's traceback
    target.say(provider, threads, profile, manifest)
    preset = preset or ("zo-mopi" if manifest.graph == "lowrank" else "mezo")
    shapes = calibration_shapes(job, manifest.probe_slots if manifest.graph == "lowrank" else 1)
    spec = {"bundle": str(bundle), "provider": provider, "threads": threads or 0, "preset": preset,
            "optimizer": optimizer or {}}
    path = _cache_path(Path(bundle), [json.dumps(spec, sort_keys=True), *(s.text for s in shapes)])
    if use_cache and path.is_file():
        return Calibration(**json.loads(path.read_text()))
    points = [_measure({**spec, "shape": asdict(s), "plot": i == 0}, i, len(shapes))
              for i, s in enumerate(shapes)]
    first = points[0]
    cal = Calibration(libraries_mib=first["libraries"], model_mib=first["model"],
                      load_peak_mib=max(p["load_peak"] for p in points),
                      plot_mib=first["plot"], coef=_fit(points), points=points)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cal)))
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


# ---- prediction -------------------------------------------------------------------------

def optimizer_mib(manifest, opt_config) -> float:
    """Optimizer state (exact: `init` on the bundle's shapes) plus one step's r x n arrays
    per matrix: ZO-MOPI and ZO-Muon hold N directions B_i, C and G (a probe's D = C ± μB_i
    is made a matrix at a time as the runtime reads it), the others one D; what a step
    allocates besides (the new state, the fold) is measured with the activations."""
    from edge_zo.optim import optimizer_for
    from edge_zo.rng import Key

    shapes = manifest.trained_shapes()
    opt = optimizer_for(opt_config)
    if opt.memory_bytes is not None:  # a formula: no need to allocate (LOREN's full momentum)
        state_bytes = opt.memory_bytes(shapes, opt_config)
    else:
        state = opt.init(shapes, opt_config, Key.root(0).child("init"))
        state_bytes = sum(a.nbytes for a in state.to_arrays().values())
    from edge_zo.optim.configs import SketchConfig
    sketched = opt_config.N + 2 if isinstance(opt_config, SketchConfig) else 1  # LOZO, LOREN: one D
    sketches = sketched if manifest.graph == "lowrank" else 0
    probe_bytes = sketches * manifest.rank * sum(s[1] for s in shapes.values() if len(s) == 2) * 4
    return (state_bytes + probe_bytes) / MiB


def data_mib(files) -> float:
    """Loading the examples: DATA_FACTOR x the files' bytes. Tokenizing adds nothing that
    grows with the data: a batch is tokenized when its step comes, a long text from a
    suffix (data.encode_tail), so its tokens are B x max_seq_len at most."""
    missing = [f for f in files if f and not Path(f).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: data file not found; the plan counts the data's size")
    return DATA_FACTOR * sum(Path(f).stat().st_size for f in files if f) / MiB


def predict(cal: Calibration, manifest, shape: Shape, optimizer: float = 0.0,
            data: float = 0.0) -> dict[str, float]:
    """Component -> MiB of a job's running peak (see the module docstring)."""
    w = sum(_nbytes(m, manifest.adapter_rank) for m in manifest.matrices) / MiB
    base = sum(quantized_nbytes(m, manifest.weights) for m in manifest.matrices) / MiB
    # export --weights int8|int4: the frozen base is among the session's initializers, the
    # bound trained tensors are the adapters U, V (and any fp32 W: the head's)
    model = {f"model: {manifest.weights} base W (frozen)": base,
             "model: trained adapters U, V and fp32 W": w} if base else {"model: trained weights W": w}
    parts = {"libraries and tokenizer": cal.libraries_mib,
             "model: session and initializers": max(0.0, cal.model_mib - w - base),
             **model,
             f"activations, training and evaluation ({shape.text})": cal.activations_mib(shape),
             "optimizer state": optimizer,
             "data": data}
    return parts


def _nbytes(mat, adapter_rank: int = 0) -> int:
    """What the runtime binds for a matrix: W, or a quantized base's adapter U [m, R], V [R, n]."""
    if "U" in mat.inputs:
        return (mat.shape[0] + mat.shape[1]) * adapter_rank * 4
    return mat.shape[0] * mat.shape[1] * (2 if mat.dtype == "float16" else 4)


def quantized_nbytes(mat, weights: str) -> int:
    """A quantized base W's bytes in the graph (export/quantize.py): int8 plus a float32 scale
    and int8 zero point per output row; int4 half a byte plus a float32 scale per 32-block."""
    if "U" not in mat.inputs:
        return 0
    m, n = mat.shape
    if weights == "int8":
        return m * n + 5 * m
    return m * -(-n // 32) * (16 + 4)


@dataclass
class Plan:
    """A prediction against a budget, with the largest shapes that fit when it does not."""

    shape: Shape
    parts: dict[str, float]
    start_up_mib: float
    plot_peak_mib: float  # metrics.png, drawn after the runtime is freed: not on top of it
    budget_mib: float | None
    fits_shapes: dict = field(default_factory=dict)  # "batch"/"seq_len"/"probe_slots" -> int

    @property
    def total_mib(self) -> float:
        return max(sum(self.parts.values()), self.start_up_mib, self.plot_peak_mib)

    @property
    def margin_mib(self) -> float | None:
        return None if self.budget_mib is None else self.budget_mib - self.total_mib

    @property
    def fits(self) -> bool:
        return self.budget_mib is None or self.margin_mib >= 0

    def table(self) -> str:
        lines = [f"{'component':52s} {'MiB':>8s}"]
        lines += [f"{name:52s} {mib:8.1f}" for name, mib in self.parts.items()]
        lines.append(f"{'start-up peak (loading the bundle)':52s} {self.start_up_mib:8.1f}")
        lines.append(f"{'plot peak (metrics.png, after the runtime)':52s} {self.plot_peak_mib:8.1f}")
        lines.append(f"{'predicted peak':52s} {self.total_mib:8.1f}")
        if self.budget_mib is not None:
            lines.append(f"{'budget':52s} {self.budget_mib:8.1f}")
            pct = 100 * self.margin_mib / self.budget_mib
            lines.append(f"{'margin':52s} {self.margin_mib:8.1f}  ({pct:+.0f}% of the budget)")
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        if self.budget_mib is None:
            return f"predicted peak {self.total_mib:.0f} MiB (no budget given)"
        if self.fits:
            return (f"fits: {self.shape.text} needs {self.total_mib:.0f} MiB of the "
                    f"{self.budget_mib:.0f} MiB budget")
        return self.refusal()

    def refusal(self) -> str:
        head = (f"{self.shape.text} needs {self.total_mib:.0f} MiB, over the "
                f"{self.budget_mib:.0f} MiB budget by {-self.margin_mib:.0f} MiB")
        options = [f"{_FLAGS[k]} {v}" for k, v in self.fits_shapes.items() if v]
        if options:
            return head + "; what fits, each alone: " + ", ".join(options) + \
                " (a shorter sequence means re-exporting with a lower --max-seq-len or shorter texts)"
        return head + ("; no batch, sequence length or probe slots fit: the model alone is too big "
                       "for this budget, use a device with more memory or an fp16 bundle")

    def to_json(self) -> dict:
        return {"shape": asdict(self.shape), "components_mib": self.parts,
                "start_up_mib": self.start_up_mib, "plot_peak_mib": self.plot_peak_mib,
                "predicted_peak_mib": self.total_mib,
                "budget_mib": self.budget_mib, "margin_mib": self.margin_mib, "fits": self.fits,
                "largest_that_fit": self.fits_shapes, "verdict": self.verdict()}


_FLAGS = {"batch": "batch size", "seq_len": "sequence length", "probe_slots": "probe slots"}


def make_plan(cal: Calibration, manifest, shape: Shape, budget_mib: float | None,
              optimizer: float = 0.0, data: float = 0.0) -> Plan:
    def plan_for(s: Shape) -> Plan:
        start = cal.libraries_mib + cal.load_peak_mib + data
        return Plan(s, predict(cal, manifest, s, optimizer, data), start, cal.libraries_mib + cal.plot_mib,
                    budget_mib)

    plan = plan_for(shape)
    if not plan.fits:
        limits = {"batch": shape.batch, "seq_len": shape.seq_len, "probe_slots": shape.probe_slots}
        plan.fits_shapes = {k: _largest(lambda v, k=k: plan_for(_with(shape, k, v)).fits, hi)
                            for k, hi in limits.items()}
    return plan


def plan_job(config, budget_mib: float | None, threads: int | None = None) -> Plan:
    """The plan of a finetune run's config (RunConfig): its shape, optimizer and data files;
    `threads`: the runtime's intra-op threads when the config leaves them open (a profile's)."""
    manifest = read_manifest(config.bundle)
    opt_config = config.optimizer_config(manifest.rank)
    # A multiple-choice example is one row per candidate (COPA: 2 rows an example).
    rows = config.batch_size * len(getattr(config.prompt_template(), "choices", ("one row",)))
    shape = Shape(config.probe_slots, rows, manifest.max_seq_len)
    cal = calibrate(config.bundle, shape, config.provider, config.threads or threads, config.preset,
                    config.optimizer)
    return make_plan(cal, manifest, shape, budget_mib, optimizer_mib(manifest, opt_config),
                     data_mib([config.data, config.eval_data]))


def _with(shape: Shape, key: str, value: int) -> Shape:
    return Shape(**{**asdict(shape), key: value})


def _largest(fits, hi: int) -> int:
    """The largest v in 1..hi with fits(v) (the prediction grows with v), 0 when none."""
    lo, best = 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best
