"""Quantized base weights (issue 19): forward time, peak memory and fold drift, fp32 vs int8 vs 4-bit.

Run by hand on an exported low-rank bundle (never by timed tests):

    python benchmarks/quantized.py --bundle /work/qwork/quality-minilm-negative-positive-t128 \
        --checkpoint RUN/best/ckpt-000000747.npz

Variants, one graph each, written once into --work from the bundle's model.onnx by
edge_zo_export/quantize.py: fp32 (the training graph as exported, W fed as inputs as the runtime
binds them) and the forms of edge_zo_export.quantize.FORMS. FORM@R: the same with the rank-R adapter
inputs U, V of a quantized bundle (zeros). FORM@R+e: also the token embedding and a tied LM
head quantized (edge_zo_export/quantize_embed.py): what `export --weights int8|int4` writes since
2026-12-05. torch-fp32 / torch-bf16: the exporter's own PyTorch module of the bundle's model
and head (torch_zo_mopi.load_torch_core), eager, under inference_mode, bf16 by CPU autocast.
Timing: one worker process holds every variant and alternates their runs (order rotating
each round), so load from other processes hits all alike. Neither runtime's idle threads spin
(onnxruntime allow_spinning 0, OMP_WAIT_POLICY=PASSIVE): spinning onnxruntime workers took the
2 cores from PyTorch's runs and doubled their time (MiniLM torch-fp32 1.5 s beside onnxruntime,
1.07 s alone, 2026-12-05). Memory: one fresh worker per
variant, peak RSS = its VmHWM over loading and two forwards; `peak_above_baseline` subtracts
the RSS after the imports (numpy + onnxruntime, and torch + transformers for torch-*: ~10x
larger), the fair comparison between the two runtimes. Agreement: the largest
|score - fp32 score| of the measured batch. Drift (--checkpoint, a finished run of the
same bundle): of the run's accumulated update ΔW = W_run - W_base, the part an int8 base keeps
when it is re-quantized at the fold, and the part a rank-R adapter keeps.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from forward import open_session, peak_rss_mib, rss_mib  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORK = Path(tempfile.gettempdir()) / "edge-zo-bench-issue19"
VARIANTS = ("fp32", "int8", "int8-dq", "int4", "int8-nbits")
TORCH = {"torch-fp32": None, "torch-bf16": "bfloat16"}  # variant -> autocast dtype
DEFAULT = "fp32,int8@32,int4@32,int8@32+e,int4@32+e,torch-fp32,torch-bf16"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        print(json.dumps(measure_memory(args) if args.worker_memory else measure_time(args)))
        return 0
    graphs = build_variants(args)
    timing = run_worker(["--worker", "time"], args)
    memory = {name: [run_worker(["--worker", name, "--worker-memory"], args) for _ in range(args.rounds)]
              for name in graphs}
    report = summarize(timing, memory, args)
    report["command"] = " ".join(["python", "benchmarks/quantized.py", *(sys.argv[1:] if argv is None else argv)])
    if args.checkpoint:
        report["drift"] = drift(args)
    out = args.out or RESULTS / f"quantized-{args.bundle.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["load_avg_end"] = os.getloadavg()
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"medians": report["medians"], "ratios": report["ratios"],
                      "drift": report.get("drift", {}).get("summary")}, indent=2), f"\nwrote {out}")
    return 0


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="a low-rank bundle made by edge-zo export")
    p.add_argument("--checkpoint", type=Path, default=None, help="a run's checkpoint .npz on this bundle (drift)")
    p.add_argument("--batch", type=int, default=16, help="rows per forward")
    p.add_argument("--seq", type=int, default=64, help="tokens per row")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--probes", type=int, default=1, help="P of each training-graph forward")
    p.add_argument("--rounds", type=int, default=2, help="memory workers per variant")
    p.add_argument("--iters", type=int, default=10, help="timed rounds (every variant once per round)")
    p.add_argument("--variants", default=DEFAULT, help="comma-separated: " + ", ".join(VARIANTS + tuple(TORCH))
                   + "; FORM@R adds a rank-R adapter, +e the quantized token embedding and tied LM head")
    p.add_argument("--work", type=Path, default=WORK, help="where the quantized graphs are kept between runs")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-memory", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def variant_path(args, name: str) -> Path:
    if name == "fp32":
        return args.bundle / "model.onnx"
    return args.work / args.bundle.name / name / "model.onnx"


def build_variants(args) -> dict[str, Path]:
    """name -> graph; each quantized graph is written once (edge_zo_export.quantize.quantize_graph)."""
    import onnx

    from edge_zo.bundle import read_manifest
    from edge_zo.loading import read_weights
    from edge_zo_export.quantize import Target, quantize_graph
    from edge_zo_export.quantize_embed import quantize_embeddings
    names = args.variants.split(",")
    manifest = read_manifest(args.bundle)
    weights = None
    for name in names:
        path = variant_path(args, name)
        if name == "fp32" or name in TORCH or path.is_file():
            continue
        weights = weights or read_weights(args.bundle, manifest)[0]
        model = onnx.load(str(args.bundle / manifest.model_file))
        targets = [Target(m.inputs["W"], weights[m.name], m.layout) for m in manifest.matrices if not m.dense]
        spec, _, extra = name.partition("+")
        form, _, rank = spec.partition("@")
        quantize_graph(model, targets, form, int(rank or 0), keep_notes=manifest.task == "causal-lm")  # as export
        if extra == "e":
            quantize_embeddings(model, form)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    return {name: variant_path(args, name) for name in names}


def run_worker(extra: list[str], args) -> dict:
    cmd = [sys.executable, __file__, *extra, "--bundle", str(args.bundle), "--batch", str(args.batch),
           "--seq", str(args.seq), "--threads", str(args.threads), "--iters", str(args.iters),
           "--probes", str(args.probes), "--variants", args.variants, "--work", str(args.work)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tokens(args, manifest, rng) -> dict:
    """The measured batch (every variant the same): random ids 3..999, full mask, labels (a
    causal-lm bundle: the loss on every token)."""
    import numpy as np
    ids = rng.integers(3, 1000, (args.batch, args.seq))
    if manifest.task == "causal-lm":
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones(ids.shape, np.float32)}
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "labels": rng.integers(0, len(manifest.label_words), args.batch)}


def open_variant(args, manifest, name: str):
    """run(output) -> numpy array ("loss" or "scores") for one variant, loaded and ready."""
    if name in TORCH:
        return torch_variant(args, manifest, TORCH[name])
    session = open_session(variant_path(args, name), args.threads, spin=False)  # see the top
    feed = make_feed(session, manifest, args.bundle, args)
    return lambda output: session.run([output], feed)[0]


def torch_variant(args, manifest, autocast: str | None):
    """The bundle's model and head in PyTorch eager (P = 1, no A/D), fp32 or bf16 autocast."""
    import numpy as np
    import torch
    from torch_zo_mopi import load_torch_core
    if manifest.task != "classification":
        raise SystemExit(f"torch-* variants measure classification bundles; {args.bundle} is {manifest.task}")
    source = manifest.source
    opts = argparse.Namespace(threads=args.threads, work=args.work, seq=args.seq, head=source["head"])
    core, _ = load_torch_core(opts, source["model"], manifest.label_words)
    batch = [torch.from_numpy(a) for a in tokens(args, manifest, np.random.default_rng(0)).values()]

    def run(output: str):
        with torch.inference_mode(), torch.autocast("cpu", dtype=getattr(torch, autocast or "bfloat16"),
                                                     enabled=autocast is not None):
            loss, scores = core(*batch)[:2]
        return (loss if output == "loss" else scores).float().numpy()
    return run


def make_feed(session, manifest, bundle: Path, args) -> dict:
    """Random tokens; W (where still a graph input) from the bundle, random A and small D."""
    import numpy as np

    from edge_zo.loading import locate_weights, read_tensor
    rng = np.random.default_rng(0)
    names = {i.name for i in session.get_inputs()}
    feed = tokens(args, manifest, rng)
    records = locate_weights(bundle, manifest)[0]
    for mat in manifest.matrices:
        (m, n), inputs = mat.shape, mat.inputs
        if inputs["W"] in names:  # only these: a quantized graph's peak must not hold fp32 W it never uses
            feed[inputs["W"]] = read_tensor(bundle, bundle / manifest.model_file, records[mat.name], mat)
        if "A" in inputs:
            feed[inputs["A"]] = rng.standard_normal((m, manifest.rank), np.float32)
            feed[inputs["D"]] = rng.standard_normal((args.probes, manifest.rank, n), np.float32) * 1e-3
    for arg in session.get_inputs():  # adapter factors (NAME@R variants): zero, as at the start of a run
        if arg.name.endswith(("::U", "::V")):
            feed[arg.name] = np.zeros(arg.shape, np.float32)
    return feed


def measure_time(args) -> dict:
    """Every variant in one process, runs alternating; wall and CPU seconds, scores' agreement."""
    import numpy as np

    from edge_zo.bundle import read_manifest
    manifest = read_manifest(args.bundle)
    runs = [(name, open_variant(args, manifest, name)) for name in args.variants.split(",")]
    scores = {name: run("scores") for name, run in runs}  # also the warm-up
    samples = {name: {"wall_s": [], "cpu_s": []} for name, _ in runs}
    for i in range(args.iters):
        k = i % len(runs)
        for name, run in runs[k:] + runs[:k]:
            wall, cpu = time.perf_counter(), time.process_time()
            run("loss")
            samples[name]["wall_s"].append(time.perf_counter() - wall)
            samples[name]["cpu_s"].append(time.process_time() - cpu)
    ref = scores["fp32"] if "fp32" in scores else None
    for name in samples:
        samples[name]["max_abs_score_diff"] = None if ref is None else float(np.abs(scores[name] - ref).max())
    samples["score_scale"] = None if ref is None else float(np.abs(ref).max())
    return samples


def measure_memory(args) -> dict:
    """One variant in a fresh process: peak RSS over session creation, feed and two runs."""
    from edge_zo.bundle import read_manifest
    manifest = read_manifest(args.bundle)
    if args.worker in TORCH:  # its imports belong to the baseline, as onnxruntime's do
        import torch  # noqa: F401
        import edge_zo_export.pipeline  # noqa: F401
    baseline, phases = rss_mib(), {"imports": rss_parts()}
    run = open_variant(args, manifest, args.worker)
    phases["loaded"] = rss_parts()  # session (initializers, prepacked weights) or model, and the feed
    for _ in range(2):
        run("loss")
    phases["ran"] = rss_parts()  # + activations, and what the arena keeps of them
    return {"peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline, "phases": phases}


def rss_parts() -> dict:
    """RSS now, split: anonymous (heap, arena, prepacked weights) and file-backed (libraries,
    and the pages of mmap-ed external initializers the session has touched)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def summarize(timing: dict, memory: dict, args) -> dict:
    med = {}
    for name, runs in memory.items():
        med[name] = {"wall_s": statistics.median(timing[name]["wall_s"]),
                     "cpu_s": statistics.median(timing[name]["cpu_s"]),
                     "max_abs_score_diff": timing[name]["max_abs_score_diff"],
                     "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                     "peak_above_baseline_mib": statistics.median(r["peak_rss_mib"] - r["baseline_rss_mib"] for r in runs)}
    ratios = {}
    if "fp32" in med:
        base = med["fp32"]
        for name in med:
            per_round = [a / b for a, b in zip(timing[name]["wall_s"], timing["fp32"]["wall_s"])]
            ratios[name] = {"time_vs_fp32": med[name]["wall_s"] / base["wall_s"],
                            "time_vs_fp32_median_of_rounds": statistics.median(per_round),
                            "peak_vs_fp32": med[name]["peak_rss_mib"] / base["peak_rss_mib"],
                            "peak_above_baseline_vs_fp32":
                                med[name]["peak_above_baseline_mib"] / base["peak_above_baseline_mib"]}
            if "torch-bf16" in timing:  # the bar for int8: ahead of PyTorch bf16
                ratios[name]["time_vs_torch_bf16_median_of_rounds"] = statistics.median(
                    a / b for a, b in zip(timing[name]["wall_s"], timing["torch-bf16"]["wall_s"]))
    return {"bundle": str(args.bundle), "batch": args.batch, "seq": args.seq, "threads": args.threads,
            "probes": args.probes, "iters": args.iters, "memory_rounds": args.rounds,
            "load_avg": os.getloadavg(), "score_scale": timing.get("score_scale"),
            "medians": med, "ratios": ratios, "timing": timing, "memory": memory}


def drift(args, ranks=(8, 16, 32)) -> dict:
    """How much of a run's update ΔW each place for it keeps (relative Frobenius error).

    requantize: the int8 base re-quantized after adding ΔW, its scales kept (what a fold into
    an int8 W does), error = |deq(Q(deq(Q(W)) + ΔW)) - deq(Q(W)) - ΔW| / |ΔW|.
    adapter-R: ΔW kept as its best rank-R approximation beside a frozen base.
    """
    import numpy as np

    from edge_zo.bundle import read_manifest
    from edge_zo.loading import read_weights
    from edge_zo_export.quantize import dequantize_int8, quantize_int8
    manifest = read_manifest(args.bundle)
    base = read_weights(args.bundle, manifest)[0]
    per = {}
    with np.load(args.checkpoint, allow_pickle=False) as run:
        for mat in manifest.matrices:
            if mat.dense or f"W/{mat.name}" not in run.files:
                continue
            w, delta = base[mat.name].T, (run[f"W/{mat.name}"] - base[mat.name]).T  # [K, N]
            q, scale = quantize_int8(w)
            start = dequantize_int8(q, scale)
            moved = np.clip(np.rint((start + delta) / scale), -127, 127) * scale - start
            s = np.linalg.svd(delta, compute_uv=False)
            norm = float(np.linalg.norm(delta))
            per[mat.name] = {"delta_norm": norm, "delta_rms_over_step": float(np.sqrt(np.mean(delta ** 2)) / scale.mean()),
                             "requantize": float(np.linalg.norm(moved - delta)) / norm,
                             **{f"adapter-{r}": float(np.sqrt(np.sum(s[r:] ** 2))) / norm for r in ranks}}
    keys = [k for k in next(iter(per.values())) if k != "delta_norm"]
    summary = {k: statistics.median(v[k] for v in per.values()) for k in keys}
    return {"checkpoint": str(args.checkpoint), "summary": summary, "per_matrix": per}


if __name__ == "__main__":
    sys.exit(main())
