"""The causal LM's logit bias, trained by its exact gradient while zeroth-order steps move the body.

A causal-lm bundle (export's default; `--no-logit-bias` leaves it out) adds b [1, V] to the next-token logits z of every scored
position, and its graph outputs token_probs: for each probe slot, the sum over the K scored
tokens of softmax(z_k + b). The loss is mean_k NLL_k, so its gradient in b is exact and
costs no forward of its own:

    dL/db = (sum_k softmax(z_k + b) - counts(y)) / K        counts(y)[v] = #{k : y_k = v}

The step's probes run at W + A(C ± μB_i); their token_probs' mean is the sum at the centre up
to O(μ²) (the ± pairs cancel the first-order term), so one ZO step's forwards give both
updates. b then takes one Adam step (no weight decay); its moments are checkpointed beside
the optimizer's state, and each step's gradient is written to RUN/gradients/ before the
journal line, so a resumed run replays the bias's steps without forwards, bit for bit.
A job that trains the bias takes one probe direction a step (`pin_one_direction`): each step
is one Adam step of b, so 2 forwards a step give it 4x the steps of the default N = 4.
Measured on SmolLM2-135M personalization (benchmarks/README.md, section 6): the default job
lowers held-out NLL by 1.88% ± 0.02% in 1000 forwards (3 seeds; stop 27's N = 4 with eps 1e-8:
1.24% ± 0.03%), where ZO alone gets 0.23%.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_zo.checkpoint import atomic_write

BETA1, BETA2 = 0.9, 0.999  # Adam's defaults (torch.optim.AdamW's)
# Adam's eps, in units of 1/V (a token's mean predicted probability). Adam's usual 1e-8
# turns the tiny but steady gradient p_v of every token the user's text never uses into a
# full lr step down each step: after 125 steps SmolLM2's 41K never-seen tokens sat at
# b = -0.58 (min -1.1) and held-out NLL rose from then on (frozen-body study, benchmarks/
# README.md section 6). With eps = 5 / V (1.0e-4 on 49,152 tokens) such a token moves in
# proportion to its gradient, as under SGD, while the frequent ones keep Adam's
# normalized steps.
EPS_TIMES_V = 5.0


def bias_gradient(probs_sum: np.ndarray, probes: int, input_ids: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """dL/db [1, V] from the summed token_probs of `probes` slots and the batch they scored."""
    scored = loss_mask[:, 1:] > 0  # position t - 1 predicts token t
    targets = input_ids[:, 1:][scored]
    vocab = probs_sum.shape[-1]
    # counts(y): the one-hot half of the gradient, known from the batch alone
    counts = np.bincount(targets, minlength=vocab).astype(np.float64)
    # dL/db = (mean over probes of sum_k softmax(z_k + b) - counts(y)) / K
    return ((probs_sum.reshape(-1) / max(probes, 1) - counts) / max(targets.size, 1))[None, :]


def adam_step(g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float, eps: float) -> tuple:
    """(delta, m, v) of Adam's step t (1-based) on gradient g."""
    # m = β1 m + (1 - β1) g,  v = β2 v + (1 - β2) g²
    m = BETA1 * m + (1 - BETA1) * g
    v = BETA2 * v + (1 - BETA2) * g * g
    # delta = -lr m̂ / (sqrt(v̂) + eps),  m̂ = m / (1 - β1^t),  v̂ = v / (1 - β2^t)
    delta = -lr * (m / (1 - BETA1 ** t)) / (np.sqrt(v / (1 - BETA2 ** t)) + eps)
    return delta, m, v


@dataclass
class LogitBias:
    """The bias's trainer in one run: its Adam state and the run's gradient log."""

    name: str  # the bundle's exact matrix (its W is the bias)
    lr: float
    log: Path  # RUN/gradients
    m: np.ndarray
    v: np.ndarray
    t: int = 0

    @staticmethod
    def trains(config, manifest, template) -> bool:
        """The bundle has a bias, the job scores text (a template's label or candidate loss is
        not the one token_probs differentiates) and logit_bias_lr > 0."""
        return manifest.logit_bias is not None and template is None and config.logit_bias_lr > 0

    @classmethod
    def for_run(cls, config, manifest, template, run_dir: Path) -> "LogitBias | None":
        """The trainer when the job trains the bias (`trains`), else None."""
        if not cls.trains(config, manifest, template):
            return None
        zeros = np.zeros(manifest.logit_bias.shape, np.float64)
        return cls(manifest.logit_bias.name, config.logit_bias_lr, run_dir / "gradients", zeros, zeros.copy())

    @classmethod
    def pin_one_direction(cls, config, manifest, template):
        """A new job that trains the bias takes one probe direction a step (optimizer.N=1)
        unless it names N: each step is one Adam step of the bias, so 2 forwards a step give
        it 4x the steps of the default's 8 at the same budget, which is what lowered held-out
        NLL (benchmarks/README.md, section 6); config.json records the N the job used."""
        if not cls.trains(config, manifest, template) or "N" in config.optimizer \
                or not hasattr(config.optimizer_config(), "N"):
            return config
        return dataclasses.replace(config, optimizer={**config.optimizer, "N": 1})

    @staticmethod
    def untrained_note(config, manifest, template) -> "str | None":
        """One line when a causal-lm job leaves the bias untrained for a reason the user may
        not know (a logit_bias_lr of 0 is the user's own choice: said by nothing)."""
        if manifest.task != "causal-lm" or config.logit_bias_lr <= 0:
            return None
        if manifest.logit_bias is None and template is None:
            return ("this bundle has no logit bias, so logit_bias_lr is unused (export with --logit-bias, "
                    "causal-lm's default: it lowered held-out NLL 1.9% where ZO alone gave 0.2%)")
        if manifest.logit_bias is not None and template is not None:
            return ("a multiple-choice job leaves the logit bias as exported (its gradient is the text loss's); "
                    "logit_bias_lr is unused")
        return None

    def gradient(self, runtime, batch) -> np.ndarray:
        """The step's dL/db from its runs (loop.step with token_probs); stops the collection."""
        probs_sum, probes = runtime.token_probs
        runtime.collect_token_probs(False)
        return bias_gradient(probs_sum, probes, batch.input_ids, batch.loss_mask)

    def record(self, step: int, g: np.ndarray) -> None:
        """Write step's gradient (fsynced) before its journal line makes the step count."""
        self.log.mkdir(parents=True, exist_ok=True)
        data = io.BytesIO()
        np.save(data, g, allow_pickle=False)
        atomic_write(self._path(step), data.getvalue())

    def recorded(self, step: int) -> np.ndarray | None:
        """Step's gradient as recorded, or None (never written, or damaged: the step is redone)."""
        try:
            g = np.load(self._path(step), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return g if g.shape == self.m.shape else None

    def forget_before(self, step: int) -> None:
        """Drop the gradients of steps before `step` (the oldest checkpoint kept holds them)."""
        for path in self.log.glob("step-*.npy"):
            if int(path.stem.split("-")[1]) < step:
                path.unlink(missing_ok=True)

    def apply(self, runtime, g: np.ndarray) -> None:
        """b <- b + Adam's delta, written into the bound bias."""
        self.t += 1
        delta, self.m, self.v = adam_step(g, self.m, self.v, self.t, self.lr, EPS_TIMES_V / g.size)
        buffer = runtime.W[self.name]
        buffer.write((buffer.read() + delta).astype(buffer.dtype))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"m": self.m, "v": self.v, "t": np.asarray(self.t, np.int64)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Adam's state from a checkpoint (none: one written before the bias was trained)."""
        if "t" in arrays:
            self.m, self.v, self.t = arrays["m"], arrays["v"], int(arrays["t"])

    def _path(self, step: int) -> Path:
        return self.log / f"step-{step:09d}.npy"
