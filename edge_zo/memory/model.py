"""The memory model: a job's peak memory as a sum of components (docs/plan.md).

    peak = max(start-up peak, running peak, plot peak)
    running peak = libraries + model + activations(P, B, T) + optimizer state + data
    plot peak = libraries + metrics plot   (drawn once the runtime is freed, edge_zo/loop.py)
    activations(P, B, T) = B·T·a + P·B·T·b + B·T²·c + P·B·T²·d

What is exact is computed here: the trained weights and a quantized base from the
manifest, the optimizer's state from its `init` on the bundle's shapes, the data from its
files' bytes. What is measured (libraries, the session, the start-up transient, the plot,
and the activation coefficients a..d) is a `Calibration`, made by calibration.py's child
processes. plan.py puts the two together for one job; report.py is the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_zo.errors import UserError

MiB = 1 << 20
# Peak RSS of loading examples per byte of data file: 3.9 for a one-line 2.8 MB JSONL (the
# line, its text, the JSON string and the prompt at once), 2.1 for 30k short rows (rows
# stream since issue 15; before, every parsed row was held beside the examples: 6.7)
DATA_FACTOR = 4.0
N_TERMS = 4


@dataclass(frozen=True)
class Shape:
    probe_slots: int  # P: probes per forward call
    batch: int  # B: rows per forward (a multiple-choice example is one row per candidate)
    seq_len: int  # T: tokens per row

    @property
    def text(self) -> str:
        return f"P={self.probe_slots} B={self.batch} T={self.seq_len}"


def features(shape: Shape) -> tuple[int, int, int, int]:
    """B·T, P·B·T, B·T², P·B·T²: per batch and per probe slot, linear and attention-like."""
    P, B, T = shape.probe_slots, shape.batch, shape.seq_len
    return (B * T, P * B * T, B * T * T, P * B * T * T)


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


def optimizer_mib(manifest, opt_config) -> float:
    """Optimizer state (exact: `init` on the bundle's shapes) plus one step's r x n arrays
    per matrix: ZO-MOPI and ZO-Muon hold N directions B_i, C and G (a probe's D = C ± μB_i
    is made a matrix at a time as the runtime reads it), the others one D; what a step
    allocates besides (the new state, the fold) is measured with the activations. A
    logit bias (export --logit-bias) adds its Adam moments and one step's gradient, float64."""
    from edge_zo.optim import optimizer_for
    from edge_zo.optim.configs import SketchConfig
    from edge_zo.rng import Key

    shapes = manifest.trained_shapes()
    opt = optimizer_for(opt_config)
    if opt.memory_bytes is not None:  # a formula: no need to allocate (LOREN's full momentum)
        state_bytes = opt.memory_bytes(shapes, opt_config)
    else:
        state = opt.init(shapes, opt_config, Key.root(0).child("init"))
        state_bytes = sum(a.nbytes for a in state.to_arrays().values())
    sketched = opt_config.N + 2 if isinstance(opt_config, SketchConfig) else 1  # LOZO, LOREN: one D
    sketches = sketched if manifest.graph == "lowrank" else 0
    probe_bytes = sketches * manifest.rank * sum(s[1] for s in shapes.values() if len(s) == 2) * 4
    bias_bytes = 3 * manifest.logit_bias.shape[1] * 8 if manifest.logit_bias else 0  # m, v, dL/db
    return (state_bytes + probe_bytes + bias_bytes) / MiB


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
    return {"libraries and tokenizer": cal.libraries_mib,
            "model: session and initializers": max(0.0, cal.model_mib - w - base),
            **model,
            f"activations, training and evaluation ({shape.text})": cal.activations_mib(shape),
            "optimizer state": optimizer,
            "data": data}


def _nbytes(mat, adapter_rank: int = 0) -> int:
    """What the runtime binds for a matrix: W, or a quantized base's adapter U [m, R], V [R, n]."""
    if "U" in mat.inputs:
        return (mat.shape[0] + mat.shape[1]) * adapter_rank * 4
    return mat.shape[0] * mat.shape[1] * (2 if mat.dtype == "float16" else 4)


def quantized_nbytes(mat, weights: str) -> int:
    """A quantized base W's bytes in the graph (edge_zo_export/quantize.py): int8 plus a float32 scale
    and int8 zero point per output row; int4 half a byte plus a float32 scale per 32-block."""
    if "U" not in mat.inputs:
        return 0
    m, n = mat.shape
    if weights == "int8":
        return m * n + 5 * m
    return m * -(-n // 32) * (16 + 4)


@dataclass(frozen=True)
class Job:
    """What the planner plans: one fine-tuning job as it will run (plan.py builds it from a
    run's resolved config or from `edge-zo plan`'s options, one way for both)."""

    bundle: str
    shape: Shape  # the job's forward: P probe slots, B rows, T tokens
    choices: int  # rows per example: a multiple-choice example's candidates, else 1
    provider: str  # "cpu" or "cuda", as the run asks for it (a missing CUDA falls back)
    threads: int  # intra-op threads; 0: the physical cores
    preset: str  # the optimizer's name as the user gave it
    opt_config: object  # the run's resolved optimizer config (edge_zo/optim/configs.py)
    data: tuple[str, ...] = ()  # data files whose loading the plan counts
