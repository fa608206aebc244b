"""A fleet client: one device's replica, its own data and bundle, in a run folder of its own.

The folder is a finetune run folder (config.json, journal.jsonl, checkpoints/), so
`edge-zo eval --run` and `edge-zo deploy` read a replica like any run. Its journal holds
the fleet's aggregated losses of each applied step (fsynced before the step counts);
opening the folder restores the newest checkpoint and replays the journal after it, the
way `finetune --resume` does (edge_zo/loop.py). A round (edge_zo/fleet/wire.py): apply
the steps the server sent, then probe the next step on this device's minibatch.

A client that is behind (late, or back from a crash with an older folder) applies every
step from where it is: catch-up is replay of the server's journal, never weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_zo import checkpoint, choice, runconfig
from edge_zo.bundle import read_manifest
from edge_zo.bundle_hash import fingerprint
from edge_zo.data import load_tokenizer
from edge_zo.errors import UserError
from edge_zo.fleet import wire
from edge_zo.fleet.oracles import ApplyOracle, Collected, ProbeOracle
from edge_zo.loop import BatchSchedule, load_examples, template_for
from edge_zo.resume import replay, restore, snapshot
from edge_zo.memory.guard import MemoryBudgetExceeded, MemoryGuard
from edge_zo.metrics import Clock
from edge_zo.optim import check_graph, optimizer_for
from edge_zo.rng import Key
from edge_zo.runconfig import RunConfig
from edge_zo.runtime import Runtime

FLEET_NAME = "fleet.json"
LORA_RANK = 8  # the delta a LoRA fleet would ship instead, for the wire comparison


@dataclass(frozen=True)
class ClientSettings:
    """What is local to a device: its bundle, its data, its folder, how it runs."""

    bundle: str
    data: str
    folder: str
    batch_size: int = 16
    checkpoint_every: int = 100
    threads: int = 0
    provider: str = "cpu"
    template: str = ""
    profile: str = ""  # a device profile (edge-zo profiles): its memory budget holds this replica
    memory_budget: int = 0  # MiB, over the profile's; 0: the profile's, or no budget without one

    def budget(self):
        """The replica's memory Budget, as `finetune --profile / --memory-budget` makes it."""
        from edge_zo.memory.guard import Budget
        from edge_zo.memory.profiles import load_profile
        profile = load_profile(self.profile) if self.profile else None
        if not (profile or self.memory_budget):
            return None
        return Budget(self.memory_budget or profile.budget_mib, profile)

    def run_config(self, fleet: wire.Fleet) -> RunConfig:
        """This replica as a finetune run: the fleet's seed, optimizer and steps, local rest.
        No linear probe: a head fitted on one device's data would differ on every replica."""
        return RunConfig(bundle=os.path.expanduser(self.bundle), data=os.path.expanduser(self.data),
                         template=self.template, preset=fleet.preset, optimizer=dict(fleet.optimizer),
                         steps=fleet.steps, batch_size=self.batch_size, eval_every=0, checkpoint_every=self.checkpoint_every, seed=fleet.seed,
                         provider=self.provider, threads=self.threads, linear_probe="off")


class FleetClient:
    """One replica; `hello` and `round` answer the server's two kinds of message."""

    def __init__(self, settings: ClientSettings):
        self.settings, self.folder = settings, Path(settings.folder).expanduser()
        self.fleet: wire.Fleet | None = None
        self.pending: tuple | None = None  # (step probed, its calls before losses, losses, examples)

    # ---- opening: the folder's fleet, checkpoint and journal --------------------------------

    def open(self, fleet_json: str | None) -> None:
        """Take the fleet's config (first contact) or the folder's, then restore and replay."""
        saved = self.folder / FLEET_NAME
        mine = wire.Fleet.from_json(saved.read_text()) if saved.is_file() else None
        given = wire.Fleet.from_json(fleet_json) if fleet_json else None
        if mine and given and mine != given:
            raise UserError(f"{self.folder} holds a replica of another fleet ({mine.to_json()}); the server runs "
                            f"{given.to_json()}: give this client a new state folder")
        fleet = mine or given
        if fleet is None:
            raise UserError(f"{self.folder}: no fleet config yet; the server sends it on first contact")
        if self.fleet == fleet and self._fresh():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.fleet is not None:
            self.close()  # a stale copy: the folder is the truth
        self._build(fleet)
        if mine is None:
            self.config = runconfig.pin_template(self.config, self.manifest)
            runconfig.save(self.config, self.folder)
            checkpoint.atomic_write(saved, fleet.to_json().encode())
        self.fleet = fleet

    def _build(self, fleet: wire.Fleet) -> None:
        config = self.config = self.settings.run_config(fleet)
        self.manifest = manifest = read_manifest(config.bundle)
        opt_config = config.optimizer_config(manifest.rank)
        check_graph(opt_config, manifest.graph, config.bundle)
        tokenizer = load_tokenizer(config.bundle, manifest)
        template = template_for(config, manifest)
        train = load_examples(config, config.data, manifest, template)
        budget = self.settings.budget()
        self.runtime = Runtime(config.bundle, provider=config.provider, threads=config.threads or None,
                               **(budget.runtime_options() if budget else {}))
        self.guard = MemoryGuard(budget, self.runtime, self.folder)
        self.opt, self.root = optimizer_for(opt_config), Key.root(config.seed)
        self.batches = BatchSchedule(train, config, tokenizer, manifest)
        self.journal = checkpoint.Journal(self.folder / "journal.jsonl")
        self.progress = {"step": 0, "forward_passes": 0, "train_s": 0.0, "eval_s": 0.0, "best": -np.inf}
        state = self.opt.init(self.runtime.shapes, opt_config, self.root.child("init"))
        state, _ = restore(self.folder, self.runtime, config, state, self.progress)
        self.state = replay(self.journal, self.runtime, self.opt, state, self.root, self.progress)
        self.clock, self.pending = Clock(self.progress["train_s"]), None
        self._journal_size = self._size()

    def _size(self) -> int:
        path = self.folder / "journal.jsonl"
        return path.stat().st_size if path.is_file() else 0

    def _fresh(self) -> bool:
        # Another process (a simulation worker) may have moved this folder on since we held it.
        return self._journal_size == self._size()

    @property
    def step(self) -> int:
        return self.progress["step"]

    # ---- the two messages -------------------------------------------------------------------

    def hello(self, payload: dict) -> dict:
        """First contact: take the fleet config, say where this replica is and what it weighs."""
        self.open(payload.get("fleet"))
        # the bundle's fingerprint as an int (Flower's MetricRecord holds numbers only)
        return {"step": self.step, "bundle_id": int(fingerprint(self.config.bundle)[:15], 16),
                **sizes(self.runtime.shapes)}

    def round(self, payload: dict) -> dict:
        """Apply the steps sent, then probe step `payload["step"]` (none on the last round)."""
        self.open(payload.get("fleet"))
        t = int(payload["step"])
        if wire.key_text(self.root.child("step", t)) != payload["key"]:
            raise UserError(f"the server's key for step {t} is {payload['key']}, this replica's is "
                            f"{wire.key_text(self.root.child('step', t))}: client and server disagree on the seed")
        for j, losses in wire.entries(payload):
            if j == self.step:
                self.apply(j, losses)
        if self.step != t:  # behind what the server sent (an older folder): it sends from here next
            return {"step": self.step}
        if t >= self.config.steps:
            return {"step": self.step}
        losses, examples = self.probe(t)
        return {"step": t, "losses": losses.tolist(), "examples": examples}

    # ---- the two halves of a step (edge_zo/fleet/oracles.py) --------------------------------

    def probe(self, t: int) -> tuple[np.ndarray, int]:
        """This device's losses of step t's probes on its own minibatch; no update. Asked
        again (a round no device answered is run again), the same losses: the step's first
        calls (a fold) are already on this runtime and must not be made twice."""
        if self.pending and self.pending[0] == t:
            return self.pending[2], self.pending[3]
        batch = self.batches.at(t)
        try:  # as in a finetune job: near the budget fewer probe slots a call, at it no step
            self.guard.check(t)
        except MemoryBudgetExceeded:
            raise UserError(f"memory budget {self.guard.budget.mib:.0f} MiB reached on this device (peak "
                            f"{self.guard.peak:.0f} MiB before step {t + 1}): it sits out the fleet's rounds; "
                            "restart it with a larger memory-budget or a smaller batch-size") from None
        self.runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
        oracle = ProbeOracle(choice.oracle_for(self.runtime, batch))
        try:
            self.opt.step(self.state, oracle, self.root.child("step", t))
        except Collected:
            pass
        if oracle.losses_seen is None:
            raise UserError(f"{self.config.preset} finished step {t} without asking for losses: "
                            "it cannot run in a fleet")
        self.pending = (t, oracle.calls, oracle.losses_seen, len(batch.input_ids))
        return oracle.losses_seen, len(batch.input_ids)

    def apply(self, j: int, losses: list[float]) -> None:
        """Step j with the fleet's losses; journaled (fsynced) before it counts."""
        done = self.pending[1] if self.pending and self.pending[0] == j else []
        self.pending = None
        oracle = ApplyOracle(self.runtime, losses, done)
        self.state, info = self.opt.step(self.state, oracle, self.root.child("step", j))
        self.journal.append({"step": j, "losses": info.losses.tolist()})
        self.progress["step"] = j + 1
        self.progress["forward_passes"] += info.forward_passes
        every = self.config.checkpoint_every
        if every and (j + 1) % every == 0 or j + 1 == self.config.steps:
            self.clock.tick()
            snapshot(self.folder / "checkpoints", j + 1, self.runtime, self.state, self.progress, self.clock)
        self._journal_size = self._size()

    def close(self) -> None:
        self.journal.close()


def sizes(shapes, lora_rank: int = LORA_RANK) -> dict:
    """What shipping weights would cost instead: every trained tensor in float32, and a
    LoRA-style delta of rank `lora_rank` (r·(m+n) floats per matrix, 1-D tensors whole)."""
    weights = sum(4 * int(np.prod(s)) for s in shapes.values())
    lora = sum(4 * lora_rank * (s[0] + s[1]) if len(s) == 2 else 4 * s[0] for s in shapes.values())
    return {"weights_bytes": weights, "lora_bytes": lora}
