"""The docs against the code: every `edge-zo SUBCOMMAND` line that README.md, docs/*.md,
docker/README.md and edge_zo/samples/README.md show (in code blocks and inline code) names
a real subcommand, and every `--flag` on it is one of that subcommand's options, and every
`key=value` a key the command takes; and the synopsis lines the docs run as examples parse.
A renamed or dropped option fails here before a user copies it from the docs."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from edge_zo.cli import build_parser
from edge_zo.runconfig import RunConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "docker" / "README.md",
        REPO / "edge_zo" / "samples" / "README.md"]
COMMAND = re.compile(r"(?:^|\s)(?:edge-zo|python -m edge_zo\.cli|edge-zo:\w+)\s+([a-z]+)\b([^#|]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def doc_commands() -> list[tuple[str, int, str, str]]:
    """(file, line, subcommand, the rest) of every edge-zo command the docs show: in fenced
    code blocks and in inline `code` spans (prose that names edge-zo is not a command)."""
    found = []
    for path in DOCS:
        fenced = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            spans = [c for c in re.findall(r"`([^`]+)`", line) if c.startswith(("edge-zo ", "python -m edge_zo"))]
            for code in [line] if fenced or line.startswith("    ") else spans:
                for match in COMMAND.finditer(code):
                    found.append((path.relative_to(REPO).as_posix(), number, match.group(1), match.group(2)))
    return found


COMMANDS = doc_commands()


def test_the_docs_show_commands_at_all():
    assert len(COMMANDS) > 40 and {c[2] for c in COMMANDS} >= {"export", "finetune", "eval", "deploy", "predict",
                                                               "plan", "profiles"}


@pytest.mark.parametrize("where, number, command, rest", COMMANDS, ids=[f"{c[0]}:{c[1]}" for c in COMMANDS])
def test_every_command_and_flag_the_docs_show_exists(where, number, command, rest):
    parsers = subparsers()
    assert command in parsers, f"{where}:{number}: `edge-zo {command}` is not a subcommand ({sorted(parsers)})"
    options = {s for a in parsers[command]._actions for s in a.option_strings}
    unknown = [flag for flag in FLAG.findall(rest) if flag not in options]
    assert not unknown, f"{where}:{number}: `edge-zo {command}` has no option {unknown} (it has {sorted(options)})"


RUN_KEYS = {f.name for f in RunConfig.__dataclass_fields__.values()}


@pytest.mark.parametrize("where, number, command, rest",
                         [c for c in COMMANDS if c[2] in ("finetune", "eval") and "=" in c[3]],
                         ids=[f"{c[0]}:{c[1]}" for c in COMMANDS if c[2] in ("finetune", "eval") and "=" in c[3]])
def test_every_key_the_docs_pass_is_a_run_key(where, number, command, rest):
    try:
        words = shlex.split(rest, comments=True)
    except ValueError:  # an unclosed quote in a prose line: its words as they are
        words = rest.split()
    keys = [w.split("=", 1)[0] for w in words if re.fullmatch(r"[a-z_]+(\.[a-zA-Z_]+)?=.*", w)]
    unknown = [k for k in keys if "." not in k and k not in RUN_KEYS]
    assert not unknown, f"{where}:{number}: `edge-zo {command}` takes no key {unknown} (docs/finetune.md lists them)"
