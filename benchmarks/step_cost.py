"""Step cost against the physical limit: one optimizer step / the bare forwards it needs.

    python benchmarks/step_cost.py --model minilm                 # 16 x 64 tokens
    python benchmarks/step_cost.py --model smollm2-135m           # 8 x 32 tokens
    python benchmarks/step_cost.py --tiny                         # CI smoke run

For each optimizer (its default preset, plus `paper-code`), a step is timed the way the
finetune loop runs it (set_batch, then `opt.step` against edge_zo.runtime.Runtime at
finetune's default probe_slots = 1, or `--probe-slots P` low-rank probes a forward call:
probes, host math, binding), and divided by the time of the same number
of forward passes of the same tokens through the plain inference model (the bundle's
inference.onnx: the same model and head, no A/D inputs, no probe axis). Low-rank methods
run on the low-rank bundle; MeZO and LOREN on the full-rank bundle (W only; the runtime
perturbs W in place and restores it exactly). r is the bundle's, k is lowered to r // 2
as the finetune command does. One worker process holds every session; each round runs
every optimizer once (order rotating) and right after it the plain forwards, so the
ratio of a round compares runs seconds apart under the same load. Reported: median of
the per-round ratios, medians of the parts, and the host overhead (step time outside
session.run). Folds/redraws every ν steps are amortised and rarely fall in the window.
Goal (DESIGN.md section 9): <= 1.15.

Full-rank host work (drawing z, perturb, exact restore, update) runs on
`edge_zo.rng.threads()` threads (EDGE_ZO_NOISE_THREADS, default: the usable cores),
recorded as `noise_threads`; the draws are the same bits whatever the count.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads (runtime.md)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# preset -> graph it runs on
PRESETS = {"zo-mopi": "lowrank", "paper-code": "lowrank", "zo-muon": "lowrank", "lozo": "lowrank",
           "lozo-m": "lowrank", "mezo": "fullrank", "loren": "fullrank"}
GOAL = 1.15


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common(p)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 8; SmolLM2 4)")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--probe-slots", type=int, default=1,
                   help="low-rank probes per forward call (finetune's probe_slots; default 1, as finetune)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.fill_shape(args)
    if args.rounds is None:
        args.rounds = 2 if args.tiny else 4 if args.model == "smollm2-135m" else 8
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker.read_text()))))
        return 0
    clock, machine = common.Stopwatch(), common.machine()  # load average at the start
    paths = common.exports(args, tuple(sorted({PRESETS[p] for p in args.presets})))
    spec = {"paths": {k: str(v) for k, v in paths.items()}, "presets": args.presets, "batch": args.batch,
            "seq": args.seq, "threads": args.threads, "rounds": args.rounds, "probe_slots": args.probe_slots}
    spec_file = args.work / f"step_cost-{common.tag(args)}.json"
    spec_file.write_text(json.dumps(spec))
    export_s = clock()
    samples = common.run_child([sys.executable, __file__, "--worker", str(spec_file)])
    from edge_zo.rng import threads as noise_threads
    report = {"model": common.tag(args), **{k: spec[k] for k in ("batch", "seq", "threads", "rounds", "probe_slots")},
              "command": common.command(__file__, argv),
              "noise_threads": noise_threads(),
              "rank": args.rank, "goal": GOAL, **machine, "summary": summarize(samples),
              "samples": samples, "export_s": export_s, "wall_s": clock()}
    slots = f"-P{args.probe_slots}" if args.probe_slots > 1 else ""
    common.write_json(report, args.results / f"step_cost-{common.tag(args)}{slots}.json")
    for name, row in report["summary"].items():
        print(f"{name:10s} step/bare-forwards {row['ratio']:.3f}  step {row['step_s']:.3f}s  "
              f"{row['forward_passes']} fwd  host {row['host_overhead_s'] * 1e3:.1f} ms")
    return 0


def optimizer_config(preset: str, bundle_rank: int, steps: int = 1000):
    """The optimizer config `edge-zo finetune` would build for this preset and bundle."""
    from edge_zo.runconfig import RunConfig
    return RunConfig(bundle="-", data="-", preset=preset, steps=steps).optimizer_config(bundle_rank)


def worker(spec: dict) -> dict:
    """All sessions in this process; rounds of (step, its bare forwards) per optimizer."""
    from edge_zo.bundle import read_manifest
    from edge_zo.optim import optimizer_for
    from edge_zo.rng import Key
    from edge_zo.runtime import Runtime
    paths, threads = {k: Path(v) for k, v in spec["paths"].items()}, spec["threads"]
    runtimes = {g: Runtime(p, threads=threads, probe_slots=1) for g, p in paths.items()}
    if "lowrank" in runtimes:
        runtimes["lowrank"].set_probe_slots(spec["probe_slots"])  # checked against the bundle's
    if len(set(paths.values())) == 1:  # --tiny: one bundle serves both kinds of probe
        runtimes = dict.fromkeys(paths, next(iter(runtimes.values())))
    bundle = next(iter(paths.values()))
    plain = common.Plain(bundle, threads)
    batch = common.token_batch(spec["batch"], spec["seq"], len(read_manifest(bundle).label_words))
    plain.set_batch(*batch)
    jobs = []
    for preset in spec["presets"]:
        rt = runtimes[PRESETS[preset]]
        config = optimizer_config(preset, rt.manifest.rank)
        opt = optimizer_for(config)
        jobs.append({"preset": preset, "rt": rt, "opt": opt, "key": Key.root(0).child(preset),
                     "state": opt.init(rt.shapes, config, Key.root(0).child(preset, "init")),
                     "config": {k: getattr(config, k) for k in ("eta", "mu", "r", "k", "N", "K", "estimator", "nu")
                                if hasattr(config, k)}})
    samples = {j["preset"]: {"step_s": [], "run_s": [], "plain_s": [], "forward_passes": [], "config": j["config"]}
               for j in jobs}
    for j in jobs:  # warm-up: first step of each, one plain forward
        timed_step(j, batch)
    plain.run()
    for i in range(spec["rounds"]):
        for j in jobs[i % len(jobs):] + jobs[:i % len(jobs)]:
            step_s, run_s, passes = timed_step(j, batch)
            plain_s = 0.0
            for _ in range(passes):
                start = time.perf_counter()
                plain.run()
                plain_s += time.perf_counter() - start
            row = samples[j["preset"]]
            for k, v in (("step_s", step_s), ("run_s", run_s), ("plain_s", plain_s), ("forward_passes", passes)):
                row[k].append(v)
    return samples


def timed_step(job: dict, batch) -> tuple[float, float, int]:
    """One optimizer step as the loop runs it: (wall s, s inside session.run, forwards)."""
    rt, state = job["rt"], job["state"]
    run0, start = rt.run_seconds, time.perf_counter()
    rt.set_batch(*batch)
    job["state"], info = job["opt"].step(state, rt, job["key"].child("step", state.step))
    return time.perf_counter() - start, rt.run_seconds - run0, info.forward_passes


def summarize(samples: dict) -> dict:
    out = {}
    for name, s in samples.items():
        ratios = [a / b for a, b in zip(s["step_s"], s["plain_s"])]
        passes = int(common.median(s["forward_passes"]))
        out[name] = {"ratio": common.median(ratios), "forward_passes": passes,
                     "step_s": common.median(s["step_s"]),
                     "bare_forward_s": common.median(p / n for p, n in zip(s["plain_s"], s["forward_passes"])),
                     "graph_forward_vs_plain": common.median(
                         r / p for r, p in zip(s["run_s"], s["plain_s"])),
                     "host_overhead_s": common.median(a - b for a, b in zip(s["step_s"], s["run_s"])),
                     "meets_goal": common.median(ratios) <= GOAL}
    return out


if __name__ == "__main__":
    sys.exit(main())
