"""Bad data files end cleanly (issue 15, the input half): every bad row named by its line,
counted when skipped; unreadable files refused whole. Through the real `edge-zo` in a
child process on a tiny bundle where a command is the subject.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_zo.data import DataError, load_classification, load_text
from edge_zo.errors import UserError
from edge_zo.templates import user_template

from faults.helpers import assert_clean, edge_zo, notes, records
from faults.inputs import REVIEW, ROWS, csv_file, finetune, jsonl, make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("inputs"))


# ---- data files: every bad row named by its line, counted when skipped ------------

CSV_FAULTS = [  # (the bad line, what the message says)
    ('"good film,positive', "unclosed quote"),
    ("good, film,positive", "3 fields but the header has 2 (an unquoted ','"),
    ("good film", "1 fields but the header has 2"),
    ('"good" film,positive', "malformed quoting"),
    ("good film,meh", "label 'meh' is not one of"),
    (",positive", "field 'text' is empty"),
]


@pytest.mark.parametrize("bad, reason", CSV_FAULTS)
@pytest.mark.parametrize("at", [2, 5])  # the bad row's index among the 10 data rows
def test_a_bad_csv_row_is_named_by_its_line_and_skipped_alone(tmp_path, bad, reason, at):
    lines = [f"{t},{y}" for t, y in ROWS]
    lines[at] = bad
    path = csv_file(tmp_path / "d.csv", lines)
    with pytest.raises(DataError) as err:
        load_classification(path, REVIEW)
    assert f"{path}, line {at + 2}: {reason}" in str(err.value) and "\n" not in str(err.value)
    data = load_classification(path, REVIEW, skip_bad=True)
    assert len(data.examples) == 9 and len(data.skipped) == 1  # nothing else lost
    assert data.skipped[0].startswith(f"line {at + 2}: {reason}")


def test_quoted_fields_over_lines_keep_the_line_numbers(tmp_path):
    path = csv_file(tmp_path / "d.csv", ['"good\nfilm",positive', '"bad, ""awful"" film",negative', "x,meh"])
    with pytest.raises(DataError, match=r"line 5: label 'meh'"):  # the quoted newline is line 3
        load_classification(path, REVIEW)
    data = load_classification(path, REVIEW, skip_bad=True)
    assert [e.prompt for e in data.examples] == ["Review: good\nfilm\nSentiment:", 'Review: bad, "awful" film\nSentiment:']
    assert data.multiline == ["lines 2-3"]


def test_a_quote_closed_rows_later_is_said(tmp_path, capsys):
    """Valid CSV that swallows rows 3-4 into row 2's text: said, since no parser can tell."""
    from edge_zo import loop
    from edge_zo.runconfig import RunConfig

    path = csv_file(tmp_path / "d.csv", ['"good film,positive', "fine film,positive", 'ok",negative', "bad,negative"])
    examples = loop.load_examples(RunConfig(bundle="b", data=str(path)), str(path), None, REVIEW)
    assert len(examples) == 2
    (said,) = [line for line in capsys.readouterr().err.splitlines() if "run over several lines" in line]
    assert "1 rows of the evaluation data" in said and "lines 2-4" in said and "close it" in said


def test_a_tsv_extra_field_is_a_bad_row(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\ngood\tpositive\nbad\tfilm\tnegative\n")
    with pytest.raises(DataError, match="line 3: 3 fields but the header has 2"):
        load_classification(path, REVIEW)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_line_that_is_not_utf8_is_a_bad_row_with_its_byte_offset(tmp_path, suffix):
    good = [json.dumps({"text": t, "label": y}) for t, y in ROWS] if suffix == ".jsonl" else \
        ["text,label"] + [f"{t},{y}" for t, y in ROWS]
    raw = [line.encode() for line in good]
    raw[3] = raw[3].replace(b"film", b"caf\xe9")  # latin-1
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"\n".join(raw) + b"\n")
    offset = sum(len(line) + 1 for line in raw[:3]) + raw[3].index(b"\xe9")
    with pytest.raises(DataError) as err:
        load_classification(path, REVIEW)
    assert f"line 4: not UTF-8 text (byte 0xe9 at byte offset {offset} of the file)" in str(err.value)
    data = load_classification(path, REVIEW, skip_bad=True)
    assert len(data.skipped) == 1 and len(data.examples) == len(ROWS) - 1


@pytest.mark.parametrize("content, message", [
    ("text,label\n".encode("utf-16"), "the file is UTF-16 text; save it as UTF-8"),
    (b"t\xe9xt,label\ngood,positive\n", "line 1: the header row"),
    (b"text,text\ngood,positive\n", "must be distinct"),
    (b"\ngood,positive\n", "must be distinct and non-empty"),
    (b"text,label\rgood,positive\r", "lines end with \\\\r alone"),
])
def test_a_file_that_cannot_be_read_is_refused_whole(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_classification(path, REVIEW, skip_bad=True)


def test_a_file_with_no_usable_row_names_the_first_reason(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="no usable rows \\(10 skipped; the first, line 1: missing field 'review'"):
        load_classification(path, user_template("{review}", ("negative", "positive")), skip_bad=True)
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(DataError, match="folder.jsonl: a folder, not a file"):
        load_classification(tmp_path / "folder.jsonl", REVIEW)


def test_jsonl_lines_split_only_at_line_ends(tmp_path):
    # U+2028 is valid inside a JSON string; str.splitlines would have cut the row in two
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "good\u2028film", "label": "positive"}, ensure_ascii=False) + "\r\n"
                    + '{"text": "bad"\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        load_text(path)
    assert len(load_text(path, skip_bad=True).examples) == 1


@pytest.mark.slow
def test_skipped_rows_are_counted_on_the_terminal_in_metrics_and_listed(tiny, tmp_path):
    lines = [f"{t},{y}" for t, y in ROWS]
    for at, (bad, _) in zip((1, 4, 7), CSV_FAULTS):
        lines[at] = bad
    data = csv_file(tmp_path / "d.csv", lines)
    refused = finetune(tiny, tmp_path / "refused", data=data)
    assert_clean(refused, 2, f"{data}, line 3: unclosed quote", "skip_bad=true")
    result = finetune(tiny, tmp_path / "run", "skip_bad=true", "--eval-data", data, data=data)
    assert_clean(result, 0)
    said = notes(result, "skipped 3 of 10 rows")
    assert len(said) == 2 and "training" in said[0] and "eval" in said[1]  # once per file and role
    listed = (tmp_path / "run" / "skipped_rows.txt").read_text().splitlines()
    expected = [f"{role}: {data}, line {n}" for role in ("training", "eval") for n in (3, 6, 9)]
    assert [line.split(": ", 2)[0] + ": " + line.split(": ", 2)[1] for line in listed] == expected
    found = [r for r in records(tmp_path / "run") if r["what"] == "skipped_rows"]
    assert [(r["role"], r["skipped"], r["rows"], r["step"]) for r in found] == \
        [("training", 3, 10, 0), ("eval", 3, 10, 0)]
    scored = edge_zo("eval", "--bundle", tiny / "bundle", "--data", data, "skip_bad=true")
    assert_clean(scored, 0)
    assert json.loads(scored.stdout)["examples"] == 7 and json.loads(scored.stdout)["skipped_rows"] == 3
    assert len(notes(scored, "skipped 3 of 10 rows")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("command", ["finetune", "eval"])
def test_non_utf8_data_ends_in_one_line(tiny, tmp_path, command):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "good", "label": "positive"}\n{"text": "caf\xe9", "label": "positive"}\n')
    args = ["--bundle", tiny / "bundle", "--data", path] + (["--out", tmp_path / "run"] if command == "finetune" else [])
    assert_clean(edge_zo(command, *args), 2, f"{path}, line 2: not UTF-8 text (byte 0xe9 at byte offset 51 of the file")


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
    from edge_zo.runconfig import resolve
    (tmp_path / "run.toml").write_bytes(b'bundle = "b"\ndata = "caf\xe9.jsonl"\n')
    with pytest.raises(UserError, match="not UTF-8 text \\(byte 0xe9 at byte offset 24\\)"):
        resolve(str(tmp_path / "run.toml"), {}, [])
