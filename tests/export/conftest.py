"""Fixtures for the exporter tests: tiny model folders and bundles exported once a session.

Every bundle is made by the real command (`edge_zo.cli.main`, in process to save the
torch import), from a real model folder, and read back with the real manifest reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from edge_zo.bundle import read_manifest  # noqa: E402
from edge_zo.cli import main  # noqa: E402

import tiny_models as tiny  # noqa: E402  (this folder is on sys.path: no __init__.py)

LABELS = ["--label-words", " terrible", " great"]
# name -> (tiny architecture, export options). Exports dominate the run time (~20 s
# each), so five bundles cover every architecture, both tasks, both heads, both graphs,
# fp16 and both opsets.
BUNDLES = {
    "llama-cls": ("llama", ["--task", "classification", *LABELS, "--head", "label-words", "--rank", "4"]),
    "gpt2-lm": ("gpt2", ["--task", "causal-lm", "--rank", "4"]),
    "opt-cls": ("opt", ["--task", "classification", "--rank", "2", "--opset", "18",
                        "--targets", "*decoder.layers.*", "score"]),
    "bert-cls": ("bert", ["--task", "classification", *LABELS, "--rank", "2",
                          "--targets", "*encoder.layer.*", "classifier"]),
    "gpt2-full16": ("gpt2", ["--task", "classification", *LABELS, "--graph", "fullrank",
                             "--dtype", "fp16", "--head", "label-words"]),
}


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """name -> a saved tiny model folder (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = tiny.build(name, root / name)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_folder):
    """name (a key of BUNDLES) -> (bundle folder, manifest), exported once per session."""
    root = tmp_path_factory.mktemp("bundles")
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            arch, options = BUNDLES[name]
            out = root / name
            assert main(["export", str(tiny_folder(arch)), "--out", str(out), *options]) == 0
            cache[name] = (out, read_manifest(out))
        return cache[name]
    return get
