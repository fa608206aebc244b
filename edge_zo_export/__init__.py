"""The host-side exporter: a Hugging Face model -> an edge-zo training bundle (DESIGN.md 3-4).

The only package of the project that imports torch and transformers (besides benchmarks/).
command.py   the `edge-zo export` CLI entry (torch-free at import)
pipeline.py  one export, all or nothing
models.py    the per-architecture table, offline loading, built-ins, target selection
vocab.py     tokenizer.json, label words, padding
lowrank.py   trained matrices as W + A·D[p] layers
heads.py     loss and scores, logits only where needed
graph.py     the ONNX file (dynamo exporter, opset/IR, appended weights)
checks.py    the PyTorch reference and the parity check
"""
