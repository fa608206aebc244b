"""The `edge-zo` command line: every subcommand listed and documented, errors without tracebacks."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from edge_zo.cli import COMMANDS, PLUGINS, build_parser

SUBCOMMANDS = ["export", "plan", "finetune", "eval", "deploy", "predict", "profiles", "fleet"]


def edge_zo(*args: str) -> subprocess.CompletedProcess:
    # The installed console script, as a user runs it; falls back to the module.
    exe = shutil.which("edge-zo")
    cmd = [exe] if exe else [sys.executable, "-m", "edge_zo.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_lists_every_subcommand():
    result = edge_zo("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name}" in result.stdout, name
    assert set(COMMANDS) | set(PLUGINS) == set(SUBCOMMANDS)  # export: the exporter's entry point


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_is_documented(name):
    parser = subparsers()[name]
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
    assert parser.description


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_exits_zero(name):
    result = edge_zo(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: edge-zo {name}" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["profiles", "--no-such-option"], "unrecognized arguments"),
    (["plan", "--batch", "many"], "invalid int value"),
    (["nosuchcommand"], "invalid choice"),
    (["deploy", "run", "--dtype", "int3"], "invalid choice"),
])
def test_usage_errors_exit_2_with_a_pointer_to_help(args, expected):
    result = edge_zo(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "--help" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["finetune", "--bundle", "b", "--data", "d.jsonl"], "no run folder: pass --out RUN"),
    (["finetune", "--resume", "nowhere"], "nowhere/config.json: missing"),
    (["eval", "--data", "d.jsonl"], "no bundle: pass --bundle DIR or --run RUN"),
])
def test_missing_inputs_name_the_fix(args, message):
    result = edge_zo(*args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_user_errors_print_one_line_and_exit_2():
    result = edge_zo("profiles", "no-such-board")
    assert result.returncode == 2
    assert result.stderr.startswith("edge-zo profiles: error: no device profile named")
    assert "jetson-orin-nano-8gb" in result.stderr  # the message lists what exists
    assert "Traceback" not in result.stderr


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`edge-zo profiles | head -1`: the pipe closes before the table is written."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_zo.cli", "profiles"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
