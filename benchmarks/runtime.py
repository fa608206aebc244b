"""Runtime cost per probe and host-side overhead per step, at MiniLM and SmolLM2-135M shapes.

    python benchmarks/runtime.py [--models minilm smollm2] [--steps 3] [--probes 8]

Writes benchmarks/results/runtime.json. Until `export/` writes real bundles this uses
synthetic bundles with the real models' trained-matrix shapes (q, k, v, o and MLP
matrices of every block, rank-8 A and D inputs), the token batch of DESIGN.md section 9
(16 x 64 for MiniLM, 16 x 32 for SmolLM2 to keep the run short on 2 cores), and a cheap
stand-in for attention and the head: per-probe FLOPs are those of the trained matmuls.
Host overhead = wall time of `Runtime.losses` minus the time inside `session.run`
(writing D, binding, reading losses). D arrays are made before the clock starts: they
are the optimizer's work, not the runtime's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: see edge_zo/runtime.py

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_zo.bundle import Manifest, TrainedMatrix, write_manifest  # noqa: E402
from edge_zo.runtime import Runtime  # noqa: E402
from tests.runtime.fixtures import LABEL_WORDS, _Graph, write_tokenizer  # noqa: E402

# name -> (layers, hidden, kv width, ffn, gated MLP, batch, seq)
MODELS = {
    "minilm": dict(layers=6, hidden=384, kv=384, ffn=1536, gated=False, batch=16, seq=64),
    "smollm2": dict(layers=30, hidden=576, kv=192, ffn=1536, gated=True, batch=16, seq=32),
}
RANK, SLOTS = 8, 4


def build(folder: Path, layers, hidden, kv, ffn, gated, batch, seq) -> Manifest:
    """A bundle whose trained matrices have the model's shapes (see the module docstring)."""
    rng = np.random.default_rng(0)
    g, mats = _Graph(), []
    g.inits += [numpy_helper.from_array(np.asarray(v, np.int64), n)
                for n, v in (("axis0", [0]), ("axis1", [1]), ("last", [-1]))]
    g.inits.append(numpy_helper.from_array(0.02 * rng.standard_normal((64, hidden)).astype(np.float32), "embed"))
    ids = g.input("input_ids", TensorProto.INT64, ["B", "T"])
    g.input("attention_mask", TensorProto.INT64, ["B", "T"])
    g.input("labels", TensorProto.INT64, ["B"])
    x = g.op("Unsqueeze", [g.op("Gather", ["embed", ids], "x0"), "axis0"], "h0")

    def lin(h, name, m, n):
        mat = TrainedMatrix(name, (m, n), inputs={r: name if r == "W" else f"{name}::{r}" for r in "WAD"})
        mats.append(mat)
        g.inits.append(numpy_helper.from_array((rng.standard_normal((m, n)) / np.sqrt(n)).astype(np.float32), name))
        return g.linear(h, mat, RANK, token_dims=2)

    for i in range(layers):
        p = f"layers.{i}."
        q, k, v = (lin(x, p + s, w, hidden) for s, w in (("q", hidden), ("k", kv), ("v", kv)))
        attn = g.op("Mul", [k, v], p + "kv")  # stand-in for attention: keeps k, v live
        o = lin(g.op("Tanh", [q], p + "qa"), p + "o", hidden, hidden)
        x = g.op("Add", [g.op("Add", [x, o], p + "r1"),
                         g.op("ReduceMean", [attn, "last"], p + "kvm", keepdims=1)], p + "x1")
        up = lin(x, p + "up", ffn, hidden)
        if gated:
            up = g.op("Mul", [up, g.op("Sigmoid", [lin(x, p + "gate", ffn, hidden)], p + "gs")], p + "gu")
        x = g.op("Add", [x, lin(g.op("Tanh", [up], p + "act"), p + "down", hidden, ffn)], p + "x2")
    sq = g.op("Mul", [x, x], "sq")
    g.op("ReduceMean", [g.op("ReduceMean", [sq, "last"], "tok", keepdims=0), "last"], "scores", keepdims=0)
    g.op("ReduceMean", ["scores", "last"], "loss", keepdims=0)
    outputs = [helper.make_tensor_value_info("loss", TensorProto.FLOAT, ["P"]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["P", "B"])]
    model = helper.make_model(helper.make_graph(g.nodes, "bench", g.inputs, outputs, g.inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)
    manifest = Manifest(task="classification", graph="lowrank", rank=RANK, probe_slots=SLOTS,
                        max_seq_len=seq, matrices=mats, source={"model": "synthetic"},
                        exporter={"onnx": onnx.__version__}, opset=18, label_words=LABEL_WORDS)
    write_manifest(folder, manifest)
    write_tokenizer(folder / "tokenizer.json", ["[PAD]", "[UNK]", *LABEL_WORDS])
    return manifest


class Probe:
    def __init__(self, D):
        self.sketch_id, self.D = 0, D


def measure(folder: Path, spec: dict, steps: int, probes: int, slots: int) -> dict:
    rt = Runtime(folder, probe_slots=slots)
    warm = rt.warmup(spec["batch"])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 64, size=(spec["batch"], spec["seq"])).astype(np.int64)
    rt.set_batch(ids, np.ones_like(ids), labels=np.zeros(spec["batch"], np.int64))
    rt.set_sketch(0, {n: rng.standard_normal((m, RANK), dtype=np.float32) for n, (m, _) in rt.shapes.items()})
    walls, runs, written = [], [], []
    for _ in range(steps):
        batch = [Probe({n: 1e-3 * rng.standard_normal((RANK, k), dtype=np.float32)
                        for n, (_, k) in rt.shapes.items()}) for _ in range(probes)]
        run0, bytes0, start = rt.run_seconds, rt.bytes_written[0], time.perf_counter()
        rt.losses(batch)
        walls.append(time.perf_counter() - start)
        runs.append(rt.run_seconds - run0)
        written.append(rt.bytes_written[0] - bytes0)
    wall, run = float(np.median(walls)), float(np.median(runs))
    return {"probe_slots": slots, "probes_per_step": probes, "session_s": rt.startup["session_s"],
            "warmup_s": warm, "step_s": wall, "run_s": run, "per_probe_s": wall / probes,
            "host_overhead_s": wall - run, "host_overhead_pct": 100 * (wall - run) / wall,
            "bytes_written_per_probe": int(np.median(written)) // probes,
            "trained_weight_bytes": 4 * sum(m * n for m, n in rt.shapes.values()),
            "threads": rt.startup["intra_op_threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "runtime.json")
    args = parser.parse_args()
    results = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "onnxruntime": ort.__version__, "OPENBLAS_NUM_THREADS": os.environ["OPENBLAS_NUM_THREADS"],
               "bundles": "synthetic, real trained-matrix shapes (export/ not runnable yet)", "models": {}}
    for name in args.models:
        spec = MODELS[name]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = build(Path(tmp), **spec)
            rows = [measure(Path(tmp), spec, args.steps, args.probes, s) for s in (1, SLOTS)]
        results["models"][name] = {"shape": spec, "matrices": len(manifest.matrices),
                                   "build_s": time.perf_counter() - start, "runs": rows}
        for row in rows:
            print(f"{name:8s} P={row['probe_slots']} step {row['step_s']:.3f}s  per probe {row['per_probe_s'] * 1e3:.1f} ms"
                  f"  host overhead {row['host_overhead_s'] * 1e3:.2f} ms ({row['host_overhead_pct']:.2f}%)"
                  f"  D bytes/probe {row['bytes_written_per_probe']} of W {row['trained_weight_bytes']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
