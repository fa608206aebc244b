"""Forward latency and peak memory: the training graph (P = 1 and P > 1) vs plain inference.

Run by hand (DESIGN.md section 9: targets are measured here, never by timed tests):

    python benchmarks/forward.py --model minilm
    python benchmarks/forward.py --model smollm2-135m
    python benchmarks/forward.py --tiny            # a seconds-long smoke run for CI

It exports, once per model into --work, the low-rank training bundle and a plain export of
the same loss head with every weight an initializer (edge_zo_export.pipeline.export_inference_graph).
Timing: one worker process holds both graphs and alternates their runs (order rotating),
so load from other processes hits every variant alike. Memory: one fresh worker per variant
(numpy + onnxruntime only), peak RSS = its VmHWM. The JSON holds every sample and medians.
Goal: at P = 1, <= 1.15x the plain graph's time and <= 1.10x its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = Path(tempfile.gettempdir()) / "edge-zo-bench-issue8"  # exports shared by every script
LABELS = {"minilm": ["negative", "positive"], "smollm2-135m": [" negative", " positive"]}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        print(json.dumps(measure_memory(args) if args.worker_memory else measure_time(args)))
        return 0
    model = build_tiny(args.work) if args.tiny else args.model
    bundle, plain = export_once(model, args)
    timing = run_worker(["--worker", str(plain), "--bundle", str(bundle)], args)
    memory = {name: [run_worker(["--worker", str(graph), "--bundle", str(bundle), "--worker-memory",
                                 "--probes", str(probes)], args) for _ in range(args.rounds)]
              for name, graph, probes in variants(bundle, plain, args.probes)}
    report = summarize(timing, memory, args, model)
    out = args.out or RESULTS / f"forward-{'tiny' if args.tiny else args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2), f"\nwrote {out}")
    return 0


def variants(bundle: Path, plain: Path, probes: int) -> list[tuple[str, Path, int]]:
    graph = bundle / "model.onnx"
    return [("plain", plain, 1), ("lowrank-P1", graph, 1), (f"lowrank-P{probes}", graph, probes)]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="minilm, smollm2-135m or a model folder")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama, small batch: a smoke run")
    p.add_argument("--batch", type=int, default=16, help="rows per forward")
    p.add_argument("--seq", type=int, default=64, help="tokens per row")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--rank", type=int, default=8, help="r of the training graph")
    p.add_argument("--probes", type=int, default=4, help="the P > 1 measured besides P = 1")
    p.add_argument("--rounds", type=int, default=3, help="memory workers per variant")
    p.add_argument("--iters", type=int, default=10, help="timed rounds (plain, P = 1, P > 1 each, alternating)")
    p.add_argument("--work", type=Path, default=WORK, help="where exports are kept between runs")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--bundle", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.seq, args.rounds, args.iters = 4, 16, 1, 5
    return args


def build_tiny(work: Path) -> str:
    sys.path.insert(0, str(REPO / "tests" / "export"))
    import tiny_models
    folder = work / "tiny-llama"
    if not (folder / "config.json").is_file():
        tiny_models.build("llama", folder)
    return str(folder)


def export_once(model: str, args) -> tuple[Path, Path]:
    """(training bundle, plain graph), exported on the first run and reused after."""
    from edge_zo_export.pipeline import ExportOptions, export_bundle, export_inference_graph
    tag = Path(model).name if args.tiny else model
    # the same folder as benchmarks/common.export's low-rank bundle: one export serves all scripts
    bundle = args.work / f"{tag}-lowrank-r{args.rank}-t{max(args.seq, 16)}{'' if args.probes == 4 else f'-p{args.probes}'}"
    plain = args.work / f"{tag}-plain" / "model.onnx"
    words = LABELS.get(model, [" terrible", " great"])
    opts = dict(model=model, task="classification", rank=args.rank, label_words=words,
                probe_slots=args.probes, max_seq_len=max(args.seq, 16))
    if not (bundle / "manifest.json").is_file():
        export_bundle(ExportOptions(out=bundle, force=True, **opts))
    if not plain.is_file():
        plain.parent.mkdir(parents=True, exist_ok=True)
        export_inference_graph(ExportOptions(out=plain.parent, force=True, **opts), plain)
    return bundle, plain


def run_worker(extra: list[str], args) -> dict:
    cmd = [sys.executable, __file__, *extra, "--batch", str(args.batch), "--seq", str(args.seq),
           "--threads", str(args.threads), "--iters", str(args.iters), "--probes", str(args.probes)]
    if "--probes" in extra:  # the memory worker's own P comes first; drop the default
        cmd = cmd[:-2]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def open_session(graph: Path, threads: int, spin: bool = True):
    """spin=False: onnxruntime's idle workers sleep at once instead of spinning for work (so
    they do not take the cores from another runtime timed in the same process)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def make_feed(session, manifest, bundle: Path, batch: int, seq: int, probes: int) -> dict:
    """Random tokens; for the training graph W from the bundle, random A and small D."""
    import numpy as np
    rng = np.random.default_rng(0)
    names = {i.name for i in session.get_inputs()}
    feed = {"input_ids": rng.integers(3, 1000, (batch, seq)),
            "attention_mask": np.ones((batch, seq), np.int64),
            "labels": rng.integers(0, len(manifest.label_words), batch)}
    for mat in manifest.matrices:
        if mat.inputs["W"] in names:  # the runtime owns W, A, D (no copy inside onnxruntime)
            rec, (m, n) = mat.weight_data, mat.shape
            feed[mat.inputs["W"]] = np.fromfile(bundle / rec["location"], mat.dtype,
                                                int(np.prod(mat.stored_shape)),
                                                offset=rec["offset"]).reshape(mat.stored_shape)
            feed[mat.inputs["A"]] = rng.standard_normal((m, manifest.rank), np.float32)
            feed[mat.inputs["D"]] = rng.standard_normal((probes, manifest.rank, n), np.float32) * 1e-3
    return feed


def measure_time(args) -> dict:
    """Both graphs in one process, runs alternating (order rotating each round), so load
    from other processes hits all variants alike; wall and process CPU time per run."""
    from edge_zo.bundle import read_manifest
    manifest = read_manifest(args.bundle)
    plain = open_session(args.worker, args.threads)
    train = open_session(args.bundle / manifest.model_file, args.threads)
    runs = [(n, s, make_feed(s, manifest, args.bundle, args.batch, args.seq, p))
            for n, s, p in (("plain", plain, 1), ("lowrank-P1", train, 1),
                            (f"lowrank-P{args.probes}", train, args.probes))]
    samples = {name: {"wall_s": [], "cpu_s": []} for name, _, _ in runs}
    for name, session, feed in runs:  # warm-up
        session.run(["loss"], feed)
    for i in range(args.iters):
        for name, session, feed in runs[i % 3:] + runs[: i % 3]:
            wall, cpu = time.perf_counter(), time.process_time()
            session.run(["loss"], feed)
            samples[name]["wall_s"].append(time.perf_counter() - wall)
            samples[name]["cpu_s"].append(time.process_time() - cpu)
    return samples


def measure_memory(args) -> dict:
    """One graph in a fresh process: peak RSS over session creation, warm-up and one run."""
    from edge_zo.bundle import read_manifest
    manifest = read_manifest(args.bundle)
    baseline = rss_mib()  # interpreter + numpy + onnxruntime, before any model
    session = open_session(args.worker, args.threads)
    feed = make_feed(session, manifest, args.bundle, args.batch, args.seq, args.probes)
    for _ in range(2):
        session.run(["loss"], feed)
    return {"peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline}


def peak_rss_mib() -> float:
    """VmHWM of this process. Not ru_maxrss: that inherits the parent's peak across fork."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def summarize(timing: dict, memory: dict, args, model: str) -> dict:
    names = list(timing)
    med = {}
    for name in names:
        runs = memory[name]
        med[name] = {
            "wall_s": statistics.median(timing[name]["wall_s"]),
            "cpu_s": statistics.median(timing[name]["cpu_s"]),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "peak_above_baseline_mib": statistics.median(r["peak_rss_mib"] - r["baseline_rss_mib"]
                                                         for r in runs)}
    plain, p1, pn = (med[name] for name in names)
    # Per-round ratios (the runs of one round are seconds apart, under the same load).
    per_round = [a / b for a, b in zip(timing["lowrank-P1"]["wall_s"], timing["plain"]["wall_s"])]
    return {
        "model": model, "batch": args.batch, "seq": args.seq, "threads": args.threads,
        "rank": args.rank, "probes": args.probes, "iters": args.iters, "memory_rounds": args.rounds,
        "load_avg": os.getloadavg(), "medians": med, "timing": timing, "memory": memory,
        "ratios": {
            "time_P1_vs_plain": p1["wall_s"] / plain["wall_s"],
            "time_P1_vs_plain_median_of_rounds": statistics.median(per_round),
            "cpu_time_P1_vs_plain": p1["cpu_s"] / plain["cpu_s"],
            "peak_P1_vs_plain": p1["peak_rss_mib"] / plain["peak_rss_mib"],
            "peak_above_baseline_P1_vs_plain":
                p1["peak_above_baseline_mib"] / plain["peak_above_baseline_mib"],
            f"time_per_probe_P{args.probes}_vs_plain": pn["wall_s"] / args.probes / plain["wall_s"],
            f"peak_P{args.probes}_vs_plain": pn["peak_rss_mib"] / plain["peak_rss_mib"],
        },
    }


if __name__ == "__main__":
    sys.exit(main())
