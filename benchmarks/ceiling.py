"""How much room the linear probe leaves, and whether zeroth-order steps on few parameters reach it.

    python benchmarks/ceiling.py --mode bp-all --lr 2e-5 --steps 200 --seeds 0 1 2   # exact gradients, every weight
    python benchmarks/ceiling.py --mode bp-bitfit --lr 1e-3 --steps 200               # exact gradients, BitFit vectors
    python benchmarks/ceiling.py --mode zo-bitfit --lr 1e-3 --steps 1000              # MeZO-style SPSA on the vectors
    python benchmarks/ceiling.py --table                                              # every run so far
    python benchmarks/ceiling.py --tiny                                               # CI smoke run (tiny random encoder)

A host-side reference in PyTorch (backprop needs it), on the quality benchmark's own splits
(quality_tasks.py: 1000 train / 500 dev per seed, the fixed test set) and MiniLM's linear
head exactly as the bundle computes it: features [unit(mean-pooled last hidden state), 1],
the head fitted by edge_zo.linear_probe (same L2 grid, same folds). From that probe:
- `bp-all` / `bp-bitfit`: AdamW on every weight / on the biases and LayerNorm vectors
  (BitFit) plus the head: the gain a backprop job gets from the same rows, i.e. the room the
  probe leaves (the issue's "where the probe leaves room");
- `zo-all` / `zo-bitfit`: two-point SPSA (MeZO, one Gaussian direction, central difference,
  2 forwards a step) on the same tensors: does a small trained set let ZO reach that room
  within a device's budget? (ZO-SGD's step count grows with the trained dimension d: BitFit's
  d is 32K against 22.7M.)
`lp` is the probe alone. Forwards count as in the quality benchmark (backprop: 3 a step).
Dev is scored every steps/evals steps; the best-dev checkpoint's test is what would ship.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality_tasks  # noqa: E402

MODES = ("lp", "bp-all", "bp-bitfit", "zo-all", "zo-bitfit")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="zo-bitfit")
    p.add_argument("--task", default="sst2", choices=[n for n, t in quality_tasks.TASKS.items() if not t.causal])
    p.add_argument("--mu", type=float, default=1e-3, help="SPSA perturbation scale (zo modes)")
    common.add_reference_args(p, lr=1e-3, steps=1000, batch=16, tiny="a 2-layer random encoder, 64 train rows, 4 steps")
    return common.parse_reference(p, argv)


def load_encoder(tiny: bool):
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    from edge_zo_export import models
    folder = models.resolve("minilm").folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tiny:
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64)
        return tokenizer, BertModel(config).eval()
    return tokenizer, AutoModel.from_pretrained(folder).eval()


class Job:
    """One seed: the rows, the encoder, the fitted head H, and the tensors a mode trains."""

    def __init__(self, args, seed: int):
        import torch
        from edge_zo import linear_probe
        torch.manual_seed(seed)
        self.args, self.task = args, quality_tasks.TASKS[args.task]
        self.tokenizer, self.model = load_encoder(args.tiny)
        train, dev, test = quality_tasks.split(args.task, seed, 1000)
        self.rows = {"train": train[:64] if args.tiny else train, "dev": dev, "test": test}
        self.y = {split: self.labels(rows) for split, rows in self.rows.items()}
        X = self.features(self.rows["train"])
        classes = len(self.task.labels)
        self.l2, self.cv = linear_probe.choose_l2(X, self.y["train"], classes, seed)
        H = linear_probe.fit_logistic(X, self.y["train"], classes, self.l2)
        self.H = torch.nn.Parameter(torch.tensor(H, dtype=torch.float32))

    def labels(self, rows) -> np.ndarray:
        values = [v.lower() for v in self.task.labels]
        return np.array([values.index(str(r["label"]).lower()) for r in rows])

    def encode(self, rows):
        texts = [self.task.encoder_prompt.format(**r) for r in rows]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.task.max_seq_len,
                              return_tensors="pt")

    def pooled(self, rows):
        import torch
        batch = self.encode(rows)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        unit = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return torch.cat([unit, torch.ones(len(unit), 1)], 1)

    def features(self, rows) -> np.ndarray:
        import torch
        with torch.no_grad():
            return torch.cat([self.pooled(rows[i:i + 64]) for i in range(0, len(rows), 64)]).double().numpy()

    def accuracy(self, split: str) -> float:
        scores = self.features(self.rows[split]) @ self.H.detach().double().numpy().T
        return float((scores.argmax(1) == self.y[split]).mean())

    def trained(self, mode: str) -> list:
        bitfit = mode.endswith("bitfit")
        body = [q for n, q in self.model.named_parameters()
                if not bitfit or n.endswith("bias") or "LayerNorm" in n]
        return body + [self.H]

    def loss(self, idx):
        import torch
        rows = [self.rows["train"][i] for i in idx]
        y = torch.tensor(self.y["train"][idx])
        return torch.nn.functional.cross_entropy(self.pooled(rows) @ self.H.T, y)


def spsa_step(job: Job, params: list, idx, seed: int, lr: float, mu: float) -> None:
    """MeZO: g = (L(θ + μz) − L(θ − μz)) / 2μ; θ <- θ − lr·g·z, z regenerated from its seed."""
    import torch

    def add_z(scale: float) -> None:
        gen = torch.Generator().manual_seed(seed)
        for q in params:
            q.add_(torch.randn(q.shape, generator=gen), alpha=scale)

    with torch.no_grad():
        add_z(mu)
        plus = job.loss(idx).item()
        add_z(-2 * mu)
        minus = job.loss(idx).item()
        add_z(mu)
        add_z(-lr * (plus - minus) / (2 * mu))


def run_seed(args, seed: int) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    clock = common.Stopwatch()
    job = Job(args, seed)
    start = {"step": 0, "forwards": 0, "dev": job.accuracy("dev"), "test": job.accuracy("test")}
    report = {"mode": args.mode, "task": args.task, "seed": seed, "lr": args.lr, "mu": args.mu,
              "l2": job.l2, "cv_acc": job.cv, "curve": [start], **common.machine()}
    params = job.trained(args.mode)
    report["trained_parameters"] = sum(q.numel() for q in params)
    zo = args.mode.startswith("zo")
    optimizer = None if zo or args.mode == "lp" else torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    every = max(1, args.steps // args.evals)
    for t in range(1, 0 if args.mode == "lp" else args.steps + 1):
        idx = rng.choice(len(job.rows["train"]), args.batch, replace=False)
        if zo:
            spsa_step(job, params, idx, int(rng.integers(2**31)), args.lr, args.mu)
        else:
            optimizer.zero_grad()
            job.loss(idx).backward()
            optimizer.step()
        if t % every == 0 or t == args.steps:
            point = {"step": t, "forwards": t * (2 if zo else 3), "dev": job.accuracy("dev"),
                     "test": job.accuracy("test"), "seconds": clock()}
            report["curve"].append(point)
            print(f"{args.mode} seed {seed} step {t}: dev {point['dev']:.3f} test {point['test']:.3f} "
                  f"({clock():.0f} s)", flush=True)
    best = max(report["curve"], key=lambda p: (p["dev"], -p["step"]))  # ties: the earliest
    report.update(best=best, gain=best["test"] - start["test"], wall_s=clock())
    return report


def cell(args, seed: int) -> Path:
    lr = "" if args.mode == "lp" else f"-lr{args.lr:g}-s{args.steps}"
    tag = "tiny" if args.tiny else "minilm"
    return args.results / "ceiling" / f"{tag}-{args.task}-{args.mode}{lr}-seed{seed}.json"


def table(args) -> str:
    from quality import mean_se
    groups: dict[str, list[dict]] = {}
    for path in sorted((args.results / "ceiling").glob("*.json")):
        if "-wiki-" in path.name:  # ceiling_text.py's runs: their own table
            continue
        r = json.loads(path.read_text())
        groups.setdefault(path.name.rsplit("-seed", 1)[0], []).append(r)
    lines = ["| cell | seeds | probe test | best-dev test | gain over the probe | forwards at best |", "|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        lines.append(f"| {name} | {len(rs)} | {mean_se([r['curve'][0]['test'] for r in rs])} | "
                     f"{mean_se([r['best']['test'] for r in rs])} | {mean_se([r['gain'] for r in rs])} | "
                     f"{', '.join(str(r['best']['forwards']) for r in rs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        print(table(args))
        return 0
    for seed in args.seeds:
        report = run_seed(args, seed)
        report["command"] = common.command(__file__, argv)
        common.write_json(report, cell(args, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
