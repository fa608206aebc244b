"""Package names that cannot clash (issue 16): the wheel's top-level packages are edge_zo and
edge_zo_export only, device profiles are edge_zo's package data, and the exporter is a
subcommand found through an entry point that says how to install it where it is absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
INSTALL = "pip install torch==2.13.0 'edge-zo[export]'"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_wheel_installs_no_generic_top_level_package():
    found = find_packages(str(REPO), include=pyproject()["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {name.split(".")[0] for name in found} == {"edge_zo", "edge_zo_export"}
    assert "edge_zo.memory" in found and not (REPO / "export").exists() and not (REPO / "device_profiles").exists()
    assert "device_profiles/*.toml" in pyproject()["tool"]["setuptools"]["package-data"]["edge_zo"]
    assert pyproject()["project"]["entry-points"]["edge_zo.commands"] == {"export": "edge_zo_export.command"}


def run_hiding(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """Python with the `blocked` top-level packages unimportable, running `code`."""
    block = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run([sys.executable, "-c", block + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


CLI = """
    from edge_zo.cli import main
    sys.exit(main({argv!r}))
"""


def device_install(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """`edge-zo` as in a device image: edge_zo importable, edge_zo_export not (blocked even where
    this environment installed it, as an editable install of the repo does: its entry point is
    then registered but cannot load, which must read as "not installed" too)."""
    return run_hiding(("edge_zo_export",), CLI.format(argv=list(argv)))


def test_export_without_the_exporter_says_how_to_install_it_in_one_line(tmp_path):
    for i, argv in enumerate((["export", "minilm", "--task", "classification", "--out", "b"], ["export", "--help"])):
        (tmp_path / str(i)).mkdir()
        result = device_install(tmp_path / str(i), *argv)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("edge-zo export: error: the exporter is not installed here") and INSTALL in line
    (tmp_path / "help").mkdir()
    listing = device_install(tmp_path / "help", "--help")
    assert listing.returncode == 0 and "[not installed]" in listing.stdout and "finetune" in listing.stdout


def test_export_without_torch_says_how_to_install_it_in_one_line(tmp_path):
    argv = ["export", str(tmp_path), "--task", "classification", "--out", str(tmp_path / "b")]
    result = run_hiding(("torch", "transformers", "onnxscript"), CLI.format(argv=argv))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert INSTALL in line and "No module named" in line


def test_builtin_profiles_are_read_as_package_data():
    result = run_hiding(("device_profiles",), """
        from edge_zo.memory.profiles import builtin_dir, builtin_names, load_profile
        assert "device_profiles" in str(builtin_dir()) and "edge_zo" in str(builtin_dir())
        print(len(builtin_names()), load_profile("raspberry-pi-5-8gb").weight_formats)
    """)
    assert result.returncode == 0, result.stderr
    count, formats = result.stdout.split(" ", 1)
    assert int(count) >= 7 and "int8" in formats
