"""edge-zo: forward-only (zeroth-order) fine-tuning of language models over ONNX Runtime.

The device runtime lives here and imports numpy, onnxruntime, psutil and tokenizers,
never torch. The host exporter is the separate `export` package.
"""

__version__ = "0.1.0"
