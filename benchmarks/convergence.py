"""Convergence on real data: dev accuracy against forward passes and wall-clock time.

    python benchmarks/convergence.py --model minilm               # SST-2, ~1500 forwards a run
    python benchmarks/convergence.py --tiny                       # CI smoke run (bundled reviews)

Protocol (DESIGN.md section 7): SST-2 from ../shared/data, MeZO split with seed 0 (1000
train, 500 dev from train.tsv); the test split is never looked at. Every optimizer runs
its preset (zo-mopi, paper-code, zo-muon, lozo, mezo) through the real finetune loop
(edge_zo.loop.finetune, batch 16, probe_slots 1) for the same budget of forward passes,
for each learning rate of a small grid; the rate kept is the one with the best dev
accuracy. Low-rank methods run on the low-rank bundle, MeZO on the full-rank one. MiniLM
uses the export's default head, the linear head fitted by a linear probe first (LP-then-ZO),
or with `--head label-embedding` (the zero-shot runs in the README) the cosine of the
sentence embedding to "negative" / "positive"; either way the bare-sentence template `sst2-plain`; SmolLM2-135M (label words
" negative" / " positive") the `review` prompt `Review: {sentence}\nSentiment:` (DESIGN.md
section 7: 0.805 zero-shot, against 0.516 with the MeZO SST-2 prompt). Time is the loop's train_s
(evaluation excluded). Forward passes to reach a target are read from the dev
evaluations; finished runs are kept in --work and reused (--fresh reruns them), so a
grid can be widened later. The target of a pair is the lower of the two best dev accuracies, so both
reach it. Ratios: zo-muon forwards / zo-mopi forwards (ZO-MOPI paper: 1.5-4x) and zo-muon
forwards / mezo forwards (ZO-Muon paper: 24.7% of MeZO's queries).

Dev loss: accuracy on a few hundred dev examples moves in steps of 1/n and stays flat
within its noise for short runs, so every evaluation also records the mean cross-entropy
of the dev examples (`eval_ce`, with `eval_ce_se` the standard error of its change
since step 0, paired over the same examples; from the same forwards: the loop's own evaluation records
only accuracy for classification, so this script wraps `edge_zo.loop.evaluate`). The
`dev_loss_ratios` use it the same way: per preset the rate with the lowest dev loss, and
the target of a pair is the higher of the two best dev losses (the smaller decrease).
A run stopped by DivergedError is kept, marked `diverged`, and never chosen.
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

SST2 = common.REPO.parent / "shared" / "data" / "sst2"
# Learning-rate grids for a ~10M-parameter trained set (MiniLM's 36 matrices): the presets'
# values come from OPT-13B runs, and a full-rank step scales with the parameter count.
GRID = {"zo-mopi": [1e-2, 5e-2], "paper-code": [1e-2], "zo-muon": [1e-2, 5e-2],
        "lozo": [1e-5], "mezo": [1e-5, 3e-5]}
# template -> (text field, label names for SST-2's 0 / 1), in the bundle's label order
TEMPLATES = {"sst2-plain": ("sentence", ("0", "1")), "review": ("text", ("negative", "positive"))}
PAIRS = {"zo_muon_over_zo_mopi": ("zo-muon", "zo-mopi"), "zo_muon_over_paper_code": ("zo-muon", "paper-code"),
         "zo_muon_over_mezo": ("zo-muon", "mezo")}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common(p)
    p.add_argument("--budget", type=int, default=None, help="forward passes per run (default 1500; tiny 40)")
    p.add_argument("--evals", type=int, default=6, help="dev evaluations per run (besides step 0)")
    p.add_argument("--presets", nargs="+", default=list(GRID), choices=list(GRID))
    p.add_argument("--lr", nargs="+", default=[], metavar="PRESET=ETA,ETA",
                   help="replace a preset's learning-rate grid, e.g. mezo=1e-6,1e-5")
    p.add_argument("--dev-examples", type=int, default=500, help="dev examples scored per evaluation")
    p.add_argument("--seed", type=int, default=0,
                   help="run seed (batch order, perturbations); the MeZO split stays seed 0")
    p.add_argument("--fresh", action="store_true", help="rerun runs already finished in --work")
    p.add_argument("--template", choices=list(TEMPLATES), default=None,
                   help="prompt (default: review for smollm2-135m, sst2-plain otherwise)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="optimizer.KEY overrides for every preset whose config has KEY, "
                        "e.g. one_d=sgd one_d_lr=1e-4 (train a linear head with the low-rank methods)")
    args = p.parse_args(argv)
    common.fill_shape(args)
    args.budget = args.budget or (40 if args.tiny else 1500)
    args.template = args.template or ("review" if args.model == "smollm2-135m" and not args.tiny else "sst2-plain")
    args.grid = {k: list(v) for k, v in GRID.items()}
    for item in args.lr:
        name, _, etas = item.partition("=")
        args.grid[name] = [float(x) for x in etas.split(",")]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    clock, machine = common.Stopwatch(), common.machine()  # load average at the start
    paths = common.exports(args, ("lowrank", "fullrank"))
    train, dev = write_data(args)
    runs = {}
    for preset in args.presets:
        for eta in args.grid[preset]:
            bundle = paths["fullrank" if preset == "mezo" else "lowrank"]
            r = runs[f"{preset}@{eta:g}"] = run(args, preset, eta, bundle, train, dev)
            ce = r.get("best_dev_ce")
            print(f"{preset} eta={eta:g}: best dev acc {r['best_dev_acc']:.3f}"
                  + ("" if ce is None else f", dev loss {r['zero_shot_dev_ce']:.4f} -> best {ce:.4f}")
                  + (" DIVERGED" if r.get("diverged") else "") + f" ({r['wall_s']:.0f} s)", flush=True)
    chosen = {p: max(candidates(runs, p), key=lambda r: (r["best_dev_acc"], r["last_dev_acc"]))
              for p in args.presets}
    with_ce = all(r.get("best_dev_ce") is not None for r in runs.values())
    chosen_ce = {p: min(candidates(runs, p), key=lambda r: r["best_dev_ce"]) for p in args.presets} if with_ce else {}
    report = {"model": common.tag(args), "command": common.command(__file__, argv), "data": str(train.parent), "template": args.template,
              "optimizer_overrides": args.overrides, "batch_size": args.batch,
              "dev_examples": args.dev_examples, "seed": args.seed, "head": args.head,
              "budget_forwards": args.budget, "threads": args.threads, "rank": args.rank, **machine,
              "chosen_eta": {p: r["eta"] for p, r in chosen.items()}, "ratios": ratios(chosen),
              "chosen_eta_dev_loss": {p: r["eta"] for p, r in chosen_ce.items()},
              "dev_loss_ratios": ratios(chosen_ce, "eval_ce") if chosen_ce else {},
              "runs": runs, "wall_s": clock()}
    common.write_json(report, args.results / f"convergence-{common.tag(args)}.json")
    plot(chosen, args.results / f"convergence-{common.tag(args)}.png", chosen_ce)
    print(json.dumps({"ratios": report["ratios"], "dev_loss_ratios": report["dev_loss_ratios"]}, indent=2))
    return 0


def candidates(runs: dict, preset: str) -> list[dict]:
    """A preset's runs, those that diverged left out unless all did."""
    mine = [r for r in runs.values() if r["preset"] == preset]
    return [r for r in mine if not r.get("diverged")] or mine


def evaluate_with_ce(original):
    """`edge_zo.loop.evaluate`, plus the dev examples' mean cross-entropy (`eval_ce`) for
    single-answer classification, computed from the label scores of the same forwards."""
    import numpy as np
    from edge_zo import evaluation, loop

    def evaluate(runtime, state, examples, tokenizer, manifest, batch_size):
        if not examples or manifest.task != "classification":
            return original(runtime, state, examples, tokenizer, manifest, batch_size)
        C, per = loop.bind_pending(runtime, state), []

        def scores_of(batch):
            runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
            scores = np.asarray(runtime.scores(C), dtype=np.float64)  # [B, labels]: the logits
            top = scores.max(axis=1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
            per.append(logz - scores[np.arange(len(scores)), np.asarray(batch.labels)])
            return scores

        record = evaluation.score(evaluation.batches(examples, tokenizer, manifest, batch_size), scores_of,
                                  manifest.task)
        per = np.concatenate(per)
        if evaluate.reference is None or len(evaluate.reference) != len(per):
            evaluate.reference = per  # the run's first evaluation (step 0)
        diff = per - evaluate.reference  # paired with step 0 on the same dev examples
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        return {**record, "eval_ce": float(per.mean()), "eval_ce_se": se}
    evaluate.wrapped, evaluate.reference = True, None
    return evaluate


def write_data(args) -> tuple[Path, Path]:
    """train.jsonl and dev.jsonl in the work folder (the template's text field and label names)."""
    from edge_zo.data import mezo_split, read_rows
    folder = args.work / f"convergence-data-{'tiny' if args.tiny else 'sst2'}"
    field, names = TEMPLATES[args.template]
    if args.template != "sst2-plain":
        folder = folder.with_name(f"{folder.name}-{args.template}")
    folder.mkdir(parents=True, exist_ok=True)
    if args.tiny:  # the bundled review sample: 160 rows, split 120 / 40
        rows = [r for _, r, _ in read_rows(common.REPO / "edge_zo" / "samples" / "reviews-train.jsonl")]
        rows = [{"sentence": r["text"], "label": str(int(r["label"] == "positive"))} for r in rows]
        train, dev = rows[:120], rows[120:]
    else:
        rows = [r for _, r, _ in read_rows(SST2 / "train.tsv")]
        train, dev, _ = mezo_split(rows, [], n_train=1000, n_dev=500, n_test=0, seed=0)
    for name, part in (("train", train), ("dev", dev)):
        with open(folder / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps({field: r["sentence"], "label": names[int(r["label"])]}) + "\n"
                         for r in part)
    return folder / "train.jsonl", folder / "dev.jsonl"


def run(args, preset: str, eta: float, bundle: Path, train: Path, dev: Path) -> dict:
    from edge_zo.bundle import read_manifest
    from edge_zo import loop
    from edge_zo.loop import finetune
    from edge_zo.metrics import MetricsLog
    from edge_zo.optim.base import DivergedError
    if not getattr(loop.evaluate, "wrapped", False):
        loop.evaluate = evaluate_with_ce(loop.evaluate)
    loop.evaluate.reference = None  # eval_ce_se: the standard error of (dev loss - step 0's), paired
    from edge_zo.runconfig import RunConfig
    clock = common.Stopwatch()
    rank = read_manifest(bundle).rank
    extra = dict(item.partition("=")[::2] for item in args.overrides)
    keys = RunConfig(bundle=str(bundle), data=str(train), preset=preset).optimizer_config(rank).__dataclass_fields__
    extra = {k: v for k, v in extra.items() if k in keys}  # e.g. MeZO has no one_d: it trains the head anyway
    base = RunConfig(bundle=str(bundle), data=str(train), preset=preset, optimizer={"eta": eta, **extra})
    steps = max(2, args.budget // common.forwards_per_step(base.optimizer_config(rank)))
    config = RunConfig(bundle=str(bundle), data=str(train), eval_data=str(dev), template=args.template,
                       preset=preset, optimizer={"eta": eta, **extra}, steps=steps, batch_size=args.batch,
                       eval_every=max(1, steps // args.evals), eval_examples=args.dev_examples,
                       checkpoint_every=steps, threads=args.threads, seed=args.seed)
    name = f"{preset}-{eta:g}-{steps}x{args.batch}-dev{args.dev_examples}" + (f"-seed{args.seed}" if args.seed else "")
    if args.template != "sst2-plain":
        name += f"-{args.template}"
    if args.head != "auto":
        name += f"-{args.head}"
    name += "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    run_dir = args.work / "convergence-runs" / common.tag(args) / name
    done = run_dir / "summary.json"
    if done.is_file() and not args.fresh:  # a finished run of the same config: reuse it
        summary = json.loads(done.read_text())
        if "best_dev_ce" in summary:  # older summaries lack the dev loss: rerun those
            return summary
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    diverged = None
    try:
        finetune(config, run_dir)
    except DivergedError as e:  # the rate is too large: keep what it did before, never choose it
        diverged = str(e)
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    evals = [{k: r[k] for k in ("step", "forward_passes", "train_s", "eval_acc", "eval_ce", "eval_ce_se") if k in r}
             for r in records if r["kind"] == "eval"]
    train_recs = [r for r in records if r["kind"] == "train"] or [{"train_s": 0.0, "forward_passes": 0}]
    ces = [e["eval_ce"] for e in evals if "eval_ce" in e]
    summary = {"preset": preset, "eta": eta, "optimizer": extra, "steps": steps, "evals": evals,
            "diverged": diverged,
            "loss": [(r["forward_passes"], r["loss"]) for r in train_recs[:: max(1, len(train_recs) // 50)] if "loss" in r],
            "best_dev_acc": max(e["eval_acc"] for e in evals), "last_dev_acc": evals[-1]["eval_acc"],
            "zero_shot_dev_acc": evals[0]["eval_acc"],
            "best_dev_ce": min(ces) if ces else None, "last_dev_ce": ces[-1] if ces else None,
            "zero_shot_dev_ce": ces[0] if ces else None,
            "linear_probe": next((r for r in records if r["kind"] == "linear_probe"), None), "train_s": train_recs[-1]["train_s"],
            "forward_passes": train_recs[-1]["forward_passes"], "wall_s": clock()}
    done.write_text(json.dumps(summary))
    return summary


def to_target(run: dict, target: float, key: str = "eval_acc") -> dict | None:
    """The first dev evaluation at or past `target` (accuracy: at or above; loss: at or
    below): its forward passes and train time."""
    sign = -1.0 if key == "eval_ce" else 1.0
    hit = next((e for e in run["evals"] if sign * e[key] >= sign * target), None)
    return None if hit is None else {"forward_passes": hit["forward_passes"], "train_s": hit["train_s"]}


def ratios(chosen: dict, key: str = "eval_acc") -> dict:
    """Forwards (and train time) to the pair's target: accuracy (key eval_acc, target the
    lower best) or dev loss (key eval_ce, target the higher best loss)."""
    out = {}
    loss = key == "eval_ce"
    best, start = ("best_dev_ce", "zero_shot_dev_ce") if loss else ("best_dev_acc", "zero_shot_dev_acc")
    for name, (a, b) in PAIRS.items():
        if a not in chosen or b not in chosen:
            continue
        target = (max if loss else min)(chosen[a][best], chosen[b][best])
        row = {f"target_{best[5:]}": target, start: chosen[a][start], "eta": {a: chosen[a]["eta"], b: chosen[b]["eta"]}}
        if (target >= chosen[a][start]) if loss else (target <= chosen[a][start]):  # one never beat the start
            out[name] = {**row, "forward_passes_ratio": None, "note": "no gain over zero-shot"}
            continue
        ha, hb = to_target(chosen[a], target, key), to_target(chosen[b], target, key)
        out[name] = {**row, a: ha, b: hb, "forward_passes_ratio": ha["forward_passes"] / hb["forward_passes"],
                     "train_s_ratio": ha["train_s"] / hb["train_s"]}
    return out


def plot(chosen: dict, out: Path, chosen_ce: dict | None = None) -> None:
    """Dev accuracy (the rates chosen on it) and, when recorded, dev loss (the rates chosen
    on it) against forward passes and training time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ys = ["eval_acc"] + (["eval_ce"] if chosen_ce else [])
    fig, axes = plt.subplots(len(ys), 2, figsize=(11, 4 * len(ys)), sharey="row", squeeze=False)
    for row, y in zip(axes, ys):
        for preset, r in (chosen_ce if y == "eval_ce" else chosen).items():
            for ax, x in zip(row, ("forward_passes", "train_s")):
                ax.plot([e[x] for e in r["evals"]], [e[y] for e in r["evals"]], marker="o",
                        label=f"{preset} (eta {r['eta']:g})")
    for row, y in zip(axes, ys):
        row[0].set_xlabel("forward passes")
        row[1].set_xlabel("training time (s, evaluation excluded)")
        row[0].set_ylabel({"eval_acc": "dev accuracy", "eval_ce": "dev loss (mean cross-entropy)"}[y])
    for row in axes:
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
