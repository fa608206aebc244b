"""`edge-zo deploy`: a run's trained weights merged into a plain inference model.onnx.

`--out DIR` (the usual form) writes a self-describing folder: model.onnx, the bundle's
tokenizer.json, edge_zo_model.json and a model card (edge_zo/model_card.py), which
`edge-zo predict` and `edge_zo.load(DIR)` read (edge_zo/predict.py). `--out FILE.onnx`
writes the model alone. An existing model is replaced only with --force or when
--only-if-better finds the new one better.

Steps: load the run's best (or last) snapshot into a Runtime, fold the optimizer's pending
update into W (`flush`), take W from the runtime, and write the bundle's inference.onnx
(docs/export.md) with those W as initializers: no A/D inputs, no probe axis, loadable by
any onnxruntime. The new file is checked before it replaces anything: a plain
`onnxruntime.InferenceSession` (no IO binding) must reproduce the training graph's
`Runtime.scores()` on a few batches. `--only-if-better DATA` then keeps the previous model
unless the new one scores strictly better on DATA.

fp16: the `onnx` package ships no graph-wide float16 converter (that lives in
onnxconverter-common), so fp16 output stores each float32 initializer as float16 followed
by a Cast to float32: the file halves and the arithmetic stays fp32 (onnxruntime folds
the casts at load, so in memory the model is fp32 again).

`onnx` is needed here (and only here on the device side): it is imported inside the
functions, so the rest of the runtime never needs it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_zo import checkpoint, evaluation, loop, resume, runconfig
from edge_zo.bundle import BundleError, read_manifest
from edge_zo.data import Example, load_tokenizer
from edge_zo.errors import UserError, writes_to
from edge_zo.leftovers import pid_alive, remove_stale_partials, staging_path
from edge_zo.optim import optimizer_for
from edge_zo.predict import DESCRIPTION_NAME, MODEL_NAME, TOKENIZER_NAME
from edge_zo.runtime import Runtime

# Allowed max |deployed - training graph| per score: absolute + relative * |score|.
# A quantized base (export --weights int8|int4) quantizes activations inside its MatMuls: the
# training graph (adapter inside the probe path) and the deployed one (adapter on its own)
# differ by float rounding, and a rounding step of an activation moves a score by far more
# (MiniLM after 12 steps: 1.45e-3), so their parity is held to this looser bound.
TOLERANCE = {"fp32": (1e-4, 1e-5), "fp16": (5e-2, 1e-2), "quantized": (5e-3, 1e-3)}
PARITY_BATCHES, PARITY_BATCH_SIZE = 3, 8
SINGLE_FILE_LIMIT = 2**31 - 2**26  # protobuf's 2 GB cap, less room for the graph itself
FP16_MIN_ELEMENTS = 16  # scalars and tiny vectors are not worth a Cast node
SYNTHETIC = ["a short sentence to check the deployed model with",
             "another one , longer , so that the batch is padded on the right side"]


@dataclass
class DeployOptions:
    run: Path
    out: Path
    dtype: str = "fp32"  # fp32 | fp16 (initializers stored in fp16)
    weights: str = "best"  # best | last
    only_if_better: str | None = None  # held-out data to compare with the existing --out
    force: bool = False  # replace an existing model at --out
    adapter: bool = False  # also adapter.npz: the update as B·A (edge_zo/adapter.py)
    adapter_rank: int = 0  # its rank; 0: the bundle's
    bundle: str | None = None  # the run's bundle when it is not where the run recorded it


@dataclass
class DeployReport:
    out: Path
    weights: str  # which snapshot went in, e.g. "best (step 20)"
    bytes: int
    parity_diff: float
    parity_rows: int
    parity_source: str
    metric: str = ""  # only-if-better: accuracy | mean NLL
    new_score: float | None = None
    old_score: float | None = None
    replaced: bool = True


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("deploy needs the onnx package: pip install onnx") from None
    return onnx


def deploy(opts: DeployOptions) -> DeployReport:
    onnx = require_onnx()
    config = runconfig.load(Path(opts.run), bundle=opts.bundle)  # the model the run's weights were trained on
    manifest = read_manifest(config.bundle)
    if not manifest.inference_file:
        raise BundleError(f"{config.bundle} was exported before bundles carried inference.onnx; "
                          f"re-export it with this edge-zo (`edge-zo export ... --out "
                          f"{config.bundle} --force`: same model and targets) and deploy again")
    _restore_interrupted(opts.out)  # a folder swap cut short by a kill: the previous model back
    remove_stale_partials(opts.out)  # staging folders of deploys killed before their rename
    _check_out(opts)
    if opts.adapter and not is_folder(opts.out):
        raise UserError(f"--adapter writes adapter.npz beside the model: give a folder (--out DIR), not {opts.out}")
    runtime = Runtime(config.bundle, threads=config.threads or None)
    label, step = _load_trained(opts, runtime, config)
    staging = staging_path(opts.out)
    next_step = f"nothing was written to {opts.out}; free space (or lift the limit) or choose another --out"
    with writes_to(str(staging), next_step):
        report = _write_checked(opts, config, manifest, runtime, (label, step), staging)
    if report.replaced and is_folder(opts.out):
        report.out = opts.out / MODEL_NAME
    return report


def is_folder(out: Path) -> bool:
    """--out DIR (a self-describing folder) unless it names a .onnx file."""
    return out.suffix != ".onnx"


def model_path(out: Path) -> Path:
    return out / MODEL_NAME if is_folder(out) else out


def _write_checked(opts: DeployOptions, config, manifest, runtime: Runtime, snapshot: tuple, staging: Path):
    """Merge, save into `staging`, check parity (and --only-if-better), then move into place.
    `snapshot`: (which weights, e.g. "best (step 20)", and that step)."""
    label = snapshot[0]
    onnx = require_onnx()
    model = merged_model(onnx, Path(config.bundle) / manifest.inference_file, manifest,
                         runtime.export_weights(copy=False), opts.dtype)
    staging.mkdir()
    try:  # a folder is built as staging/NAME, a file as staging/FILE
        staged = staging / opts.out.name / MODEL_NAME if is_folder(opts.out) else staging / opts.out.name
        staged.parent.mkdir(exist_ok=True)
        size = save_model(onnx, model, staged)
        del model
        tokenizer = load_tokenizer(config.bundle)
        rows, source = parity_batches(config, manifest, tokenizer)
        tolerance = "fp16" if opts.dtype == "fp16" or manifest.matrices[0].dtype == "float16" else \
            "quantized" if manifest.weights != "fp32" else "fp32"
        diff = check_parity(staged, runtime, rows, tolerance)
        report = DeployReport(opts.out, label, size, diff, sum(len(b.labels) for b in rows), source)
        if opts.only_if_better and model_path(opts.out).exists():
            _compare(report, staged, opts, config, manifest, tokenizer)
        if report.replaced and is_folder(opts.out):
            _describe(staged.parent, opts, config, manifest, snapshot, runtime)
            _swap_into_place(staged.parent, opts.out, staging)
        elif report.replaced:
            _move_into_place(staged, opts.out)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- inputs -----------------------------------------------------------------------------

def _check_out(opts: DeployOptions) -> None:
    out = opts.out
    if is_folder(out):
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder (or a name ending in .onnx for the model alone)")
        out.parent.mkdir(parents=True, exist_ok=True)  # a new folder's parents, like `mkdir -p`
        if out.is_dir() and any(out.iterdir()) and not (out / MODEL_NAME).exists():
            # a replacement swaps the folder whole: never over files that are not a model's
            raise UserError(f"--out {out} holds other files, not a deployed model; choose a new or empty folder")
    elif not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it "
                        f"(mkdir -p {out.parent}) or choose another --out")
    elif out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if model_path(out).exists() and not (opts.force or opts.only_if_better):
        raise UserError(f"--out {out} already holds a deployed model; pass --force to replace it, or "
                        "--only-if-better DATA to replace it only if the new one scores better")


def _load_trained(opts: DeployOptions, runtime: Runtime, config) -> tuple[str, int]:
    """Put the chosen snapshot into `runtime` with its pending update folded into W; (which
    weights, its step)."""
    folders = {"best": Path(opts.run) / "best", "last": Path(opts.run) / "checkpoints"}
    which = opts.weights
    ckpt = checkpoint.load_latest(folders[which])
    if ckpt is None and which == "best":  # a run without eval data keeps no best/
        which, ckpt = "last", checkpoint.load_latest(folders["last"])
    if ckpt is None:
        raise UserError(f"{opts.run}: no complete checkpoint to deploy (looked in "
                        f"{folders[opts.weights]}); let `edge-zo finetune` run until it writes "
                        f"one (checkpoint_every), or resume it with --resume {opts.run}")
    state = resume.load_snapshot(ckpt, runtime, config)
    optimizer_for(config.optimizer_config(runtime.manifest.rank)).flush(state, runtime)
    note = "" if which == opts.weights else ", no best/ snapshot (no eval data)"
    return f"{which} (step {ckpt.step}{note})", ckpt.step


# ---- the merged model -------------------------------------------------------------------

def merged_model(onnx, inference_path: Path, manifest, weights: dict, dtype: str):
    """inference.onnx with each trained W (a quantized bundle's: its adapter U, V; the
    quantized base is already there) turned from a graph input into an initializer."""
    model = onnx.load(str(inference_path))  # external data is read in
    graph = model.graph
    # W by matrix name; a quantized base's adapter U, V by graph input name (Runtime.export_weights)
    by_input = {name: weights[m.name if role == "W" else name]
                for m in manifest.matrices for role, name in m.inputs.items() if role in ("W", "U", "V")}
    missing = sorted(set(by_input) - {i.name for i in graph.input})
    if missing:
        raise BundleError(f"{inference_path}: no inputs {missing[:3]} for the trained matrices; "
                          f"the bundle is inconsistent: re-export it")
    kept = [i for i in graph.input if i.name not in by_input]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(onnx.numpy_helper.from_array(np.ascontiguousarray(w), name)
                             for name, w in by_input.items())
    if dtype == "fp16":
        store_fp16(onnx, graph)
    return model


def store_fp16(onnx, graph) -> None:
    """Each float32 initializer -> a float16 one plus a Cast back to float32 (see top)."""
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < FP16_MIN_ELEMENTS:
            continue
        name = init.name
        half = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).astype(np.float16),
                                            f"{name}::fp16")
        init.CopyFrom(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT,
                                           name=f"{name}::cast"))
    nodes = casts + list(graph.node)  # the casts run first: nodes stay topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)


def save_model(onnx, model, path: Path) -> int:
    """One self-contained file when it fits protobuf's 2 GB, else `path.data` beside it."""
    payload = sum(len(t.raw_data) for t in model.graph.initializer)
    if payload < SINGLE_FILE_LIMIT:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    return sum(p.stat().st_size for p in _files(path))


def _files(path: Path) -> list[Path]:
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def _describe(folder: Path, opts: DeployOptions, config, manifest, snapshot: tuple, runtime: Runtime) -> None:
    """tokenizer.json, edge_zo_model.json and README.md (and adapter.npz) beside the staged model."""
    import json
    from edge_zo import adapter, loading, model_card
    shutil.copyfile(Path(config.bundle) / TOKENIZER_NAME, folder / TOKENIZER_NAME)
    description = model_card.describe(opts.run, config, manifest, loop.template_for(config, manifest),
                                      *snapshot, opts.dtype)
    if opts.adapter:
        base = loading.read_weights(Path(config.bundle), manifest)[0]
        description["adapter"] = adapter.write(folder, manifest, base, runtime.export_weights(copy=False),
                                               opts.adapter_rank)
    (folder / DESCRIPTION_NAME).write_text(json.dumps(description, indent=2) + "\n")
    (folder / "README.md").write_text(model_card.model_card(description))


PREVIOUS = "previous"  # where a replaced model folder waits, inside the staging folder


def _swap_into_place(folder: Path, out: Path, staging: Path) -> None:
    """Two renames: the previous model folder into `staging` (removed with it), the new one
    to `out`, so `out` is always one whole model. A kill between them leaves the previous
    one in the staging folder, and the next deploy to `out` puts it back first."""
    if out.exists():
        os.replace(out, staging / PREVIOUS)
    os.replace(folder, out)


def _restore_interrupted(out: Path) -> None:
    if out.exists() or not is_folder(out):
        return
    for previous in out.parent.glob(f".{out.name}.partial-*/{PREVIOUS}"):
        pid = previous.parent.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            os.replace(previous, out)
            return


def _move_into_place(staged: Path, out: Path) -> None:
    """Data file first, then the model (each an atomic rename); drop a stale data file."""
    data, old_data = staged.with_name(staged.name + ".data"), out.with_name(out.name + ".data")
    if data.exists():
        os.replace(data, old_data)
    elif old_data.exists():
        old_data.unlink()
    os.replace(staged, out)


# ---- checks and scores -----------------------------------------------------------------

def parity_batches(config, manifest, tokenizer) -> tuple[list, str]:
    """A few batches of the run's eval data, or a synthetic one when it has none."""
    examples, source = [], "a synthetic batch"
    if config.eval_data and Path(config.eval_data).is_file():
        template = loop.template_for(config, manifest)
        examples = loop.load_examples(config, config.eval_data, manifest, template)
        examples, source = examples[:PARITY_BATCHES * PARITY_BATCH_SIZE], f"eval data {config.eval_data}"
    if not examples:
        examples = [Example(text, 0 if manifest.task == "classification" else -1) for text in SYNTHETIC]
    return list(evaluation.batches(examples, tokenizer, manifest, PARITY_BATCH_SIZE)), source


def _session(path: Path):
    import onnxruntime as ort
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own errors: name the file, no traceback
        raise UserError(f"{path}: onnxruntime cannot load it ({type(err).__name__}: "
                        f"{str(err).strip()[:300]})") from None


def _run(session, batch, task: str) -> np.ndarray:
    feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if task == "causal-lm":
        feed["loss_mask"] = batch.loss_mask
    names = {i.name for i in session.get_inputs()}
    if set(feed) != names:
        raise UserError(f"the model takes inputs {sorted(names)}, not {sorted(feed)}: it is not "
                        f"an `edge-zo deploy` model of a {task} bundle")
    return session.run(["scores"], feed)[0]


def check_parity(path: Path, runtime: Runtime, batches: list, tolerance: str) -> float:
    """max |deployed scores - training graph scores|; raises when over the tolerance."""
    session, task = _session(path), runtime.manifest.task
    atol, rtol = TOLERANCE[tolerance]
    worst, excess = 0.0, -np.inf
    for batch in batches:
        runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
        want = runtime.scores(None)  # C is 0 after the flush: W holds the whole update
        got = _run(session, batch, task)
        diff = np.abs(got.astype(np.float64) - want)
        worst = max(worst, float(diff.max()))
        excess = max(excess, float((diff - atol - rtol * np.abs(want)).max()))
    if not np.isfinite(worst) or excess > 0:
        raise UserError(f"parity check failed: the deployed model's scores differ from the "
                        f"training graph's by up to {worst:.3g} (allowed {atol:g} + {rtol:g}·|score|, "
                        f"{tolerance}); nothing was written. Re-export the bundle with this edge-zo "
                        f"and deploy again; if it persists, it is a bug: please report it")
    return worst


def score(path: Path, batches: list, task: str) -> float:
    """Accuracy (classification, multiple choice) or mean token NLL (causal-lm text) of a
    deployed model, scored as finetune scores it (edge_zo/evaluation.py)."""
    session = _session(path)
    metrics = evaluation.score(batches, lambda batch: _run(session, batch, task), task)
    return metrics.get("eval_acc", metrics.get("eval_loss", 0.0))


def _compare(report: DeployReport, staged: Path, opts: DeployOptions, config, manifest, tokenizer) -> None:
    template = loop.template_for(config, manifest)
    examples = loop.load_examples(config, opts.only_if_better, manifest, template)
    batches = list(evaluation.batches(examples, tokenizer, manifest, config.batch_size))
    task, accuracy = manifest.task, template is not None  # a template: labels or candidates to get right
    report.metric = "accuracy" if accuracy else "mean NLL"
    report.new_score = score(staged, batches, task)
    report.old_score = score(model_path(opts.out), batches, task)
    better = report.new_score > report.old_score if accuracy else report.new_score < report.old_score
    report.replaced = bool(better)
