"""The device runtime must import and build its CLI where torch is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A meta-path finder that makes torch (and what drags it in) unimportable in the child.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("torch", "transformers", "onnxscript", "accelerate")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the device runtime must not need it")
    sys.meta_path.insert(0, Block())
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_blocker_blocks():
    # Guard against a blocker that silently lets torch through (which would make the
    # tests below pass for the wrong reason).
    result = run_without_torch("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_every_edge_zo_module_imports_without_torch():
    result = run_without_torch("""
        import importlib, pkgutil, edge_zo
        names = [m.name for m in pkgutil.walk_packages(edge_zo.__path__, "edge_zo.")]
        for name in names:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as err:  # an optional extra's module (edge_zo.fleet.flower: [fleet])
                if err.name.split(".")[0] != "flwr":
                    raise
        assert "torch" not in sys.modules
        print(len(names))
    """)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 5  # the walk found the package's modules, not nothing


def test_cli_help_works_without_torch():
    result = run_without_torch("""
        from edge_zo.cli import main
        try:
            main(["export", "--help"])
        except SystemExit as stop:
            assert stop.code == 0
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert "--task" in result.stdout
