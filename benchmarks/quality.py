"""Quality on real tasks: test accuracy after fixed budgets, mean ± s.e. over seeds.

    python benchmarks/quality.py --model minilm --task sst2 --seeds 0 1 2          # zero-shot, linear probe, default job
    python benchmarks/quality.py --model smollm2-135m --task rte --method icl       # in-context few-shot baseline
    python benchmarks/quality.py --model minilm --task rte --set optimizer.eta=3e-2  # a lever: any finetune key=value
    python benchmarks/quality.py --table                                            # every cell run so far, as a table
    python benchmarks/quality.py --tiny                                             # CI smoke run (tiny random model)

A cell is (model, task, method, settings, budget, seed). `finetune` runs the real job
(edge_zo.loop.finetune) with edge-zo's defaults, only `steps` set from the budget of
forward passes (the linear probe's forwards count in it), plus any `--set` keys: so the
default row is what `edge-zo finetune` gives a user. Its dev set picks the best-dev
snapshot (what `deploy` ships); the test set is scored beside dev at every evaluation and
never used for a choice. The step-0 evaluation is the linear probe where the bundle has a
linear head (export's default for classification), else zero-shot. `icl` prompts with k
demonstrations drawn from the same training rows. Splits are in quality_tasks.py. A cell's JSON goes to
--results/quality/ and is reused unless --fresh; `--table` aggregates them: the mean over
seeds with its standard error (std / sqrt(n)), and the paired gain of each finetune
setting over the probe (or zero-shot) of the same seed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality_tasks  # noqa: E402

BUDGETS = (500, 1000, 2000)  # forward passes at which the table reads a run's test score
WALL_BUDGET_S = 300  # seconds of training (probe included) at which it reads one more: a user's budget is time
DEFAULT_SHOTS = {"sst2": 8, "rte": 4, "boolq": 2, "cb": 4, "copa": 8, "wiki": 0}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common(p)
    p.add_argument("--task", default="sst2", choices=list(quality_tasks.TASKS))
    p.add_argument("--method", default="finetune", choices=("finetune", "icl", "zero-shot"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=None, help="forward passes of a finetune job (default 2000; tiny 96)")
    p.add_argument("--evals", type=int, default=4, help="dev + test evaluations per job besides step 0")
    p.add_argument("--test-examples", type=int, default=1000, help="test rows (the whole set when smaller)")
    p.add_argument("--shots", type=int, default=None, help="icl demonstrations (default per task)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="finetune keys for a lever, e.g. optimizer.eta=3e-2 preset=mezo")
    p.add_argument("--weights", default="fp32", choices=("fp32", "int8", "int4"),
                   help="edge-zo export's --weights: the frozen base's format (a quantized bundle trains an adapter)")
    p.add_argument("--logit-bias", action="store_true",
                   help="causal-lm tasks: export --logit-bias, so the job also trains a logit bias by its exact gradient")
    p.add_argument("--fresh", action="store_true", help="rerun cells already in --results")
    p.add_argument("--table", action="store_true", help="print and write the table of every cell in --results")
    args = p.parse_args(argv)
    args.budget = args.budget or (96 if args.tiny else 2000)
    args.batch = args.batch or 16
    if args.tiny:
        args.test_examples, args.seeds = min(args.test_examples, 32), args.seeds[:2]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        return write_table(args)
    task = quality_tasks.TASKS[args.task]
    bundle = bundle_for(args, task)
    for seed in args.seeds:
        path = cell_path(args, seed)
        if path.is_file() and not args.fresh:
            print(f"{path.name}: done, reused")
            continue
        clock, machine = common.Stopwatch(), common.machine()
        files = quality_tasks.write_split(args.task, seed, args.work / "quality-data" / args.task, args.test_examples)
        cell = (finetune_cell if args.method == "finetune" else prompt_cell)(args, task, bundle, files, seed)
        settings = (args.overrides + ([] if args.head == "auto" else [f"--head {args.head}"])
                    + ([] if args.weights == "fp32" else [f"--weights {args.weights}"])
                    + (["--logit-bias"] if args.logit_bias else []))
        cell.update(model=common.tag(args), task=args.task, method=args.method, seed=seed, settings=settings,
                    budget=args.budget if args.method == "finetune" else 0, batch_size=args.batch,
                    command=common.command(__file__, argv), wall_s=clock(), **machine)
        common.write_json(cell, path)
        print(f"{args.task} seed {seed} {args.method}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in cell["summary"].items() if isinstance(v, float)), flush=True)
    return 0


def cell_path(args, seed: int) -> Path:
    settings = "".join(f"-{item.replace('optimizer.', '')}" for item in sorted(args.overrides))
    settings += "" if args.head == "auto" else f"-head-{args.head}"
    settings += "" if args.weights == "fp32" else f"-{args.weights}"
    settings += "-logit-bias" if args.logit_bias else ""
    budget = f"-b{args.budget}" if args.method == "finetune" else ""
    shots = f"-k{args.shots}" if args.method == "icl" and args.shots else ""
    return args.results / "quality" / f"{common.tag(args)}-{args.task}-{args.method}{settings}{shots}{budget}-seed{seed}.json"


# ---- bundles -----------------------------------------------------------------------------

def bundle_for(args, task: quality_tasks.Task) -> Path:
    """The task's bundle, exported once into --work: MiniLM's linear head per label count,
    SmolLM2's label words per word set (a causal-lm bundle for multiple choice)."""
    from edge_zo_export.pipeline import ExportOptions, export_bundle
    model = common.model_arg(args)
    causal = task.causal
    encoder = args.model == "minilm" and not args.tiny
    # MiniLM's linear head starts as the cosine to each label word's embedding (zero-shot)
    words = [w.strip().lower() for w in task.lm_words] if encoder else list(task.lm_words)
    if args.tiny:
        words = [" terrible", " great", " okay"][:len(task.labels)]
    key = "causal" if causal else "-".join(w.strip() for w in words)
    if task.text and args.method == "icl":
        raise SystemExit("icl needs labels or candidates; the wiki task scores text (use finetune or zero-shot)")
    # A language model's prompts grow with in-context demonstrations (an encoder's never do)
    seq = task.max_seq_len if encoder or args.tiny else max(task.max_seq_len, 512)
    seq = min(seq, 128) if args.tiny else seq  # the tiny Llama's positions
    graph = "fullrank" if any(item in ("preset=mezo", "preset=loren") for item in args.overrides) else "lowrank"
    folder = args.work / (f"quality-{common.tag(args)}-{key}-t{seq}{'-fullrank' if graph == 'fullrank' else ''}"
                          + ("" if args.head == "auto" else f"-{args.head}")
                          + ("" if args.weights == "fp32" else f"-{args.weights}")
                          + ("-logit-bias" if args.logit_bias and causal else ""))
    if not (folder / "manifest.json").is_file():
        export_bundle(ExportOptions(model=model, task="causal-lm" if causal else "classification", out=folder,
                                    force=True, rank=args.rank, graph=graph, label_words=[] if causal else words,
                                    head=args.head, max_seq_len=seq, weights=args.weights,
                                    logit_bias=args.logit_bias and causal))
    return folder


# ---- cells -------------------------------------------------------------------------------

def run_config(args, task, bundle: Path, files: dict, seed: int, **keys):
    from edge_zo import runconfig
    encoder = args.model == "minilm" and not args.tiny
    base = {**quality_tasks.template_keys(task, encoder), "threads": args.threads, "seed": seed,
            "batch_size": args.batch, **keys}
    overrides = [f"{k}={_value(v)}" for k, v in base.items()] + list(args.overrides)
    return runconfig.resolve(None, {"bundle": str(bundle), "data": str(files["train"]),
                                    "eval_data": str(files["dev"])}, overrides)


def _value(v) -> str:
    return ",".join(v) if isinstance(v, tuple) else str(v)


def finetune_cell(args, task, bundle: Path, files: dict, seed: int) -> dict:
    """The default job (plus --set keys) for the budget, dev and test scored together."""
    import shutil
    from edge_zo import loop
    from edge_zo.verdict import dev_verdict
    from edge_zo.bundle import read_manifest
    from edge_zo.metrics import MetricsLog
    from edge_zo.optim.base import DivergedError
    manifest = read_manifest(bundle)
    probe = loop.wants_linear_probe(run_config(args, task, bundle, files, seed), manifest)
    n_train = sum(1 for _ in open(files["train"]))
    # the defaults that follow the bundle (a trained logit bias: N = 1) set the step's forwards
    config = loop.pin_defaults(run_config(args, task, bundle, files, seed, steps=1), manifest)
    per_step = common.forwards_per_step(config.optimizer_config(manifest.rank))
    probe_forwards = math.ceil(n_train / args.batch) if probe else 0
    if args.budget < probe_forwards + per_step:
        raise SystemExit(f"--budget {args.budget} leaves no step after the linear probe's {probe_forwards} "
                         f"forwards (a step takes {per_step}); raise --budget or pass --set linear_probe=off")
    steps = (args.budget - probe_forwards) // per_step
    config = loop.pin_defaults(run_config(args, task, bundle, files, seed, steps=steps,
                                          eval_every=max(1, steps // args.evals), checkpoint_every=steps), manifest)
    run_dir = args.work / "quality-runs" / cell_path(args, seed).stem
    shutil.rmtree(run_dir, ignore_errors=True)
    zero_shot = score(bundle, config, files["test"], manifest, args.batch)
    diverged = None
    with scoring_test_too(config, files["test"]):
        try:
            loop.finetune(config, run_dir)
        except DivergedError as err:  # kept, marked: a rate too large is a result too
            diverged = str(err)
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    evals = [{k: r[k] for k in ("step", "forward_passes", "train_s", "eval_acc", "eval_loss", "test_acc", "test_loss")
              if k in r} for r in records if r["kind"] == "eval"]
    verdict = dev_verdict(records, run_dir)  # the loop's own choice of the best-dev snapshot
    metric = verdict["metric"].removeprefix("eval_")
    best = next(e for e in evals if e["step"] == verdict["best_step"])
    start = evals[0][f"test_{metric}"]
    summary = {f"zero_shot_{metric}": zero_shot[f"test_{metric}"], f"start_{metric}": start,
               f"last_{metric}": evals[-1][f"test_{metric}"], f"best_dev_{metric}": best[f"test_{metric}"]}
    return {"preset": config.preset, "steps": steps, "forwards_per_step": per_step, "linear_probe": probe,
            "metric": metric, "test_rows": zero_shot["rows"], "evals": evals, "best_dev_step": best["step"],
            "diverged": diverged, "config": dataclasses.asdict(config), "summary": summary,
            "probe_record": next((r for r in records if r["kind"] == "linear_probe"), None)}


class scoring_test_too:
    """While a job runs, every dev evaluation of the loop also scores the test rows and
    records them as test_*; the loop's choices (best-dev snapshot) still read dev alone."""

    def __init__(self, config, test_file: Path):
        self.config, self.test_file = config, test_file

    def __enter__(self):
        from edge_zo import loop
        self.original, test = loop.evaluate, {}

        def evaluate(runtime, state, examples, tokenizer, manifest, batch_size):
            record = self.original(runtime, state, examples, tokenizer, manifest, batch_size)
            if "rows" not in test:
                test["rows"] = loop.load_examples(self.config, str(self.test_file), manifest,
                                                  loop.template_for(self.config, manifest))
            scored = self.original(runtime, state, test["rows"], tokenizer, manifest, batch_size)
            return {**record, **{k.replace("eval_", "test_"): v for k, v in scored.items()}}
        loop.evaluate = evaluate
        return self

    def __exit__(self, *exc):
        from edge_zo import loop
        loop.evaluate = self.original


def score(bundle: Path, config, test_file: Path, manifest, batch_size: int, demos: str = "") -> dict:
    """The bundle's own weights on the test rows, each prompt after `demos` (ICL)."""
    from edge_zo import loop
    from edge_zo.data import load_tokenizer
    from edge_zo.runtime import Runtime
    template = loop.template_for(config, manifest)
    rows = loop.load_examples(config, str(test_file), manifest, template)
    if demos:
        rows = [dataclasses.replace(ex, prompt=demos + ex.prompt) for ex in rows]
    runtime = Runtime(bundle, threads=config.threads or None)
    record = loop.evaluate(runtime, None, rows, load_tokenizer(bundle), manifest, batch_size)
    return {**{k.replace("eval_", "test_"): v for k, v in record.items()}, "rows": len(rows)}


def prompt_cell(args, task, bundle: Path, files: dict, seed: int) -> dict:
    """Zero-shot, or in-context few-shot with k demonstrations from the seed's training rows."""
    from edge_zo import loop
    from edge_zo.bundle import read_manifest
    from edge_zo.templates import Template, candidates, choice_prompt, fill
    manifest = read_manifest(bundle)
    config = run_config(args, task, bundle, files, seed)
    template = loop.template_for(config, manifest)
    shots = 0 if args.method == "zero-shot" else (args.shots or DEFAULT_SHOTS[args.task])
    train = [json.loads(line) for line in open(files["train"])]
    picked = balanced(train, shots, "label")
    if isinstance(template, Template):
        words = {value: manifest.label_words[i] for i, value in enumerate(template.labels)}
        demos = "".join(fill(template, row) + words[_label(row)] + "\n\n" for row in picked)
    else:
        demos = "".join(choice_prompt(template, row) + candidates(template, row)[int(row["label"])] + "\n\n"
                        for row in picked)
    result = score(bundle, config, files["test"], manifest, max(1, args.batch // 2), demos)
    metric = "acc" if "test_acc" in result else "loss"
    return {"shots": shots, "metric": metric, "test_rows": result["rows"], "demos": demos,
            "summary": {f"{args.method.replace('-', '_')}_{metric}": result[f"test_{metric}"]}}


def _label(row: dict) -> str:
    value = row["label"]
    return str(value).lower() if isinstance(value, bool) else str(value)


def balanced(rows: list[dict], k: int, field: str) -> list[dict]:
    """k rows taking the labels in turn (the rows are already in the seed's random order)."""
    by_label: dict[str, list[dict]] = {}
    for row in rows if k else []:
        by_label.setdefault(_label(row), []).append(row)
    queues, picked = list(by_label.values()), []
    while len(picked) < k and any(queues):
        for queue in queues:
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    return picked


# ---- the table -----------------------------------------------------------------------------

def mean_se(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:.3f} (n=1)"
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return f"{m:.3f} ± {se:.3f} (n={len(xs)})"


def at_budget(cell: dict, budget: int, metric: str) -> float | None:
    """The test score of the last evaluation within `budget` forward passes."""
    within = [e for e in cell["evals"] if e["forward_passes"] <= budget]
    return within[-1][f"test_{metric}"] if within and budget <= cell["budget"] else None


def at_time(cell: dict, seconds: float, metric: str) -> float | None:
    """The test score of the last evaluation within `seconds` of training (this machine, its load)."""
    within = [e for e in cell["evals"] if e["train_s"] <= seconds]
    return within[-1][f"test_{metric}"] if within else None


def write_table(args) -> int:
    cells = [json.loads(p.read_text()) for p in sorted((args.results / "quality").glob("*.json"))]
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        setting = c["method"] + "".join(f" {s}" for s in c.get("settings", []))
        if c["method"] == "icl":
            setting += f" (k={c['shots']})"
        groups.setdefault((c["model"], c["task"], setting), []).append(c)
    lines = ["| model | task | setting | test start (ZS or LP) | " + " | ".join(f"test @{b} fwd" for b in BUDGETS)
             + f" | test @{WALL_BUDGET_S // 60} min | best-dev snapshot | gain over start (paired) | s / 1000 fwd | load |",
             "|" + "---|" * (9 + len(BUDGETS))]
    for (model, task, setting), group in sorted(groups.items()):
        metric = group[0]["metric"]
        if group[0]["method"] != "finetune":
            value = [c["summary"][f"{group[0]['method'].replace('-', '_')}_{metric}"] for c in group]
            lines.append(f"| {model} | {task} | {setting} | {mean_se(value)} |" + " |" * (len(BUDGETS) + 5))
            continue
        starts = [c["summary"][f"start_{metric}"] for c in group]
        budgets = [mean_se([v for c in group if (v := at_budget(c, b, metric)) is not None]) for b in BUDGETS]
        timed = mean_se([v for c in group if (v := at_time(c, WALL_BUDGET_S, metric)) is not None])
        best = [c["summary"][f"best_dev_{metric}"] for c in group]
        gain = [b - s for b, s in zip(best, starts)]
        rate = [1000 * c["evals"][-1]["train_s"] / max(1, c["evals"][-1]["forward_passes"]) for c in group]
        load = [x for c in group for x in (c["load_avg_start"][0], c["load_avg_end"][0])]
        lines.append(f"| {model} | {task} | {setting} | {mean_se(starts)} | " + " | ".join(budgets)
                     + f" | {timed} | {mean_se(best)} | {mean_se(gain)} | {sum(rate) / len(rate):.0f}"
                     + f" | {min(load):.1f}-{max(load):.1f} |")
    table = "\n".join(lines)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "quality.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
