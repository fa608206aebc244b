"""Peak memory of a fine-tuning job against plain inference and against backprop with AdamW.

    python benchmarks/memory.py --model minilm                    # 16 x 64 tokens
    python benchmarks/memory.py --model smollm2-135m              # 8 x 32 tokens
    python benchmarks/memory.py --tiny

Each variant runs in its own fresh process; peak RSS is its VmHWM, and the RSS after its
imports (before any model) is recorded so the import baselines (onnxruntime vs torch) can
be told apart from the model's memory:
  plain      the bundle's inference.onnx (its W bound once as inputs), 3 forwards, onnxruntime's
             default session options
  plain-edge the same with edge-zo's session options (edge_zo.providers.session_options:
             memory patterns off, which keeps ORT from allocating a second activation block
             on the second run of a shape): the baseline with the job's own arena behaviour
  finetune   the real loop (edge_zo.loop.finetune) on the low-rank bundle, a few steps of
             each preset asked for, data made of texts long enough that every batch is
             exactly batch x seq tokens (the same shape as the plain forwards)
  backprop   PyTorch eager, the exporter's module and loss head, AdamW on the bundle's
             trained matrices (and on every parameter: `backprop-all`), loss.backward()
Variants alternate round by round; medians over rounds. Goal (DESIGN.md section 9):
finetune <= 1.25x plain; a fraction of backprop's. Each plain and finetune run also records
`phases`: VmRSS and VmHWM (MiB) after each phase of the job (imports, tokenizer, runtime,
optimizer state, each step, checkpoint, plot), which is where section 3's breakdown comes from.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = 1.25
TEXT = "it was a great movie and the actors are good but the plot is thin . "


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common(p)
    p.add_argument("--presets", nargs="+", default=["zo-mopi", "paper-code"], help="finetune presets measured")
    p.add_argument("--steps", type=int, default=None, help="finetune / backprop steps (default 4; tiny 2)")
    p.add_argument("--rounds", type=int, default=None, help="processes per variant (default 2; tiny 1)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.fill_shape(args)
    args.steps = args.steps or (2 if args.tiny else 4)
    args.rounds = args.rounds or (1 if args.tiny else 2)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker.split(":")[0]](args)))
        return 0
    clock, machine = common.Stopwatch(), common.machine()  # load average at the start
    paths = common.exports(args, ("lowrank",))
    variants = {"plain": paths["lowrank"], "plain-edge": paths["lowrank"],
                **{f"finetune:{p}": paths["lowrank"] for p in args.presets},
                "backprop": None, "backprop-all": None}
    runs = {v: [] for v in variants}
    for i in range(args.rounds):
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for v in order:
            runs[v].append(common.run_child(child_cmd(args, v, variants[v])))
    med = {v: {k: common.median(r[k] for r in rs) for k in ("peak_rss_mib", "import_rss_mib")} for v, rs in runs.items()}
    report = {"model": common.tag(args), "command": common.command(__file__, argv), "batch": args.batch, "seq": args.seq, "threads": args.threads,
              "rank": args.rank, "steps": args.steps, "rounds": args.rounds, "goal": GOAL, **machine,
              "medians": med, "ratios": ratios(med, args.presets), "runs": runs, "wall_s": clock()}
    common.write_json(report, args.results / f"memory-{common.tag(args)}.json")
    print(json.dumps(report["ratios"], indent=2))
    return 0


def ratios(med: dict, presets: list[str]) -> dict:
    def above(v):
        return med[v]["peak_rss_mib"] - med[v]["import_rss_mib"]
    out = {}
    for p in presets:
        ft = f"finetune:{p}"
        out[p] = {"finetune_vs_plain": med[ft]["peak_rss_mib"] / med["plain"]["peak_rss_mib"],
                  "finetune_vs_plain_edge_options": med[ft]["peak_rss_mib"] / med["plain-edge"]["peak_rss_mib"],
                  "finetune_vs_plain_above_imports": above(ft) / above("plain"),
                  "finetune_vs_backprop": med[ft]["peak_rss_mib"] / med["backprop"]["peak_rss_mib"],
                  "finetune_vs_backprop_all": med[ft]["peak_rss_mib"] / med["backprop-all"]["peak_rss_mib"],
                  "finetune_vs_backprop_above_imports": above(ft) / above("backprop"),
                  "meets_goal": med[ft]["peak_rss_mib"] / med["plain"]["peak_rss_mib"] <= GOAL}
    return out


def child_cmd(args, variant: str, path: Path | None) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", variant, "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--threads", str(args.threads), "--rank", str(args.rank),
           "--steps", str(args.steps), "--work", str(args.work), "--head", args.head]
    return cmd + (["--path", str(path)] if path else []) + (["--tiny"] if args.tiny else [])


def plain_worker(args) -> dict:
    import numpy  # noqa: F401  (the imports counted in its baseline, like the others')
    import onnxruntime  # noqa: F401
    import_rss, phases = common.rss_mib(), Phases()
    if args.worker == "plain-edge":
        common.open_session = edge_session
    plain = common.Plain(args.path, args.threads)
    phases.mark("session + W")
    plain.set_batch(*common.token_batch(args.batch, args.seq, 2))
    for i in range(3):
        plain.run()
        phases.mark(f"forward {i}")
    return {"peak_rss_mib": common.peak_rss_mib(), "import_rss_mib": import_rss, "phases": phases.marks}


def edge_session(graph: Path, threads: int):
    """inference.onnx opened with the options every edge-zo session uses."""
    import onnxruntime as ort
    from edge_zo.providers import session_options
    return ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])


class Phases:
    """VmRSS and VmHWM (MiB) after each named phase of this worker process."""

    def __init__(self):
        self.marks: list[dict] = []
        self.mark("imports")

    def mark(self, name: str) -> None:
        self.marks.append({"phase": name, "rss_mib": common.rss_mib(), "hwm_mib": common.peak_rss_mib()})

    def around(self, owner, name: str, label: str) -> None:
        """Mark `label` after every call of owner.name (a function of edge_zo.loop, a method)."""
        inner = getattr(owner, name)

        def marked(*a, **k):
            out = inner(*a, **k)
            self.mark(label)
            return out
        setattr(owner, name, marked)


# edge_zo.loop's calls, in the job's order -> phase ending there (the optimizer's state is
# initialised just before the BatchSchedule is made)
LOOP_PHASES = {"load_tokenizer": "tokenizer", "load_examples": "data", "Runtime": "runtime (session + W)",
               "BatchSchedule": "optimizer state", "snapshot": "checkpoint", "plot": "plot"}


def finetune_worker(args) -> dict:
    """The real loop for a few steps; every batch is exactly batch x seq tokens."""
    import tempfile
    from edge_zo import checkpoint, loop
    from edge_zo.runconfig import RunConfig
    import_rss, phases = common.rss_mib(), Phases()
    for name, label in LOOP_PHASES.items():
        phases.around(loop, name, label)
    phases.around(checkpoint.Journal, "append", "step")  # the journal line ends each step
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.jsonl"
        data.write_text("".join(json.dumps({"sentence": TEXT * 40, "label": str(i % 2)}) + "\n"
                                for i in range(4 * args.batch)))
        config = RunConfig(bundle=str(args.path), data=str(data), template="sst2-plain",
                           preset=args.worker.split(":", 1)[1], steps=args.steps, batch_size=args.batch,
                           eval_every=0, checkpoint_every=args.steps, threads=args.threads)
        loop.finetune(config, Path(tmp) / "run")
    return {"peak_rss_mib": common.peak_rss_mib(), "import_rss_mib": import_rss, "phases": phases.marks}


def backprop_worker(args) -> dict:
    """PyTorch eager fine-tuning with AdamW (the bundle's trained matrices, or everything)."""
    import torch
    from torch_zo_mopi import load_torch_core
    import_rss = common.rss_mib()
    core, prep = load_torch_core(args)
    trained = set(prep.targets)
    params = []
    for name, p in prep.model.named_parameters():
        p.requires_grad_(args.worker == "backprop-all" or name in trained)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids, mask, labels = (torch.from_numpy(a) for a in common.token_batch(args.batch, args.seq, len(prep.labels.words)))
    core.train()
    for _ in range(args.steps):
        loss = core(ids, mask, labels)[0][0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"peak_rss_mib": common.peak_rss_mib(), "import_rss_mib": import_rss,
            "trained_params": sum(p.numel() for p in params)}


WORKERS = {"plain": plain_worker, "plain-edge": plain_worker, "finetune": finetune_worker, "backprop": backprop_worker,
           "backprop-all": backprop_worker}


if __name__ == "__main__":
    sys.exit(main())
