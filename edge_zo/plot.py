"""RUN/metrics.png: a run's metrics.jsonl as one picture (matplotlib, the optional [plot] extra).

Two columns (against forward passes, against training time), two rows: the training loss,
drawn raw and faint under its moving average (a ZO step's loss is one minibatch's, noisy);
the held-out score (accuracy, or loss where the data has no labels) with the step-0
evaluation, the baseline a run must beat, as a dashed line. A panel with nothing to draw
says so instead of staying blank. The title names the run.
"""

from __future__ import annotations

from pathlib import Path

from edge_zo.errors import naming

AXES = {"forward_passes": "forward passes", "train_s": "training time (s)"}
SMOOTHING = 50  # at most this many steps a moving-average window


def plot(records: list[dict], out: str | Path, title: str = "") -> Path | None:
    """Draw the PNG; None when matplotlib is not installed (it is optional on a device)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in records if r["kind"] == "train" and all(k in r for k in ("loss", *AXES))]
    evals = [r for r in records if r["kind"] == "eval" and all(k in r for k in AXES)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    if title:
        fig.suptitle(title)
    for col, x in enumerate(AXES):
        _loss_panel(axes[0, col], train, x)
        _eval_panel(axes[1, col], evals, x)
        axes[1, col].set_xlabel(AXES[x])
    fig.tight_layout()
    with naming(out):
        fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values (fewer at the start, so the curve starts at step 1)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _loss_panel(ax, train: list[dict], x: str) -> None:
    ax.set_ylabel("training loss")
    if not train:
        _no_data(ax, "no training steps")
        return
    xs, ys = [r[x] for r in train], [r["loss"] for r in train]
    window = max(1, min(SMOOTHING, len(ys) // 10))
    ax.plot(xs, ys, lw=0.6, alpha=0.35, color="C0", label="per step")
    if window > 1:
        ax.plot(xs, moving_average(ys, window), lw=1.6, color="C0", label=f"moving average ({window} steps)")
    ax.legend(loc="upper right")


def _eval_panel(ax, evals: list[dict], x: str) -> None:
    """Accuracy per split (eval_acc, ...), else the held-out loss; the step-0 value dashed."""
    suffix = "_acc" if any(k.endswith("_acc") for r in evals for k in r) else "_loss"
    splits = sorted({k for r in evals for k in r if k.endswith(suffix) and k.startswith("eval")})
    ax.set_ylabel("accuracy" if suffix == "_acc" else "held-out loss")
    if not splits:
        _no_data(ax, "no eval data (finetune --eval-data FILE scores held-out rows)")
        return
    for i, split in enumerate(splits):
        pts = [(r[x], r[split]) for r in evals if split in r]
        ax.plot(*zip(*pts), marker="o", color=f"C{i + 1}", label=split.removesuffix(suffix))
        start = [r[split] for r in evals if split in r and r.get("step") == 0]
        if start:
            ax.axhline(start[0], ls="--", lw=1, color=f"C{i + 1}", label=f"step 0 (baseline) {start[0]:.3f}")
    ax.legend(loc="best")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
