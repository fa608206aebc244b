"""Every `edge-zo` command in a fenced code block of README.md and docs/*.md, run for real
on a tiny exported model (real subprocesses, real onnxruntime), with the docs' placeholders
mapped to fixtures. A synopsis runs in its shortest form (optional `[...]` parts dropped,
the first of `a|b`); a finetune gets `steps=2` so the file stays fast. A block that cannot
run here (real models to download, a GPU) is skipped only by a marker right above it,
`<!-- doc-test: skip (reason) -->`, and shows in pytest's report as skipped with that reason.
The flags and keys of every command shown anywhere are checked by test_docs_commands.py."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from test_deploy import REVIEWS, tiny, write_jsonl  # noqa: E402

pytestmark = pytest.mark.export

REPO = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\s*\((.+?)\)\s*-->")
# The docs' placeholders and example names -> the fixture they stand for
PLACEHOLDERS = {
    "model": ("MODEL",), "bundle": ("B", "BUNDLE", "bundles/minilm"), "run": ("RUN", "copied/run"),
    "data": ("FILE", "F", "DATA", "train.jsonl", "test.jsonl", "dev.jsonl", "rows.jsonl", "reviews.jsonl"),
    "deployed": ("DIR",), "profile": ("P", "NAME"),
}


def doc_commands() -> list:
    """(where, command text or None, skip reason) of each fenced edge-zo command."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines, fenced, reason = path.read_text(encoding="utf-8").splitlines(), False, None
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                if not fenced:
                    before = "\n".join(lines[max(0, number - 3):number - 1])
                    reason = (SKIP.search(before) or [None, None])[1]
                fenced = not fenced
                continue
            if fenced and line.strip().startswith("edge-zo "):
                where = f"{path.relative_to(REPO).as_posix()}:{number}"
                text = line.strip()
                while text.endswith("\\"):
                    number += 1
                    text = text[:-1] + " " + lines[number - 1].strip()
                found.append((where, text, reason))
    return found


COMMANDS = doc_commands()


def runnable(text: str) -> list[str]:
    """The command's words in its shortest runnable form, comments dropped."""
    text = re.sub(r"\[[^\[\]]*\]", "", re.sub(r"\[[^\[\]]*\]", "", text))  # optional parts (nested once)
    words = shlex.split(text, comments=True)
    return [w.split("|")[0] for w in words if w != "..."][1:]  # without `edge-zo`


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("docs_run")
    model = tiny.build("bert", root / "model")
    data = write_jsonl(root / "reviews.jsonl", [{"text": t, "label": y} for t, y in REVIEWS * 2])
    run = [sys.executable, "-m", "edge_zo.cli"]
    subprocess.run([*run, "export", str(model), "--task", "classification", "--label-words", "terrible", "great",
                    "--rank", "2", "--out", str(root / "bundle")], check=True, capture_output=True)
    subprocess.run([*run, "finetune", "--bundle", str(root / "bundle"), "--data", str(data), "--eval-data",
                    str(data), "--out", str(root / "run"), "steps=2", "batch_size=4"], check=True, capture_output=True)
    subprocess.run([*run, "deploy", str(root / "run"), "--out", str(root / "deployed")], check=True,
                   capture_output=True)
    return {"root": root, "model": model, "bundle": root / "bundle", "run": root / "run", "data": data,
            "deployed": root / "deployed", "profile": "raspberry-pi-5-8gb"}


def mapped(words: list[str], fixtures: dict, scratch: Path) -> list[str]:
    out, previous = [], ""
    for word in words:
        kind = next((k for k, names in PLACEHOLDERS.items() if word in names), None)
        if previous == "--out":  # always a new place: a run, a bundle, a deployed folder or file
            word = str(scratch / ("out.onnx" if word.endswith(".onnx") else "out"))
        elif kind == "run":  # a copy: resume and deploy may change it
            shutil.copytree(fixtures["run"], scratch / "run")
            word = str(scratch / "run")
        elif kind:
            word = str(fixtures[kind])
        out.append(word)
        previous = word
    return out


@pytest.mark.parametrize("where, text, reason", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_the_command_the_docs_show_runs(where, text, reason, fixtures, tmp_path):
    if reason:
        pytest.skip(f"{where}: {reason}")
    words = mapped(runnable(text), fixtures, tmp_path)
    if words[0] == "finetune" and "--resume" not in words:
        words += ["steps=2", "batch_size=4"]
    result = subprocess.run([sys.executable, "-m", "edge_zo.cli", *words], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, f"{where}: `edge-zo {' '.join(words)}` -> {result.returncode}\n{result.stderr}"
    if words[0] == "predict":
        assert all("label" in json.loads(line) for line in result.stdout.splitlines())


def test_the_docs_run_commands_and_say_why_they_skip_any():
    assert len(COMMANDS) >= 15
    skipped = [c for c in COMMANDS if c[2]]
    assert len(skipped) <= len(COMMANDS) // 3, skipped  # most of what the docs show runs
