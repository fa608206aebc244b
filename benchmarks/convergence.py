"""Convergence on real data: dev accuracy against forward passes and wall-clock time.

    python benchmarks/convergence.py --model minilm               # SST-2, ~1500 forwards a run
    python benchmarks/convergence.py --tiny                       # CI smoke run (bundled reviews)

Protocol (DESIGN.md section 7): SST-2 from ../shared/data, MeZO split with seed 0 (1000
train, 500 dev from train.tsv); the test split is never looked at. Every optimizer runs
its preset (zo-mopi, paper-code, zo-muon, lozo, mezo) through the real finetune loop
(edge_zo.loop.finetune, batch 16, probe_slots 1) for the same budget of forward passes,
for each learning rate of a small grid; the rate kept is the one with the best dev
accuracy. Low-rank methods run on the low-rank bundle, MeZO on the full-rank one. MiniLM
uses the export's label-embedding head (cosine of the sentence embedding to "negative" /
"positive"), so the bare-sentence template `sst2-plain`; SmolLM2-135M (label words
" negative" / " positive") the `review` prompt `Review: {sentence}\nSentiment:` (DESIGN.md
section 7: 0.805 zero-shot, against 0.516 with the MeZO SST-2 prompt). Time is the loop's train_s
(evaluation excluded). Forward passes to reach a target are read from the dev
evaluations; finished runs are kept in --work and reused (--fresh reruns them), so a
grid can be widened later. The target of a pair is the lower of the two best dev accuracies, so both
reach it. Ratios: zo-muon forwards / zo-mopi forwards (ZO-MOPI paper: 1.5-4x) and zo-muon
forwards / mezo forwards (ZO-Muon paper: 24.7% of MeZO's queries).
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
            runs[f"{preset}@{eta:g}"] = run(args, preset, eta, bundle, train, dev)
            print(f"{preset} eta={eta:g}: best dev {runs[f'{preset}@{eta:g}']['best_dev_acc']:.3f} "
                  f"({runs[f'{preset}@{eta:g}']['wall_s']:.0f} s)", flush=True)
    chosen = {p: max((r for r in runs.values() if r["preset"] == p), key=lambda r: (r["best_dev_acc"], r["last_dev_acc"]))
              for p in args.presets}
    report = {"model": common.tag(args), "data": str(train.parent), "template": args.template,
              "optimizer_overrides": args.overrides, "batch_size": args.batch,
              "dev_examples": args.dev_examples,
              "budget_forwards": args.budget, "threads": args.threads, "rank": args.rank, **machine,
              "chosen_eta": {p: r["eta"] for p, r in chosen.items()}, "ratios": ratios(chosen),
              "runs": runs, "wall_s": clock()}
    common.write_json(report, args.results / f"convergence-{common.tag(args)}.json")
    plot(chosen, args.results / f"convergence-{common.tag(args)}.png")
    print(json.dumps(report["ratios"], indent=2))
    return 0


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


def forwards_per_step(config) -> int:
    from edge_zo.optim.estimate import probe_plan
    if hasattr(config, "estimator"):
        return len(probe_plan(config.estimator, config.N))
    return getattr(config, "K", 2 * getattr(config, "N", 1))


def run(args, preset: str, eta: float, bundle: Path, train: Path, dev: Path) -> dict:
    from edge_zo.bundle import read_manifest
    from edge_zo.loop import finetune
    from edge_zo.metrics import MetricsLog
    from edge_zo.runconfig import RunConfig
    clock = common.Stopwatch()
    rank = read_manifest(bundle).rank
    extra = dict(item.partition("=")[::2] for item in args.overrides)
    keys = RunConfig(bundle=str(bundle), data=str(train), preset=preset).optimizer_config(rank).__dataclass_fields__
    extra = {k: v for k, v in extra.items() if k in keys}  # e.g. MeZO has no one_d: it trains the head anyway
    base = RunConfig(bundle=str(bundle), data=str(train), preset=preset, optimizer={"eta": eta, **extra})
    steps = max(2, args.budget // forwards_per_step(base.optimizer_config(rank)))
    config = RunConfig(bundle=str(bundle), data=str(train), eval_data=str(dev), template=args.template,
                       preset=preset, optimizer={"eta": eta, **extra}, steps=steps, batch_size=args.batch,
                       eval_every=max(1, steps // args.evals), eval_examples=args.dev_examples,
                       checkpoint_every=steps, threads=args.threads)
    name = f"{preset}-{eta:g}-{steps}x{args.batch}-dev{args.dev_examples}"
    if args.template != "sst2-plain":
        name += f"-{args.template}"
    name += "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    run_dir = args.work / "convergence-runs" / common.tag(args) / name
    done = run_dir / "summary.json"
    if done.is_file() and not args.fresh:  # a finished run of the same config: reuse it
        return json.loads(done.read_text())
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    finetune(config, run_dir)
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    evals = [{k: r[k] for k in ("step", "forward_passes", "train_s", "eval_acc")} for r in records if r["kind"] == "eval"]
    train_recs = [r for r in records if r["kind"] == "train"]
    summary = {"preset": preset, "eta": eta, "optimizer": extra, "steps": steps, "evals": evals,
            "loss": [(r["forward_passes"], r["loss"]) for r in train_recs[:: max(1, len(train_recs) // 50)]],
            "best_dev_acc": max(e["eval_acc"] for e in evals), "last_dev_acc": evals[-1]["eval_acc"],
            "zero_shot_dev_acc": evals[0]["eval_acc"],
            "linear_probe": next((r for r in records if r["kind"] == "linear_probe"), None), "train_s": train_recs[-1]["train_s"],
            "forward_passes": train_recs[-1]["forward_passes"], "wall_s": clock()}
    done.write_text(json.dumps(summary))
    return summary


def to_target(run: dict, target: float) -> dict | None:
    """The first dev evaluation at or above `target`: its forward passes and train time."""
    hit = next((e for e in run["evals"] if e["eval_acc"] >= target), None)
    return None if hit is None else {"forward_passes": hit["forward_passes"], "train_s": hit["train_s"]}


def ratios(chosen: dict) -> dict:
    out = {}
    for name, (a, b) in PAIRS.items():
        if a not in chosen or b not in chosen:
            continue
        target = min(chosen[a]["best_dev_acc"], chosen[b]["best_dev_acc"])
        row = {"target_dev_acc": target, "zero_shot_dev_acc": chosen[a]["zero_shot_dev_acc"]}
        if target <= chosen[a]["zero_shot_dev_acc"]:  # one of them never beat the start
            out[name] = {**row, "forward_passes_ratio": None, "note": "no gain over zero-shot"}
            continue
        ha, hb = to_target(chosen[a], target), to_target(chosen[b], target)
        out[name] = {**row, a: ha, b: hb, "forward_passes_ratio": ha["forward_passes"] / hb["forward_passes"],
                     "train_s_ratio": ha["train_s"] / hb["train_s"]}
    return out


def plot(chosen: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for preset, r in chosen.items():
        for ax, x in zip(axes, ("forward_passes", "train_s")):
            ax.plot([e[x] for e in r["evals"]], [e["eval_acc"] for e in r["evals"]], marker="o",
                    label=f"{preset} (eta {r['eta']:g})")
    axes[0].set_xlabel("forward passes")
    axes[1].set_xlabel("training time (s, evaluation excluded)")
    axes[0].set_ylabel("dev accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
