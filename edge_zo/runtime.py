"""The device runtime: one onnxruntime session over a bundle, evaluated by IO binding.

`Runtime` is the optimizer's oracle (edge_zo/optim calls it; it never imports the
optimizer). It owns the bound buffers:
  W  base weights, read once from the bundle after the session is created (its transient,
     e.g. constant folding, then lands before them) and bound once (CPU: the numpy array itself,
     wrapped zero-copy by OrtValue.ortvalue_from_numpy; CUDA: a device tensor, no host
     copy). W changes only at `fold`, `add_noise`, `add` and (undone exactly) full-rank
     probes; a full-rank probe's perturbation is undone when W is next needed (`_settle`,
     edge_zo/perturbed.py), in one sweep with the next probe or update of the same z when
     that comes next.
  A  per sketch window (`set_sketch`), D per probe: the only bytes written per query.
  U, V  a quantized bundle's adapter (manifest `weights` int8/int4): its low-rank matrices'
     W is frozen in the graph, and `fold` absorbs A C into U V at rank R (adapter.absorb);
     `export_weights` / `load_weights` carry them as "NAME::U" / "NAME::V".
Probes are the types of edge_zo/probes.py, dispatched by type: a `LowRankProbe` has
`.sketch_id` and `.D` (name -> r x n, effective X = W + A D); a `NoiseProbe` has `.key`,
`.scale`, `.names` (effective X = W + scale z(key, name)). Up to `probe_slots` low-rank
probes share one `run()`.
A dense matrix (manifest `dense`, the linear head) has no A and D: the optimizers see it
as a flat vector of m·n entries (`shapes`), perturbed by a low-rank probe's `.noise` (one
probe per run) or a full-rank probe, and updated by `add_noise` / `add`.
An exact matrix (manifest `exact`, the logit bias: edge_zo/logit_bias.py) is a bound W the
optimizers never see; `collect_token_probs` sums its gradient's graph output over runs.
Matrices are m x n, out x in (manifest `shape`); buffers keep the graph's stored layout.
The controller's numpy must run single-threaded BLAS (OPENBLAS_NUM_THREADS=1, set by the
`edge-zo` entry point before numpy loads): idle OpenBLAS threads steal ORT's cores
(measured: a 2-thread forward went from 60 to 107 ms). `startup` reports what was set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_zo import fold, loading, noise
from edge_zo import runtime_inputs as checks
from edge_zo.bundle import BundleError, read_manifest
from edge_zo.errors import UserError
from edge_zo.perturbed import PerturbedWeights
from edge_zo.probes import LowRankProbe, NoiseProbe
from edge_zo.providers import Buffer, SlotBuffer, open_session, place


class Runtime:
    """A bundle opened on an execution provider; see the module docstring."""

    def __init__(self, bundle_dir: str | Path, provider: str = "cpu", profile=None,
                 threads: int | None = None, probe_slots: int | None = None,
                 startup_check=fold.startup_check, mem_limit_mib: int | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir)
        self.model_path = self.bundle_dir / self.manifest.model_file
        self.matrices = {m.name: m for m in self.manifest.matrices}
        self.threads = threads or (profile.threads if profile is not None else None)
        self.bytes_written = [0]  # every write into a bound input adds its size here
        self.run_seconds = 0.0  # time inside session.run, for host-overhead accounting
        records, initializer_names = loading.locate_weights(self.bundle_dir, self.manifest)
        self.W: dict[str, Buffer] = {}

        def load_w(name: str, placement) -> Buffer:
            host = loading.read_tensor(self.bundle_dir, self.model_path, records[name], self.matrices[name])
            # on CUDA the device tensor is the only copy once `host` goes out of scope
            return Buffer(host, placement.device, placement.device_id, keep_host=False, counter=self.bytes_written)

        def make_initializers(placement):
            # W that are the graph's own initializers go to the session as it is created;
            # the rest (every exported bundle's) are read after, so that creation's transient
            # (constant folding; SmolLM2's tied lm_head: +214 MiB) does not stack on W
            self.W = {n: load_w(n, placement) for n in records if self.matrices[n].inputs["W"] in initializer_names}
            return {self.matrices[n].inputs["W"]: b.value for n, b in self.W.items()}

        placement = place(provider, profile, mem_limit_mib=mem_limit_mib)
        try:
            self.session, self.placement, session_s = open_session(
                str(self.model_path), placement, self.threads, make_initializers,
                lambda _session, pl: startup_check(pl))
        except Exception as err:  # onnxruntime's own errors: name the file, no traceback
            raise BundleError(f"{self.model_path}: onnxruntime cannot load it "
                              f"({type(err).__name__}: {str(err).strip()[:300]})") from None
        self.W = {n: self.W[n] if n in self.W else load_w(n, self.placement) for n in records}
        self.fixed_slots = loading.check_graph(self.session, self.manifest, self.model_path)
        self._allocate()
        self.probe_slots = probe_slots or self.manifest.probe_slots
        self.startup = {"provider": self.placement.provider, "requested": provider,
                        "fallback": self.placement.fallback_reason, "session_s": session_s,
                        "intra_op_threads": self.session.get_session_options().intra_op_num_threads,
                        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                        "warmup_s": None}

    # ---- setup ---------------------------------------------------------------------
    def _allocate(self) -> None:
        dev, dev_id, r = self.placement.device, self.placement.device_id, self.manifest.rank
        self.binding = self.session.io_binding()
        for name, buf in self.W.items():
            self.binding.bind_ortvalue_input(self.matrices[name].inputs["W"], buf.value)
        self.A: dict[str, Buffer] = {}
        self.D: dict[str, SlotBuffer] = {}
        for name, mat in self.matrices.items():
            if "D" in mat.inputs:
                (m, n) = mat.shape
                self.A[name] = Buffer(np.zeros((m, r), np.float32), dev, dev_id, counter=self.bytes_written)
                self.binding.bind_ortvalue_input(self.matrices[name].inputs["A"], self.A[name].value)
                self.D[name] = SlotBuffer((self.manifest.probe_slots, r, n), dev, dev_id, self.bytes_written)
        self.adapter: dict[str, Buffer] = {}  # graph input "NAME::U" / "NAME::V" -> its buffer
        self.adapter_error = 0.0  # the largest relative error a fold's compression to rank R made
        for name, mat in self.matrices.items():
            if "U" in mat.inputs:
                (m, n), R = mat.shape, self.manifest.adapter_rank
                for role, shape in (("U", (m, R)), ("V", (R, n))):
                    buf = Buffer(np.zeros(shape, np.float32), dev, dev_id, counter=self.bytes_written)
                    self.adapter[mat.inputs[role]] = buf
                    self.binding.bind_ortvalue_input(mat.inputs[role], buf.value)
        self.folder = fold.Folder(self.placement, self.manifest.matrices[0].dtype, threads=self.threads)
        self.sketch_id = None
        self.perturbed = PerturbedWeights(self.W, self.shapes, self.matrices)  # a full-rank probe's W
        self._bound_slots = None
        self._batch = None
        self.token_probs: list | None = None  # [sum of the probes' token_probs, probes]

    @property
    def lowrank(self) -> bool:
        return self.manifest.graph == "lowrank"

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """(m, n) per trained matrix; (m·n,) for a dense one (the optimizers' 1-D path)."""
        return self.manifest.trained_shapes()

    def set_probe_slots(self, slots: int) -> None:
        """Probes per run(); the memory guard lowers it near the cap (same math)."""
        if not 1 <= slots <= self.manifest.probe_slots:
            raise UserError(f"probe slots {slots} must be between 1 and the bundle's {self.manifest.probe_slots}")
        self.probe_slots = slots

    # ---- batch ---------------------------------------------------------------------
    def set_batch(self, input_ids, attention_mask, labels=None, loss_mask=None) -> None:
        """Bind one batch; shapes and dtypes are checked against the bundle, by input name."""
        ids = checks.int_matrix("input_ids", input_ids, None, self.manifest.max_seq_len)
        feeds = {"input_ids": ids, "attention_mask": checks.int_matrix("attention_mask", attention_mask, ids.shape)}
        if self.manifest.task == "classification":
            feeds["labels"] = checks.labels(labels, ids.shape[0], len(self.manifest.label_words))
        else:
            feeds["loss_mask"] = checks.loss_mask(loss_mask, ids.shape)
        dev, dev_id = self.placement.device, self.placement.device_id
        # CPU: zero-copy wrappers (the arrays are kept alive in _batch); CUDA: one copy up.
        values = {k: ort.OrtValue.ortvalue_from_numpy(v, dev, dev_id) for k, v in feeds.items()}
        for name, value in values.items():
            self.binding.bind_ortvalue_input(name, value)
        self._batch = (feeds, values)

    def warmup(self, batch_size: int) -> float:
        """One forward at the largest shape (all slots, max_seq_len); returns seconds."""
        T = self.manifest.max_seq_len
        ids = np.full((batch_size, T), self.manifest.pad_token_id, np.int64)
        self.set_batch(ids, np.ones_like(ids), labels=np.zeros(batch_size, np.int64),
                       loss_mask=np.ones((batch_size, T), np.float32))
        start = time.perf_counter()
        self._run(self.probe_slots if self.lowrank else 1)
        self.startup["warmup_s"] = time.perf_counter() - start
        return self.startup["warmup_s"]

    # ---- probes --------------------------------------------------------------------
    def set_sketch(self, sketch_id: int, A: dict[str, np.ndarray]) -> None:
        """Bind the sketch A (name -> m x r) for the low-rank probes that follow."""
        _require_lowrank(self, "set_sketch")
        # A subset is fine (optimizer.targets): probes leave the others at D = 0.
        unknown = sorted(set(A) - set(self.shapes))
        if unknown:
            raise ValueError(f"set_sketch: unknown trained matrices {unknown}")
        for name, a in A.items():
            self.A[name].write(checks.shaped(f"A[{name}]", a, self.A[name].shape))
        self.sketch_id = sketch_id

    def losses(self, probes) -> np.ndarray:
        """One fp32 loss per probe, all on the current batch."""
        return self._evaluate(probes, "loss")

    def probe_scores(self, probes) -> np.ndarray:
        """Each probe's per-row scores on the current batch, by the same forwards as
        `losses`: [len(probes), B] summed NLL of each row's scored tokens (causal-lm;
        [.., B, C] label scores for classification). Multiple choice (edge_zo/choice.py)
        computes its loss over candidates from these."""
        return self._evaluate(probes, "scores")

    def _evaluate(self, probes, output: str) -> np.ndarray:
        """`output` of each probe: low-rank probes share runs, `probe_slots` at a time; one
        that moves W itself (full-rank, or with `.noise` on a dense tensor) runs alone."""
        if self._batch is None:
            raise UserError(f"{output} of probes before set_batch(): bind a batch first")
        low = [i for i, p in enumerate(probes) if _shares_runs(p)]
        groups = [low[s:s + self.probe_slots] for s in range(0, len(low), self.probe_slots)]
        out = None
        for group in groups + [[i] for i in sorted(set(range(len(probes))) - set(low))]:
            if group[0] in low:
                self._write_slots([probes[i].D for i in group], [probes[i].sketch_id for i in group])
                values = self._run(len(group), outputs=("loss", output))[-1]
            else:
                values = self._fullrank_run(probes[group[0]], output)
            if out is None:
                out = np.empty((len(probes), *values.shape[1:]), np.float32)
            out[group] = values[:len(group)]
        return out if out is not None else np.empty(0, np.float32)

    def _write_slots(self, Ds: list, sketch_ids: list) -> None:
        """D of probe j into slot j of every matrix (zeros for a matrix a probe leaves out)."""
        _require_lowrank(self, "low-rank probes")
        if any(s != self.sketch_id for s in sketch_ids):
            raise ValueError(f"probes for sketch {sorted(set(sketch_ids))} but sketch {self.sketch_id} is bound")
        for name, slots in self.D.items():
            for j, D in enumerate(Ds):
                if D is not None and name in D:
                    np.copyto(slots.host[j], checks.shaped(f"D[{name}]", D[name], slots.host.shape[1:]))
                else:
                    slots.host[j].fill(0.0)
            slots.push(self.fixed_slots or len(Ds))

    def collect_token_probs(self, on: bool = True) -> None:
        """From now on (until called with False) each run adds its probes' token_probs
        output to `self.token_probs` ([sum, probes], restarted at zero here)."""
        self.token_probs = [np.zeros(self.manifest.logit_bias.shape, np.float64), 0] if on else None

    def _run(self, p: int, outputs=("loss",), settle: bool = True) -> np.ndarray | list:
        if settle:  # W as the optimizer sees it, unless a full-rank probe runs
            self._settle()
        probes = p
        if self.token_probs is not None:
            outputs = (*outputs, "token_probs")
        if self.lowrank:
            p = self.fixed_slots or p  # a graph with a fixed probe axis runs all slots
            if p != self._bound_slots:
                for name, slots in self.D.items():
                    self.binding.bind_ortvalue_input(self.matrices[name].inputs["D"], slots.value(p))
                self._bound_slots = p
        self.binding.clear_binding_outputs()
        for name in dict.fromkeys(outputs):  # ("loss", "loss") binds one output
            self.binding.bind_output(name, "cpu")
        start = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        self.run_seconds += time.perf_counter() - start
        values = dict(zip(dict.fromkeys(outputs), (v.numpy() for v in self.binding.get_outputs())))
        if self.token_probs is not None:  # the probes' slots only (a fixed probe axis runs them all)
            self.token_probs[0] += values["token_probs"][:probes].sum(0, dtype=np.float64)
            self.token_probs[1] += probes
            outputs = outputs[:-1]
        return values[outputs[0]] if len(outputs) == 1 else [values[name] for name in outputs]

    # ---- full-rank (edge_zo/perturbed.py keeps what W holds) -----------------------
    def _fullrank_run(self, probe, output: str) -> np.ndarray:
        """Perturb W in place and run; returns `output` with its probe axis of 1.

        `probe` is a full-rank probe, or a low-rank one with `.noise` (its D goes in slot 0).
        W stays perturbed (`PerturbedWeights.pending`) until it is next needed: a next probe
        of the same z (MeZO's -mu after +mu) undoes and perturbs in one sweep, an `add_noise`
        of the same z (the update) undoes and adds in one; anything else restores W first.
        """
        low = probe if isinstance(probe, LowRankProbe) else None
        if self.lowrank:  # D = 0 for a full-rank probe: full-rank methods keep C = 0
            self._write_slots([low.D if low else None], [low.sketch_id if low else self.sketch_id])
        probe = low.noise if low else probe
        if not isinstance(probe, NoiseProbe):
            raise TypeError(f"a probe that moves W is a NoiseProbe (or a LowRankProbe with one), not {probe!r}")
        names = self.perturbed.names(probe.names)
        offsets = probe.offset or {}
        if set(offsets) - set(names):
            raise ValueError(f"offsets for {sorted(set(offsets) - set(names))}, which the probe does not perturb")
        # LOREN's anisotropic shift: a last-dimension vector added to every row of z
        shifts = [None if offsets.get(n) is None else checks.shaped(f"offset[{n}]", offsets[n], self.shapes[n][-1:])
                  for n in names]
        self.perturbed.perturb(noise.Perturbation(probe.key, names, shifts, probe.scale))
        try:
            return self._run(1, outputs=("loss", output), settle=False)[-1][:1]
        except BaseException:
            self._settle()
            raise

    def _settle(self) -> None:
        """Restore W bit for bit if a probe left it perturbed."""
        self.perturbed.settle()

    def add_noise(self, key, alpha: float, names=None) -> None:
        """W <- W + alpha z(key, name): the MeZO update (PerturbedWeights.add_noise)."""
        self.perturbed.add_noise(key, alpha, names)

    def add(self, delta: dict[str, np.ndarray]) -> None:
        """W <- W + delta: LOREN's update (PerturbedWeights.add)."""
        self.perturbed.add(delta)

    # ---- weights -------------------------------------------------------------------
    def fold(self, C: dict[str, np.ndarray]) -> None:
        """W <- W + A C on the execution provider, with the currently bound sketch A."""
        _require_lowrank(self, "fold")
        self._settle()
        for name, c in C.items():
            if name not in self.A:
                raise ValueError(f"fold: unknown trained matrix {name!r}")
            m, n = self.shapes[name]
            c = checks.shaped(f"C[{name}]", c, (self.manifest.rank, n))
            if name not in self.W:  # a frozen quantized base: the update goes into its adapter
                self._absorb(name, c)
                continue
            self.folder.fold(self.W[name], self.A[name].host, c, self.matrices[name].layout)

    def _absorb(self, name: str, c: np.ndarray) -> None:
        """U V <- rank-R cut of U V + A C (edge_zo/adapter.py), on the host."""
        from edge_zo.adapter import absorb
        U, V = (self.adapter[self.matrices[name].inputs[role]] for role in ("U", "V"))
        new_u, new_v, error = absorb(U.read(), V.read(), self.A[name].host, c)
        U.write(new_u)
        V.write(new_v)
        self.adapter_error = max(self.adapter_error, error)

    def scores(self, C: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Label scores of the current weights (W + A C with the bound A when C is given).

        Classification: [B, num labels]; causal-lm: [B] summed NLL of the scored tokens.
        """
        return self._read("scores", C)

    def features(self, C: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """[B, F] features the linear head scores (bundles exported with --head linear)."""
        if "features" not in {o.name for o in self.session.get_outputs()}:
            raise UserError(f"{self.bundle_dir}: the graph has no features output; "
                            "a linear probe needs a bundle exported with --head linear")
        return self._read("features", C)

    def _read(self, output: str, C) -> np.ndarray:
        """Probe slot 0 of `output` at the current weights (+ A C when C is given)."""
        if self._batch is None:
            raise UserError(f"{output}() before set_batch(): bind a batch first")
        if self.lowrank:
            self._write_slots([C], [self.sketch_id])
        return self._run(1, outputs=("loss", output))[1][0]

    def export_weights(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Current W per matrix name, in the graph's stored layout (checkpoint, deploy).

        copy=False on CPU returns read-only views of the bound buffers: no extra memory.
        """
        self._settle()
        out = {}
        for name, buf in {**self.W, **self.adapter}.items():
            arr = buf.read()
            if copy or not buf.zero_copy:
                out[name] = np.array(arr, copy=True)
            else:
                out[name] = arr.view()
                out[name].flags.writeable = False
        return out

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace W (a checkpoint's `export_weights`); shapes must match the bundle."""
        self._settle()
        buffers = {**self.W, **self.adapter}
        for name, arr in weights.items():
            if name not in buffers or tuple(np.shape(arr)) != tuple(buffers[name].shape):
                raise UserError(f"{self.bundle_dir}: the weights for {name!r} do not fit this bundle's model "
                                "(it now holds another model than they were trained on); use the bundle "
                                "they were trained on")
            buffers[name].write(checks.shaped(f"W[{name}]", arr, buffers[name].shape, buffers[name].dtype))


# ---- input checks ------------------------------------------------------------------

def _shares_runs(probe) -> bool:
    """Low-rank probes share runs; one that also moves dense W (`.noise`) runs alone."""
    return isinstance(probe, LowRankProbe) and probe.noise is None


def _require_lowrank(rt: Runtime, what: str) -> None:
    if not rt.lowrank:
        raise UserError(f"{what} needs a low-rank bundle; {rt.bundle_dir} holds a {rt.manifest.graph} graph")
