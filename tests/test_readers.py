"""The reader keeps every row: good ones with their row numbers, bad ones in `rejected` with a Problem."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from potstill.data.readers import Problem, RejectedRow, read_rows

REQ = ["id", "text"]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_empty_file_is_one_file_level_problem(tmp_path: Path):
    for name, data in (("empty.jsonl", b""), ("blank.jsonl", b"\xef\xbb\xbf \n\n"), ("empty.csv", b"")):
        path = write(tmp_path, name, data)
        result = read_rows(path, "csv" if name.endswith("csv") else "jsonl", REQ)
        assert result.rows == [] and result.rejected == []
        assert result.problems == [Problem(str(path), 0, "<file>", repr(data), "empty file")]


def test_csv_with_a_header_and_no_rows(tmp_path: Path):
    path = write(tmp_path, "header.csv", b"id,text\n")
    result = read_rows(path, "csv", REQ)
    assert result.problems == [Problem(str(path), 0, "<file>", "''", "no rows after the header")]


def test_non_utf8_bytes_quarantine_that_row_with_the_byte_offset(tmp_path: Path):
    data = (
        b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9 cr\xe8me"}\n{"id": "c", "text": "fine"}\n'
    )
    path = write(tmp_path, "bad.jsonl", data)
    result = read_rows(path, "jsonl", REQ)
    assert result.rows == [{"id": "a", "text": "ok"}, {"id": "c", "text": "fine"}]
    assert result.row_numbers == [1, 3]
    offset = data.index(b"\xe9")
    assert result.problems == [
        Problem(
            str(path), 2, "text", repr("caf\ufffd cr\ufffdme"), f"non-UTF-8 bytes at byte offset {offset}"
        )
    ]
    assert result.rejected == [RejectedRow(2, {"id": "b", "text": "caf\ufffd cr\ufffdme"})]


def test_non_utf8_bytes_in_csv_name_the_field_and_offset(tmp_path: Path):
    data = b"id,text\na,ok\nb,caf\xe9\nc,fine\n"
    path = write(tmp_path, "bad.csv", data)
    result = read_rows(path, "csv", REQ)
    assert result.row_numbers == [1, 3]
    offset = data.index(b"\xe9")
    reason = f"non-UTF-8 bytes at byte offset {offset}"
    assert result.problems == [Problem(str(path), 2, "text", repr("caf\ufffd"), reason)]
    assert result.rejected == [RejectedRow(2, {"id": "b", "text": "caf\ufffd"})]


def test_missing_field_is_a_problem_for_every_row_lacking_it(tmp_path: Path):
    path = write(tmp_path, "missing.jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b"}\n{"id": "c"}\n')
    result = read_rows(path, "jsonl", REQ)
    assert result.row_numbers == [1]
    assert result.problems == [
        Problem(str(path), n, "text", "<absent>", "missing required field 'text'") for n in (2, 3)
    ]
    assert result.rejected == [RejectedRow(2, {"id": "b"}), RejectedRow(3, {"id": "c"})]


def test_missing_csv_column_rejects_every_row(tmp_path: Path):
    path = write(tmp_path, "nocol.csv", b"id,body\na,x\nb,y\n")
    result = read_rows(path, "csv", REQ)
    assert result.rows == []
    assert [(p.row, p.field, p.reason) for p in result.problems] == [
        (1, "text", "missing required field 'text'"),
        (2, "text", "missing required field 'text'"),
    ]
    assert [r.raw for r in result.rejected] == [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}]


def test_truncated_last_jsonl_line_is_a_problem_and_earlier_rows_are_kept(tmp_path: Path):
    path = write(tmp_path, "cut.jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "cut sho')
    result = read_rows(path, "jsonl", REQ)
    assert result.rows == [{"id": "a", "text": "ok"}]
    [problem] = result.problems
    assert (problem.row, problem.field) == (2, "<row>")
    assert problem.reason == (
        "invalid JSON at column 21: Unterminated string starting at"
        " (last line has no newline: the file looks truncated)"
    )
    assert result.rejected == [RejectedRow(2, '{"id": "b", "text": "cut sho')]


def test_bad_line_in_the_middle_is_not_called_truncated(tmp_path: Path):
    path = write(tmp_path, "mid.jsonl", b'{"id": "a", "text": "ok"\n{"id": "b", "text": "ok"}\n')
    result = read_rows(path, "jsonl", REQ)
    assert result.row_numbers == [2]
    assert result.problems[0].row == 1
    assert "truncated" not in result.problems[0].reason


def test_valid_json_that_is_not_an_object(tmp_path: Path):
    path = write(tmp_path, "types.jsonl", b'[1, 2]\n"just text"\n42\n{"id": "a", "text": "ok"}\n')
    result = read_rows(path, "jsonl", REQ)
    assert result.row_numbers == [4]
    assert [(p.row, p.field, p.value, p.reason) for p in result.problems] == [
        (1, "<row>", "[1, 2]", "JSON list, not an object"),
        (2, "<row>", "'just text'", "JSON str, not an object"),
        (3, "<row>", "42", "JSON int, not an object"),
    ]
    assert [r.raw for r in result.rejected] == ["[1, 2]", '"just text"', "42"]


def test_duplicate_key_in_a_json_object_is_not_silently_dropped(tmp_path: Path):
    path = write(tmp_path, "dup.jsonl", b'{"id": "a", "id": "b", "text": "ok"}\n')
    result = read_rows(path, "jsonl", REQ)
    assert [(p.row, p.field, p.reason) for p in result.problems] == [
        (1, "id", "duplicate key 'id' in one object")
    ]


def test_csv_with_embedded_newlines_and_quotes_uses_record_numbers(tmp_path: Path):
    rows = [
        {"id": "a", "text": "line one\nline two\r\nline three"},
        {"id": "b", "text": 'he said "hi", then left'},
        {"id": "c", "text": "plain"},
    ]
    path = tmp_path / "quoted.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    result = read_rows(path, "csv", REQ)
    assert result.problems == []
    assert result.rows == rows
    assert result.row_numbers == [1, 2, 3]  # record numbers, though record 1 spans three lines


def test_csv_rows_with_the_wrong_number_of_fields_keep_every_value(tmp_path: Path):
    path = write(tmp_path, "ragged.csv", b"id,text\na,x,extra\nb\n\nc,ok\n")
    result = read_rows(path, "csv", REQ)
    assert result.row_numbers == [3]  # the blank line is not a record
    assert [(p.row, p.field, p.reason) for p in result.problems] == [
        (1, "<row>", "3 field(s), the header has 2"),
        (2, "<row>", "1 field(s), the header has 2"),
        (2, "text", "missing required field 'text'"),
    ]
    assert result.rejected == [
        RejectedRow(1, {"id": "a", "text": "x", "<extra 1>": "extra"}),
        RejectedRow(2, {"id": "b"}),
    ]


def test_duplicate_csv_column_names_keep_both_columns(tmp_path: Path):
    path = write(tmp_path, "dupcol.csv", b"id,text,text\na,one,two\n")
    result = read_rows(path, "csv", REQ)
    assert result.rows == [{"id": "a", "text": "one", "text.2": "two"}]
    assert [(p.row, p.field, p.reason) for p in result.problems] == [
        (0, "<header>", "duplicate column names, read as ['id', 'text', 'text.2']")
    ]


def test_utf8_bom_is_tolerated(tmp_path: Path):
    jsonl = write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"id": "a", "text": "ok"}\n')
    csv_path = write(tmp_path, "bom.csv", b"\xef\xbb\xbfid,text\na,ok\n")
    for path, fmt in ((jsonl, "jsonl"), (csv_path, "csv")):
        result = read_rows(path, fmt, REQ)  # type: ignore[arg-type]
        assert result.problems == []
        assert result.rows == [{"id": "a", "text": "ok"}]


def test_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path: Path):
    row = {"id": "a", "text": "before\u2028after\u0085end"}
    path = write(tmp_path, "ls.jsonl", (json.dumps(row, ensure_ascii=False) + "\n").encode())
    result = read_rows(path, "jsonl", REQ)
    assert result.rows == [row] and result.problems == []


def test_a_1mb_csv_field_is_read_and_the_csv_limit_restored(tmp_path: Path):
    big = "x" * 1_000_000
    path = write(tmp_path, "big.csv", f'id,text\na,"{big}"\nb,ok\n'.encode())
    before = csv.field_size_limit()
    result = read_rows(path, "csv", REQ)
    assert csv.field_size_limit() == before
    assert result.problems == []
    assert [len(r["text"]) for r in result.rows] == [1_000_000, 2]


def test_problem_values_are_truncated(tmp_path: Path):
    path = write(tmp_path, "long.jsonl", b'{"id": "a", "text": "' + b"y" * 5000 + b"\n")
    [problem] = read_rows(path, "jsonl", REQ).problems
    assert len(problem.value) == 200 and problem.value.endswith("...")


def test_bad_byte_in_a_key_or_unparseable_line_is_reported_readably(tmp_path: Path):
    path = write(tmp_path, "keys.jsonl", b'{"id": "a", "t\xffxt": "ok"}\n{"id": "b", \xff\n')
    result = read_rows(path, "jsonl", REQ)
    assert [(p.row, p.field, p.reason.split(" at ")[0]) for p in result.problems] == [
        (1, "t\ufffdxt", "non-UTF-8 bytes"),
        (1, "text", "missing required field 'text'"),
        (2, "<row>", "non-UTF-8 bytes"),
        (2, "<row>", "invalid JSON"),
    ]
    assert result.rejected[1] == RejectedRow(2, '{"id": "b", \ufffd')
    for problem in result.problems:
        str(problem).encode("utf-8")  # no lone surrogate left: it would not encode


def only_problem(result) -> Problem:
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


def test_json_that_python_cannot_read_is_quarantined_not_a_crash(tmp_path: Path):
    """Deep nesting (RecursionError) and a 5,000-digit integer (ValueError) used to crash the reader."""
    lines = [
        json.dumps({"id": "a", "text": "fine"}),
        '{"id": "b", "text": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": "c", "text": "x", "n": ' + "9" * 5000 + "}",
        json.dumps({"id": "d", "text": "also fine"}),
    ]
    res = read_rows(write(tmp_path, "p.jsonl", ("\n".join(lines) + "\n").encode()), "jsonl", REQ)
    assert [r["id"] for r in res.rows] == ["a", "d"] and res.row_numbers == [1, 4]
    assert [r.row for r in res.rejected] == [2, 3]
    reasons = {p.row: p.reason for p in res.problems}
    assert "nested too deeply" in reasons[2]
    assert "unreadable JSON value" in reasons[3] and "4300 digits" in reasons[3]


def test_nan_and_infinity_are_not_json(tmp_path: Path):
    lines = ['{"id": "a", "text": "t", "score": NaN}', '{"id": "b", "text": "t", "score": -Infinity}']
    res = read_rows(write(tmp_path, "p.jsonl", ("\n".join(lines) + "\n").encode()), "jsonl", REQ)
    assert not res.rows and [r.row for r in res.rejected] == [1, 2]
    assert [p.reason.split(" ")[0] for p in res.problems] == ["NaN", "-Infinity"]


def test_a_nul_character_in_a_field_is_quarantined_with_its_field(tmp_path: Path):
    jsonl = json.dumps({"id": "a", "text": "nul\u0000here"}) + "\n" + json.dumps({"id": "b", "text": "ok"})
    res = read_rows(write(tmp_path, "p.jsonl", jsonl.encode() + b"\n"), "jsonl", REQ)
    assert [r["id"] for r in res.rows] == ["b"]
    assert (only_problem(res).row, only_problem(res).field) == (1, "text")
    assert "NUL" in only_problem(res).reason
    res = read_rows(write(tmp_path, "p.csv", b"id,text\na,x\x00y\nb,ok\n"), "csv", REQ)
    assert [r["id"] for r in res.rows] == ["b"]
    assert (only_problem(res).row, only_problem(res).field) == (1, "text")


def test_utf16_files_are_read_and_utf16_without_a_bom_is_a_clear_error(tmp_path: Path):
    text = json.dumps({"id": "a", "text": "caf\u00e9"}) + "\n" + json.dumps({"id": "b", "text": "ok"}) + "\n"
    for codec in ("utf-16", "utf-16-be"):  # "utf-16" writes a little-endian BOM; add one for big-endian
        data = text.encode(codec) if codec == "utf-16" else b"\xfe\xff" + text.encode(codec)
        res = read_rows(write(tmp_path, f"{codec}.jsonl", data), "jsonl", REQ)
        assert [r["text"] for r in res.rows] == ["caf\u00e9", "ok"] and not res.problems
    res = read_rows(write(tmp_path, "nobom.jsonl", text.encode("utf-16-le")), "jsonl", REQ)
    assert not res.rows and only_problem(res).row == 0 and "UTF-16" in only_problem(res).reason


def test_a_file_over_the_memory_limit_is_refused_before_it_is_read(tmp_path: Path):
    """A 300 MB file (sparse: no disk used) against a 100 MB limit: one file-level problem, and the reading
    process's peak RSS does not grow by the file's size (measured around the call in a fresh interpreter)."""
    import subprocess
    import sys

    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        f.truncate(300_000_000)
    script = (
        "import resource, sys\n"
        "from potstill.data.readers import read_rows\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"res = read_rows({str(big)!r}, 'jsonl', ['id', 'text'], max_bytes=100_000_000)\n"
        "print(res.problems[0].reason)\n"
        "print(len(res.rows), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    reason, counts = out.strip().splitlines()
    assert reason.startswith("file of 300 MB is over the 100 MB") and "split it" in reason
    rows, peak_mb = map(int, counts.split())
    assert rows == 0 and peak_mb < 50


def test_the_default_limit_is_a_share_of_available_memory(tmp_path: Path, monkeypatch):
    from potstill.data.readers import READ_OVERHEAD, max_file_bytes

    meminfo = write(tmp_path, "meminfo", b"MemTotal: 24000000 kB\nMemAvailable: 8000000 kB\n")
    monkeypatch.delenv("POTSTILL_MAX_FILE_MB", raising=False)
    assert max_file_bytes(meminfo) == 8_000_000 * 1024 // READ_OVERHEAD
    monkeypatch.setenv("POTSTILL_MAX_FILE_MB", "50")
    assert max_file_bytes(meminfo) == 50_000_000
    res = read_rows(write(tmp_path, "p.jsonl", b'{"id": "a", "text": "t"}\n' * 4), "jsonl", REQ, max_bytes=10)
    assert not res.rows and not res.rejected and only_problem(res).field == "<file>"
