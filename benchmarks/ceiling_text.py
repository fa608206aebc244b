"""How much room personalization leaves: backprop on a user's text, the reference for `wiki`.

    python benchmarks/ceiling_text.py --lr 1e-5 --steps 333 --seeds 0     # AdamW, every weight
    python benchmarks/ceiling_text.py --table                              # every run so far
    python benchmarks/ceiling_text.py --tiny                               # CI smoke run (tiny random Llama)

The quality benchmark's personalization cell (`quality.py --task wiki`) moves SmolLM2-135M's
held-out NLL per token by -0.23% in 1000 zeroth-order forwards against a -5% target. This
script asks whether -5% is there to be had at that budget at all: host-side PyTorch, the same
splits (quality_tasks.py: 300 train / 100 dev paragraphs per seed, 200 fixed test
paragraphs), the same metric (mean NLL over every token but each row's first, as
edge_zo.data scores text rows), exact gradients on every weight. A backprop step counts
3 forward-equivalents, so 333 steps of batch 4 match the ZO cell's 1000 forwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality_tasks  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-len", type=int, default=512, help="tokens a row keeps (the bundle's max_seq_len)")
    common.add_reference_args(p, lr=1e-5, steps=333, batch=4, tiny="a 2-layer random Llama, 16 train rows, 4 steps")
    return common.parse_reference(p, argv)


def load_lm(tiny: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from edge_zo_export import models
    folder = models.resolve("smollm2-135m").folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tiny:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=64)
        return tokenizer, LlamaForCausalLM(config)
    return tokenizer, AutoModelForCausalLM.from_pretrained(folder, dtype="float32")


def nll_sum(model, tokenizer, texts: list[str], max_len: int):
    """(summed NLL, scored tokens) of a batch: every token but a row's first, padding masked."""
    import torch
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, :-1]
    target, mask = enc.input_ids[:, 1:], enc.attention_mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return (nll * mask).sum(), mask.sum()


def mean_nll(model, tokenizer, texts: list[str], args) -> float:
    import torch
    total = tokens = 0.0
    with torch.no_grad():
        for i in range(0, len(texts), 8):
            s, n = nll_sum(model, tokenizer, texts[i:i + 8], args.max_len)
            total, tokens = total + float(s), tokens + float(n)
    return total / tokens


def run_seed(args, seed: int, save) -> dict:
    """One seed's curve; `save(result)` is called at every evaluation (a stopped run keeps its points)."""
    import numpy as np
    import torch
    torch.manual_seed(seed)
    torch.set_num_threads(args.threads)
    tokenizer, model = load_lm(args.tiny)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    train, dev, test = ([row["text"] for row in rows] for rows in quality_tasks.split("wiki", seed))
    if args.tiny:
        train, dev, test = train[:16], dev[:8], test[:8]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    order, clock = np.random.default_rng(seed), common.Stopwatch()
    every = max(1, args.steps // args.evals)
    evals = [{"step": 0, "forward_passes": 0, "train_s": 0.0, "eval_loss": mean_nll(model.eval(), tokenizer, dev, args),
              "test_loss": mean_nll(model, tokenizer, test, args)}]
    train_s = 0.0
    for step in range(1, args.steps + 1):
        start = clock()
        model.train()
        idx = order.choice(len(train), size=args.batch, replace=False)
        s, n = nll_sum(model, tokenizer, [train[i] for i in idx], args.max_len)
        optimizer.zero_grad()
        (s / n).backward()
        optimizer.step()
        train_s += clock() - start
        if step % every == 0 or step == args.steps:
            model.eval()
            evals.append({"step": step, "forward_passes": 3 * step, "train_s": train_s,
                          "eval_loss": mean_nll(model, tokenizer, dev, args),
                          "test_loss": mean_nll(model, tokenizer, test, args)})
            print(f"seed {seed} step {step}: dev {evals[-1]['eval_loss']:.4f} test {evals[-1]['test_loss']:.4f}",
                  flush=True)
            save(summary(args, seed, evals))
    return summary(args, seed, evals)


def summary(args, seed: int, evals: list[dict]) -> dict:
    best = min(evals, key=lambda e: e["eval_loss"])
    return {"mode": "bp-all", "task": "wiki", "lr": args.lr, "steps": args.steps, "batch": args.batch, "seed": seed,
            "evals": evals, "complete": evals[-1]["step"] == args.steps, "start_loss": evals[0]["test_loss"],
            "best_dev_loss": best["test_loss"], "best_dev_step": best["step"],
            "change": best["test_loss"] / evals[0]["test_loss"] - 1}


def cell(args, seed: int) -> Path:
    name = f"{'tiny' if args.tiny else 'smollm2-135m'}-wiki-bp-all-lr{args.lr:g}-s{args.steps}-seed{seed}.json"
    return args.results / "ceiling" / name


def table(args) -> str:
    rows = ["| run | test NLL start | best-dev test NLL | change | forward-equivalents | train s | load |",
            "|---|---|---|---|---|---|---|"]
    for path in sorted((args.results / "ceiling").glob("*-wiki-*.json")):
        c = json.loads(path.read_text())
        rows.append(f"| {path.stem} | {c['start_loss']:.4f} | {c['best_dev_loss']:.4f} | {100 * c['change']:+.2f}% "
                    f"| {c['evals'][-1]['forward_passes']}{'' if c.get('complete', True) else ' (stopped)'} "
                    f"| {c['evals'][-1]['train_s']:.0f} "
                    f"| {c['load_avg_start'][0]:.1f}-{c['load_avg_end'][0]:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        print(table(args))
        return 0
    for seed in args.seeds:
        machine, clock = common.machine(), common.Stopwatch()

        def save(result: dict) -> None:
            result.update(command=common.command(__file__, argv), wall_s=clock(), **machine)
            common.write_json(result, cell(args, seed))

        result = run_seed(args, seed, save)
        print(f"seed {seed}: test NLL {result['start_loss']:.4f} -> {result['best_dev_loss']:.4f} "
              f"({100 * result['change']:+.2f}%)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
