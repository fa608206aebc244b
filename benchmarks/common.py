"""Helpers shared by the issue-8 benchmarks (step_cost, torch_zo_mopi, memory, convergence).

Exports are made once per (model, graph, rank, sequence length) into a work folder and
reused by every script. The "plain inference model" is the bundle's own inference.onnx
(the same model and head, no A/D inputs, no probe axis: what `edge-zo deploy` serves). Child processes
print one JSON line last; peak RSS is the child's own VmHWM (forward.peak_rss_mib).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

import forward  # noqa: E402  (LABELS, build_tiny, export_once, open_session, make_feed, peak_rss_mib)

peak_rss_mib, rss_mib, open_session = forward.peak_rss_mib, forward.rss_mib, forward.open_session
WORK = forward.WORK
SHAPES = {"minilm": (16, 64), "smollm2-135m": (8, 32), "tiny": (4, 16)}  # default batch x seq


def model_arg(args) -> str:
    """The model folder or built-in name a script runs on (--tiny: a tiny random Llama)."""
    return forward.build_tiny(args.work) if args.tiny else args.model


def tag(args) -> str:
    return "tiny" if args.tiny else args.model


def add_common(p, batch: int | None = None, seq: int | None = None) -> None:
    """Options every script has."""
    p.add_argument("--model", default="minilm", help="minilm or smollm2-135m")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama built from a config: a CI smoke run")
    p.add_argument("--batch", type=int, default=batch, help="rows per forward (default: per model)")
    p.add_argument("--seq", type=int, default=seq, help="tokens per row (default: per model)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (onnxruntime and torch)")
    p.add_argument("--rank", type=int, default=8, help="r of the low-rank bundle")
    p.add_argument("--head", default="auto", help="edge-zo export's --head (auto: the linear head on MiniLM, and on SmolLM2 "
                   "since 2026-12-05; label-words / label-embedding: the heads before, no probe to fit)")
    p.add_argument("--work", type=Path, default=WORK, help="where exports are kept between runs")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON / PNG results")


def add_reference_args(p, lr: float, steps: int, batch: int, tiny: str) -> None:
    """Options of the host-side PyTorch references (ceiling.py, ceiling_text.py): a run of
    `steps` updates at `lr`, scored `evals` times, per seed; `--tiny` is their CI smoke run."""
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--evals", type=int, default=4)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print every run so far as a table")
    p.add_argument("--tiny", action="store_true", help=tiny)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")


def parse_reference(p, argv):
    """Parse a reference's options; `--tiny` runs 4 steps scored twice."""
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.evals = 4, 2
    return args


def fill_shape(args) -> None:
    b, t = SHAPES["tiny" if args.tiny else args.model]
    args.batch, args.seq = args.batch or b, args.seq or t


def exports(args, graphs=("lowrank",)) -> dict[str, Path]:
    """{graph: bundle folder} for "lowrank" and "fullrank", exported once into args.work.

    --tiny exports only the low-rank bundle (one export instead of two keeps the CI run
    short) and hands it out for "fullrank" too: the runtime then evaluates full-rank
    probes on it with D = 0.
    """
    if args.tiny:
        bundle = export(args, "lowrank")
        return {g: bundle for g in graphs}
    return {g: export(args, g) for g in graphs}


def export(args, graph: str) -> Path:
    """One bundle (`edge-zo export` with the model's label words and --max-seq-len seq)."""
    from edge_zo_export.pipeline import ExportOptions, export_bundle
    model = model_arg(args)
    name = Path(model).name if args.tiny else model
    folder = args.work / f"{name}-{graph}-r{args.rank}-t{args.seq}{'' if args.head == 'auto' else '-' + args.head}"
    if not (folder / "manifest.json").is_file():
        export_bundle(ExportOptions(
            model=model, task="classification", out=folder, force=True, rank=args.rank, graph=graph, head=args.head,
            label_words=forward.LABELS.get(model, [" terrible", " great"]),
            probe_slots=4 if graph == "lowrank" else 1, max_seq_len=max(args.seq, 16)))
    return folder


class Plain:
    """The plain inference model of a bundle: its inference.onnx (no A/D inputs, no probe
    axis; W bound once as inputs, as deploy serves it before baking them in)."""

    def __init__(self, bundle: Path, threads: int):
        from edge_zo import loading
        from edge_zo.bundle import read_manifest
        self.manifest = read_manifest(bundle)
        if not self.manifest.inference_file:
            raise SystemExit(f"{bundle} has no inference graph: re-export it with this edge-zo")
        self.session = open_session(bundle / self.manifest.inference_file, threads)
        weights, _ = loading.read_weights(bundle, self.manifest)
        names = {i.name for i in self.session.get_inputs()}
        self.weights = {m.inputs["W"]: weights[m.name] for m in self.manifest.matrices if m.inputs["W"] in names}
        self.feed: dict = {}

    def set_batch(self, input_ids, attention_mask, labels=None) -> None:
        self.feed = {"input_ids": input_ids, "attention_mask": attention_mask, **self.weights}

    def run(self) -> None:
        self.session.run(["scores"], self.feed)


def forwards_per_step(opt_config) -> int:
    """Forward passes one step of an optimizer config takes (its probe plan, or K / 2N)."""
    from edge_zo.optim.estimate import probe_plan
    if hasattr(opt_config, "estimator"):
        return len(probe_plan(opt_config.estimator, opt_config.N))
    return getattr(opt_config, "K", 2 * getattr(opt_config, "N", 1))


def token_batch(batch: int, seq: int, classes: int, seed: int = 0):
    """Random tokens (ids 3..999, valid in every vocabulary here), full mask, labels."""
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 1000, (batch, seq)).astype(np.int64)
    return ids, np.ones_like(ids), rng.integers(0, classes, batch).astype(np.int64)


def env() -> dict:
    """The environment of a benchmark child: host BLAS single-threaded (runtime.md)."""
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def run_child(cmd: list[str], timeout: float | None = None) -> dict:
    """Run a worker; its last stdout line is JSON."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env(), check=False, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"worker {cmd[1:4]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import onnxruntime
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "load_avg_start": os.getloadavg()}


def median(xs) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def command(script: str, argv: list[str] | None) -> str:
    """The command line that produced a report, recorded in its JSON."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def write_json(report: dict, path: Path) -> Path:
    report.setdefault("load_avg_end", os.getloadavg())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


class Stopwatch:
    """Wall seconds since construction (the JSON's `wall_s`: how long a benchmark took)."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
