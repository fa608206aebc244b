"""edge-zo: forward-only (zeroth-order) fine-tuning of language models over ONNX Runtime.

The device runtime lives here and imports numpy, onnxruntime, psutil and tokenizers,
never torch. The host exporter is the separate `export` package.
"""

__version__ = "0.1.0"


def load(folder, provider: str = "cpu"):
    """A deployed model folder (`edge-zo deploy RUN --out DIR`), ready to `.predict(texts)`:
    edge_zo/predict.py. Needs onnxruntime, numpy and tokenizers only."""
    from edge_zo.predict import load as load_folder
    return load_folder(folder, provider)
