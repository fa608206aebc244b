"""Reading data files into rows: JSONL, CSV and TSV, every line accounted for.

`read_rows` returns (line number, row or None, reason) for every data line: a line that
cannot become a row is returned with its reason, never dropped, so that edge_zo/data.py
can stop at it (naming the file and line) or, under skip_bad, count it.

Why the care (issue 15):
- Bytes are split into lines before decoding, so a line that is not UTF-8 is one bad row
  (named by its line and the byte offset in the file) instead of a traceback for the whole
  file. A UTF-16/32 byte-order mark refuses the file: every line would be bad.
- Lines end at \\n (or \\r\\n) only: str.splitlines also split at U+2028 and friends, which
  are valid inside a JSON string, and shifted the line numbers an editor shows.
- CSV records are parsed strictly and named by the line they start on. A quote that never
  closes used to swallow every later line into one field (7 of 10 rows vanished under
  skip_bad, and the error named the last line); now that record is one bad row at the line
  the quote opened and reading starts again on the next line. A record with more fields
  than the header (an unquoted delimiter inside a field) or fewer is a bad row too.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Iterator

from edge_zo.errors import DataError

READERS = (".jsonl", ".csv", ".tsv")
UTF8_BOM = b"\xef\xbb\xbf"
WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
             b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}

# (line number, row or None, why it is bad; for a good CSV row, "lines N-M" when it spans lines)
Row = tuple[int, "dict | None", str]




def read_rows(path: str | Path) -> Iterator[Row]:
    """(line number, row or None, reason) for every data line of a JSONL, CSV or TSV file,
    in line order. JSONL streams a row at a time (the loaded examples are the memory the
    planner counts, not every parsed row besides them); CSV parses the file's lines at once."""
    path = Path(path)
    if path.suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {READERS}")
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'file not found'}")
    try:
        with open(path, "rb") as f:
            if path.suffix == ".jsonl":
                for number, text in decode_lines(path, f):
                    if not isinstance(text, str):
                        yield text
                    elif text.strip():
                        yield _json_row(number, text)
                return
            lines = list(decode_lines(path, f))
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    bad = [text for _, text in lines if not isinstance(text, str)]
    text_lines = [(number, text) for number, text in lines if isinstance(text, str)]
    yield from sorted(csv_rows(path, text_lines, "\t" if path.suffix == ".tsv" else ",") + bad,
                      key=lambda row: row[0])


def decode_lines(path: Path, f) -> Iterator[tuple[int, "str | Row"]]:
    """(line number, its text with its line end) for each line of a binary file, or
    (line number, a bad row) for a line that is not UTF-8. Lines end at \\n (or \\r\\n)."""
    first = f.readline()
    for bom, name in WIDE_BOMS.items():
        if first.startswith(bom):
            raise DataError(f"{path}: the file is {name} text; save it as UTF-8 "
                            f"(e.g. iconv -f {name} -t UTF-8 {path.name} > utf8{path.suffix})")
    if b"\r" in first and not first.endswith(b"\n"):  # no \n in the whole file
        raise DataError(f"{path}: lines end with \\r alone (an old Mac format); save the file with \\n line ends")
    offset = len(UTF8_BOM) if first.startswith(UTF8_BOM) else 0
    for number, chunk in enumerate(itertools.chain([first[offset:]], f), 1):
        try:
            yield number, chunk.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, (number, None, f"not UTF-8 text (byte 0x{chunk[err.start]:02x} at byte offset "
                                         f"{offset + err.start} of the file); save the file as UTF-8")
        offset += len(chunk)


def _json_row(number: int, line: str) -> Row:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return number, None, f"invalid JSON ({err.msg} at column {err.colno})"
    if not isinstance(row, dict):
        return number, None, f"expected a JSON object, got {type(row).__name__}"
    return number, row, ""


def csv_rows(path: Path, lines: list[tuple[int, str]], delimiter: str) -> list[Row]:
    """Rows of a CSV/TSV file after its header line, each named by the line it starts on."""
    header = _header(path, lines, delimiter)
    rows, i = [], 1
    while i < len(lines):
        # A fresh strict reader from line i; a malformed record restarts it one line later.
        reader = csv.reader((text for _, text in lines[i:]), delimiter=delimiter, strict=True)
        consumed = 0
        try:
            for fields in reader:
                start, end = lines[i + consumed][0], lines[i + reader.line_num - 1][0]
                consumed = reader.line_num
                if any(f.strip() for f in fields):  # blank lines are not rows
                    rows.append(_record(start, header, fields, delimiter, end))
            break
        except csv.Error as err:
            rows.append((lines[i + consumed][0], None, _quote_reason(str(err))))
            i += consumed + 1
    return rows


def _header(path: Path, lines: list[tuple[int, str]], delimiter: str) -> list[str]:
    if not lines or lines[0][0] != 1:
        raise DataError(f"{path}, line 1: the header row (the field names) is missing or not UTF-8 text")
    try:
        header = next(csv.reader([lines[0][1]], delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration) as err:
        raise DataError(f"{path}, line 1: the header row cannot be read ({err or 'empty'})") from None
    if not header or len(set(header)) != len(header) or not all(name.strip() for name in header):
        raise DataError(f"{path}, line 1: header fields {header} must be distinct and non-empty")
    return header


def _record(start: int, header: list[str], fields: list[str], delimiter: str, end: int) -> Row:
    if len(fields) != len(header):
        hint = f" (an unquoted {delimiter!r} inside a field? quote the field)" if len(fields) > len(header) else ""
        return start, None, f"{len(fields)} fields but the header has {len(header)}{hint}"
    # A good row whose reason is set spans lines: valid CSV (a quoted line break), but also
    # what a quote left open and closed rows later looks like, so the loader says it.
    return start, dict(zip(header, fields)), f"lines {start}-{end}" if end > start else ""


def _quote_reason(message: str) -> str:
    if "NUL" in message:  # Python < 3.11 only
        return "a NUL byte (a binary or UTF-16 file? save it as UTF-8 text)"
    if "unexpected end of data" in message:
        return "unclosed quote: the quoted field that starts here never closes (close it, or double a quote inside it)"
    return f"malformed quoting ({message}); a quote inside a quoted field is written twice"
