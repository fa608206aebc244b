"""The fine-tuning loop, top to bottom (DESIGN.md sections 6 and 7).

A run folder holds config.json (the resolved config), journal.jsonl (each completed step's
losses), metrics.jsonl (mirrored by metrics.png and tensorboard/ event files: edge_zo/plot.py,
edge_zo/events.py), checkpoints/ (weights + optimizer state, atomically written) and
best/ (the best-dev snapshot). A step is: pick the step's minibatch (a pure function of
seed and step), let the optimizer query the runtime's losses and update, journal the
losses (fsynced: from then on the step counts), log. Resuming loads the newest intact
checkpoint and replays the journaled steps after it with their recorded losses instead of
forward passes (redoing the evaluations among them, which patience counts: edge_zo/verdict.py),
so a run killed at any moment ends in the same weights, and stops at the same step, bit for bit
(edge_zo/resume.py). A bundle's logit bias is stepped after the optimizer, by the gradient its
probes' runs return (edge_zo/logit_bias.py), which goes to gradients/ before the journal line.
SIGINT / SIGTERM (edge_zo/stopping.py) and the memory guard stop before a step, after a
checkpoint there. The command holds the run folder's lock (edge_zo/runfolder.py) throughout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from edge_zo import checkpoint, choice, evaluation, events, linear_probe, notices, run_summary, runconfig, verdict
from edge_zo.logit_bias import LogitBias
from edge_zo.bundle import read_manifest
from edge_zo.errors import UserError
from edge_zo.data import Batch, load_choice, load_classification, load_text, load_tokenizer, make_batch
from edge_zo.memory.guard import Budget, MemoryBudgetExceeded, MemoryGuard
from edge_zo.metrics import Clock, MetricsLog, plot
from edge_zo.optim import DivergedError, check_graph, optimizer_for
from edge_zo.resume import replay, restore, resume_advice, snapshot
from edge_zo.rng import Key
from edge_zo.runconfig import RunConfig
from edge_zo.stopping import StopFlag, Stopped
from edge_zo.templates import ChoiceTemplate, Template, explicit_words, fit_template
from edge_zo.runtime import Runtime


def finetune(config: RunConfig, run_dir: Path, resume: bool = False, budget: Budget | None = None,
             stop: StopFlag | None = None, changed: dict | None = None) -> dict:
    """Run (or resume) a fine-tuning job; returns the last evaluation record.

    `budget` (not part of the run's config: it does not change the math) arms the memory
    guard: near it fewer probe slots per call, at it a checkpoint and MemoryBudgetExceeded.
    metrics.png is drawn once `train` has returned, so its session and buffers are freed:
    drawn beside them, matplotlib set the job's peak RSS (+30 MiB on MiniLM, 1.35x -> 1.17x
    plain inference; benchmarks/README.md section 3).

    `stop` (edge_zo/stopping.py): a signal's flag, honoured before each step with a
    checkpoint. `changed`: the keys `--resume` overrides (RESUME_KEYS); the run goes on
    from its last checkpoint under them, and the journal's steps after it are redone
    (patience alone changes no step: they are replayed, counted under the new value).
    """
    last = train(config, run_dir, resume, budget, stop or StopFlag(), changed or {})
    drawn = plot(MetricsLog(run_dir / "metrics.jsonl").read(), run_dir / "metrics.png",
                 f"{run_dir.name}: {config.preset} on {Path(config.bundle).name}")
    missing = [what for what, there in (("no metrics.png: pip install 'edge-zo[plot]'", drawn),
                                        ("no TensorBoard events: pip install 'edge-zo[tensorboard]'",
                                         events.writer_class())) if not there]
    if missing:  # said once, at the end: metrics.jsonl holds every record either way
        notices.announce(f"{'; '.join(missing)} (metrics.jsonl holds every record)")
    return last


def train(config: RunConfig, run_dir: Path, resume: bool, budget: Budget | None,
          stop: StopFlag, changed: dict) -> dict:
    """The job without its plot: pieces, restore or replay, steps, evaluations, checkpoints."""
    # ---- the pieces: bundle, data, runtime, optimizer ---------------------------------
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(config.bundle)
    template = template_for(config, manifest)
    if not resume:  # a resumed run reads them from its config.json
        config = pin_defaults(config, manifest)
    opt_config = config.optimizer_config(manifest.rank)
    check_graph(opt_config, manifest.graph, config.bundle, manifest.weights)  # a wrong method ends here, before any step
    if resume:  # the checkpoints' weights were trained on this model?
        runconfig.record_fingerprint(run_dir, config)
    tokenizer = load_tokenizer(config.bundle, manifest)
    skipped: list = []  # datasets with skipped rows: announced once the run's folder is set up
    said: set = set()  # integer labels: said once for both files
    train = load_examples(config, config.data, manifest, template, lambda d: skipped.append(("training", d)),
                          said)
    evals = load_examples(config, config.eval_data, manifest, template,
                          lambda d: skipped.append(("eval", d)), said) if config.eval_data else []
    evals = evals[:config.eval_examples] if config.eval_examples else evals
    runtime = Runtime(config.bundle, provider=config.provider, threads=config.threads or None,
                      **(budget.runtime_options() if budget else {}))
    runtime.set_probe_slots(config.probe_slots)
    metrics = MetricsLog(run_dir / "metrics.jsonl")  # TensorBoard's events mirror it (edge_zo/events.py)
    guard = MemoryGuard(budget, runtime, run_dir,
                        notify=lambda message, **record: notices.announce(message, metrics, **record))
    opt = optimizer_for(opt_config)
    root = Key.root(config.seed)
    state = opt.init(runtime.shapes, opt_config, root.child("init"))
    batches = BatchSchedule(train, config, tokenizer, manifest)
    journal = checkpoint.Journal(run_dir / "journal.jsonl")
    bias = LogitBias.for_run(config, manifest, template, run_dir)  # None: no bias, or not trained
    # since_best / evaluated_at: patience's count, in every snapshot (edge_zo/verdict.py)
    progress = {"step": 0, "forward_passes": 0, "train_s": 0.0, "eval_s": 0.0, "best": -np.inf,
                "since_best": 0, "evaluated_at": -1}

    # ---- a fresh run records its config; a resumed one restores and replays ---------
    restored = False
    if resume:
        state, restored = restore(run_dir, runtime, config, state, progress, bias)
        if restored and not changed and verdict.ended(config, progress, metrics.read(), bool(evals)):
            return verdict.said_finished(config, progress, metrics, run_dir)  # writes nothing
    else:
        runconfig.save(config, run_dir)
    metrics.mirror = events.Events(run_dir, metrics.read())
    clock = Clock(progress["train_s"], progress["eval_s"])
    start = run_summary.summary(config, opt_config, runtime, len(train), len(evals), progress["step"], budget,
                                bias is not None)
    tqdm.write("\n".join(run_summary.lines(start, opt_config)), file=sys.stderr)  # stdout: the result JSON
    metrics.write(start)
    announce_start(run_dir, metrics, runtime, skipped, progress["step"])
    if len(train) < config.batch_size and not resume:  # BatchSchedule takes what there is
        notices.announce(f"batch_size {config.batch_size} is more than the {len(train)} training examples: "
                         f"each step uses all {len(train)}", metrics, what="batch_size", step=0,
                         batch_size=config.batch_size, examples=len(train))
    if not resume and (note := LogitBias.untrained_note(config, manifest, template)):
        notices.announce(note, metrics, what="logit_bias", step=0)
    # ---- LP-then-ZO: a new head is fitted first, and kept by a step-0 checkpoint ------
    if not restored and wants_linear_probe(config, manifest):
        record = linear_probe.fit_head(runtime, train, tokenizer, manifest, config.batch_size, config.seed)
        progress["forward_passes"] += record["forward_passes"]
        clock.tick()
        snapshot(run_dir / "checkpoints", 0, runtime, state, progress, clock)
        metrics.write({**record, "step": 0, "train_s": clock.train_s})
        tqdm.write(linear_probe.summary(record))
    recorded = {r["step"] for r in metrics.read() if r.get("kind") == "eval"}  # not written twice
    last: dict = {}

    def evaluate_and_keep_best(step: int, state) -> dict:
        nonlocal last
        with clock.evaluating():
            last = evaluate(runtime, state, evals, tokenizer, manifest, config.batch_size)
        last.update(kind="eval", step=step, forward_passes=progress["forward_passes"],
                    train_s=clock.train_s, eval_s=clock.eval_s)
        if step not in recorded:  # a replayed evaluation the killed run had recorded is not
            metrics.write(last)
            recorded.add(step)
        if verdict.count(progress, step, verdict.score(last)):
            snapshot(run_dir / "best", step, runtime, state, progress, clock)
        return last

    def settle(state) -> bool:
        """The evaluation due at the step reached, unless counted already; whether patience
        stops the run there."""
        if evals and verdict.eval_due(config, progress["step"]) and progress["evaluated_at"] < progress["step"]:
            evaluate_and_keep_best(progress["step"], state)
        return verdict.exhausted(config, progress)

    redo = {k: v for k, v in changed.items() if k != "patience"}  # patience changes no past step
    if resume and redo:  # new values from the checkpoint on: its journaled steps are redone
        journal.truncate_after(progress["step"] - 1)
    elif resume:  # the journaled steps are replayed, with the evaluations among them
        state = replay(journal, runtime, opt, state, root, progress, settle, bias)
    if resume:
        metrics.truncate_after(progress["step"], ends=not verdict.finished(config, progress))
        checkpoint.drop_after(run_dir / "best", progress["step"])  # a redone stretch's old bests
    if resume and changed:
        runconfig.save(config, run_dir)  # after the truncation: never new values over old steps
        metrics.write({"kind": "resume", "step": progress["step"], "changed": changed})

    stopped = settle(state)
    end = progress["step"] if stopped else config.steps
    bar = tqdm(range(progress["step"], end), initial=progress["step"], total=config.steps,
               desc="finetune", unit="step", dynamic_ncols=True, mininterval=1.0)
    for t in bar:
        batch = batches.at(t)
        # ---- memory: fewer probe slots near the budget; at it (or on a stop signal),
        # ---- checkpoint and stop (after the batch is made: its tokenizing counts too) --
        try:
            guard.check(t)
            if stop.signum:
                raise Stopped(stop.signum, f"stopped by {stop.name} before step {t}; checkpoint written to "
                                           f"{run_dir / 'checkpoints'}; continue with: edge-zo finetune "
                                           f"--resume {run_dir}")
        except (MemoryBudgetExceeded, Stopped):
            clock.tick()
            snapshot(run_dir / "checkpoints", t, runtime, state, progress, clock, bias)
            bar.close()
            journal.close()
            raise
        # ---- one step: probes, update; the journal line makes it count ----------------
        try:
            state, info = step(opt, state, runtime, batch, root.child("step", t), token_probs=bias is not None)
        except DivergedError as err:
            bar.close()
            journal.close()
            raise DivergedError(f"{err} {resume_advice(run_dir)}") from None
        if bias is not None:  # its gradient on disk first: a journaled step's is always there
            g = bias.gradient(runtime, batch)
            bias.record(t, g)
        journal.append({"step": t, "losses": info.losses.tolist()})
        if bias is not None:
            bias.apply(runtime, g)
        progress["forward_passes"] += info.forward_passes
        clock.tick()
        metrics.write({"kind": "train", "step": t + 1, "loss": float(np.mean(info.losses)),
                       "lr": info.lr, "forward_passes": progress["forward_passes"],
                       "train_s": clock.train_s, "rss_mib": rss_mib()})
        bar.set_postfix(loss=f"{np.mean(info.losses):.4f}", fwd=progress["forward_passes"],
                        rss=f"{rss_mib():.0f}MiB", **_short(last))
        # ---- evaluation and checkpoints at their intervals ----------------------------
        done = t + 1
        if evals and verdict.eval_due(config, done):
            evaluate_and_keep_best(done, state)
            if verdict.exhausted(config, progress):
                end = done
                break
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            clock.tick()
            snapshot(run_dir / "checkpoints", done, runtime, state, progress, clock, bias)
    bar.close()
    journal.close()
    if evals and progress["evaluated_at"] < end:
        evaluate_and_keep_best(end, state)  # the last iterate, beside the best-dev one
    elif evals and not last:  # evaluated before a kill, or the run ended earlier: its record
        last = verdict.recorded_eval(metrics.read(), end)
    if checkpoint.latest_step(run_dir / "checkpoints") != end:  # after the evaluation: it holds the count
        clock.tick()
        snapshot(run_dir / "checkpoints", end, runtime, state, progress, clock, bias)
    return verdict.end_records(config, progress, metrics, run_dir, last, end)


def step(opt, state, runtime: Runtime, batch: Batch, key: Key, token_probs: bool = False):
    """One optimizer step on `batch`: bind it, let the optimizer query its probes' losses
    (through the multiple-choice oracle where the batch is one) and update; (state, info).
    `token_probs`: the probes' runs also sum that output, for the logit bias's gradient
    (LogitBias.gradient reads and stops it). The memory plan's calibration child steps
    through this too (edge_zo/memory/child.py)."""
    runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
    runtime.collect_token_probs(token_probs)
    return opt.step(state, choice.oracle_for(runtime, batch), key)


def wants_linear_probe(config: RunConfig, manifest) -> bool:
    """linear_probe=auto fits a head when the bundle has one; on insists; off never."""
    if config.linear_probe == "on" and linear_probe.dense_head(manifest) is None:
        raise UserError(f"linear_probe=on but {config.bundle} has no linear head: re-export it with "
                        "--head linear (an encoder) or pass linear_probe=off")
    return config.linear_probe != "off" and linear_probe.dense_head(manifest) is not None


def pin_defaults(config: RunConfig, manifest) -> RunConfig:
    """A new run's config with the defaults that follow its bundle named, so that config.json
    records what the run used whatever later defaults become: the bundle's default template,
    and optimizer.N=1 for a job that trains a logit bias (LogitBias.pin_one_direction)."""
    return LogitBias.pin_one_direction(runconfig.pin_template(config, manifest), manifest,
                                       template_for(config, manifest))


# ---- data ------------------------------------------------------------------------------

def template_for(config: RunConfig, manifest) -> Template | ChoiceTemplate | None:
    """The run's template, checked against the bundle's task; None: causal-LM text."""
    return fit_template(config.prompt_template(), manifest, config.template or "your template",
                        explicit_words(config.template_labels) if config.template_prompt else None)


def load_examples(config: RunConfig, path: str, manifest, template, on_skipped=None, said=None) -> list:
    """The examples of a data file. Rows skipped under skip_bad go to `on_skipped(dataset)`,
    by default said on the terminal (edge_zo/notices.py): never silently; so are integer
    labels read as the bundle's (once per `said` set)."""
    # ("text" too: what a run from before data formats records, whatever its task)
    if template is not None and config.data_format not in ("auto", "text"):
        raise UserError(f"data_format={config.data_format} reads causal-lm rows, but this run uses a "
                        "template (classification or multiple choice): drop data_format")
    if isinstance(template, ChoiceTemplate):
        dataset = load_choice(path, template, config.skip_bad)
    elif template is not None:
        dataset = load_classification(path, template, config.skip_bad)
    else:
        dataset = load_text(path, config.text_field, config.prompt_field or None, config.skip_bad,
                            config.data_format, config.loss_on_prompt)
        notices.announce(dataset.note)
    if dataset.skipped or dataset.multiline:
        (on_skipped or (lambda d: notices.skipped_rows(d, "evaluation")))(dataset)
    if dataset.integer_labels:
        notices.integer_labels(dataset, manifest.label_words, said)
    return dataset.examples


def announce_start(run_dir: Path, metrics: MetricsLog, runtime: Runtime, skipped: list, step: int) -> None:
    """What the run does other than asked, once its folder holds its config: a CUDA
    session on the CPU (the warning is already on the terminal: recorded only) and the
    rows skip_bad skipped (said, listed in RUN/skipped_rows.txt, recorded)."""
    if runtime.startup["fallback"]:
        metrics.write({"kind": "notice", "what": "provider_fallback", "step": step,
                       "requested": runtime.startup["requested"], "provider": runtime.startup["provider"],
                       "message": f"CUDA requested but running on the CPU: {runtime.startup['fallback']}"})
    for role, dataset in skipped:
        notices.skipped_rows(dataset, role, run_dir, metrics, step)


class BatchSchedule:
    """Step t's minibatch: epochs of seeded permutations, so it depends only on (seed, t)."""

    def __init__(self, examples, config: RunConfig, tokenizer, manifest):
        self.examples, self.size, self.seed = examples, min(config.batch_size, len(examples)), config.seed
        self.tokenizer, self.manifest = tokenizer, manifest

    def at(self, t: int) -> Batch:
        per_epoch = len(self.examples) // self.size
        epoch, slot = divmod(t, per_epoch)
        order = Key.root(self.seed).child("data", epoch).generator().permutation(len(self.examples))
        picked = [self.examples[i] for i in order[slot * self.size:(slot + 1) * self.size]]
        return make_batch(picked, self.tokenizer, self.manifest.max_seq_len, self.manifest.pad_token_id)


# ---- evaluation ------------------------------------------------------------------------

def evaluate(runtime: Runtime, state, examples, tokenizer, manifest, batch_size: int) -> dict:
    """The current weights' metrics on `examples` (edge_zo/evaluation.py)."""
    return evaluation.evaluate(runtime, bind_pending(runtime, state), examples, tokenizer, manifest, batch_size)


def evaluate_batches(runtime: Runtime, state, batches) -> dict:
    """`evaluate` on batches already made (the calibration child's, at its shape)."""
    return evaluation.score(batches, evaluation.runtime_scores(runtime, bind_pending(runtime, state)),
                            runtime.manifest.task)


def bind_pending(runtime: Runtime, state) -> dict | None:
    """The update not yet folded into W (X = W + A C), with its sketch bound; None if none
    (no state yet, or a method whose updates are all in W)."""
    return None if state is None else optimizer_for(state.config).pending(state, runtime)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _short(record: dict) -> dict:
    # "dev_": a bare "loss" would collide with the training loss in the progress bar
    return {k.replace("eval_", "dev_"): f"{v:.3f}" for k, v in record.items() if k in ("eval_acc", "eval_loss")}

