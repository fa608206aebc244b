"""What `edge-zo deploy RUN --out DIR` writes beside model.onnx so the folder describes itself:
`edge_zo_model.json` (read by edge_zo/predict.py: task, labels, template, max_seq_len, the
output, provenance) and README.md, a model card for people. docs/deploy.md lists the fields."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import edge_zo
from edge_zo.bundle_hash import fingerprint
from edge_zo.metrics import MetricsLog
from edge_zo.predict import FORMAT_VERSION
from edge_zo.templates import ChoiceTemplate, Template

OUTPUT_MEANING = {
    "classification": "float32 [batch, labels]: each label's score; argmax is the prediction, softmax the probabilities",
    "multiple-choice": "float32 [batch]: summed NLL of each candidate's tokens; the lowest mean NLL is the answer",
    "causal-lm": "float32 [batch]: summed NLL of the scored tokens (loss_mask); lower is better",
}


def describe(run: Path, config, manifest, template, weights: str, step: int, dtype: str) -> dict:
    """edge_zo_model.json's content for a run's deployed snapshot."""
    task = "multiple-choice" if isinstance(template, ChoiceTemplate) else manifest.task
    out = {"format": FORMAT_VERSION, "task": task, "max_seq_len": manifest.max_seq_len,
           "pad_token_id": manifest.pad_token_id, "dtype": dtype,
           "inputs": ["input_ids", "attention_mask"] + (["loss_mask"] if manifest.task == "causal-lm" else []),
           "output": {"name": "scores", "meaning": OUTPUT_MEANING[task]}}
    if isinstance(template, Template):
        out.update(labels=list(template.labels), label_words=list(manifest.label_words),
                   template={**dataclasses.asdict(template), "capitalize": list(template.capitalize)})
    elif isinstance(template, ChoiceTemplate):
        out.update(template_name=config.template, choices=list(template.choices))
    else:
        out.update(text_field=config.text_field)
    out["provenance"] = {"base_model": manifest.source, "bundle_fingerprint": fingerprint(config.bundle),
                         "run": Path(run).resolve().name, "optimizer": config.preset,
                         "optimizer_values": dict(config.optimizer), "weights": weights, "step": step,
                         "dev": _dev_result(Path(run)), "deployed_at": _now(), "edge_zo_version": edge_zo.__version__}
    return out


def _dev_result(run: Path) -> dict | None:
    """The run's last verdict record (start, best, best_step, metric), if it had eval data."""
    path = run / "metrics.jsonl"
    verdicts = [r for r in MetricsLog(path).read() if r.get("kind") == "verdict"] if path.is_file() else []
    if not verdicts:
        return None
    return {k: verdicts[-1].get(k) for k in ("metric", "start", "best", "best_step", "improved")}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def model_card(description: dict) -> str:
    """README.md of the deployed folder."""
    p, task = description["provenance"], description["task"]
    dev = p["dev"]
    dev_line = (f"{dev['metric']} {dev['start']:.4f} at step 0 -> {dev['best']:.4f} at step {dev['best_step']}"
                if dev else "no eval data in the run")
    usage = ("model.predict([\"your text\"])  # label names; .predict_proba(...) for probabilities"
             if task == "classification" else "model.nll([\"your text\"])  # mean NLL per token"
             if task == "causal-lm" else "# multiple choice: score it with `edge-zo eval --run RUN`")
    labels = f"\nLabels: {', '.join(description['labels'])}.\n" if description.get("labels") else ""
    base = p["base_model"]
    name = f"{base.get('model', 'a model')} ({base.get('architecture', '?')}, sha256 {str(base.get('sha256', '?'))[:16]})"
    return f"""# {p['run']}: {base.get('model', 'a model')} fine-tuned with edge-zo

A {task} model fine-tuned on the device with forward passes only ({p['optimizer']}, {p['step']} steps,
weights: {p['weights']}), merged into a plain ONNX model ({description['dtype']}).
{labels}
Dev score of the run: {dev_line}.

## Use

```python
import edge_zo
model = edge_zo.load("this folder")
{usage}
```

or `edge-zo predict DIR --data rows.jsonl`. It needs onnxruntime, numpy and tokenizers only.
Inputs are formatted with the run's template and tokenized with `tokenizer.json` (at most
{description['max_seq_len']} tokens); `edge_zo_model.json` holds the details.

## Provenance

- base model: {name}
- bundle fingerprint: {p['bundle_fingerprint']}
- run: {p['run']}; optimizer {p['optimizer']} {p['optimizer_values'] or ''}
- deployed {p['deployed_at']} by edge-zo {p['edge_zo_version']}
{_adapter_line(description)}"""


def _adapter_line(description: dict) -> str:
    if "adapter" not in description:
        return ""
    spec = description["adapter"]
    worst = max((m["rel_error"] for m in spec["matrices"].values()), default=0.0)
    return (f"- adapter.npz: the update as B·A at rank {spec['rank']} (largest relative error {worst:.3g}); "
            "`edge_zo.adapter.apply(base_weights, folder)` adds it onto the base model\n")
