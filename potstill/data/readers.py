"""Read a catalog file into rows without ever dropping one silently.

`Catalog.load` stops at the first bad line; a pipeline that validates data needs the opposite: every
row that parses is kept with its source row number, and every row that does not is kept too, in
`rejected`, with a `Problem` that names the file, the row, the field and why. Row numbers are what a
person opens the file at: the line number in JSONL, the record number (header excluded) in CSV, where
one record may span several lines. Row 0 is the file itself.

A task's own files keep their own column names and label values: a `ColumnMap` (from the task
declaration) renames columns onto the kind's fields, maps label values (`0`/`1` to `negative`/`positive`)
and gives rows without an id one made from their row number, before any check runs. Parquet files are
read with pyarrow, one row per record.

Bytes are decoded with `surrogateescape`, so a bad byte survives parsing as a lone surrogate; that is how
the field holding it is found. Such a row is reported with the byte offset and quarantined with its bad
bytes replaced by U+FFFD: one broken character must not take the rest of the file down with it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
MAX_VALUE_CHARS = 200
# Reading holds the bytes, their decoded lines and the parsed rows at once: about this many times the size.
READ_OVERHEAD = 10


def max_file_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The largest file a read may take: available memory over READ_OVERHEAD (`POTSTILL_MAX_FILE_MB`
    overrides it). Without /proc/meminfo (not Linux) there is no limit."""
    if os.environ.get("POTSTILL_MAX_FILE_MB"):
        return int(float(os.environ["POTSTILL_MAX_FILE_MB"]) * 1e6)
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // READ_OVERHEAD
    except OSError:
        pass
    return sys.maxsize


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (row 0 and field `<file>`: the whole file)."""

    file: str
    row: int
    field: str
    value: str
    reason: str

    def __str__(self) -> str:
        where = self.file if self.row == 0 else f"{self.file} row {self.row}"
        return f"{where}, field {self.field}: {self.reason} (value {self.value})"


@dataclass(frozen=True)
class RejectedRow:
    """A row set aside by the reader: the parsed dict when there is one, else the raw text."""

    row: int
    raw: str | dict[str, Any]


@dataclass
class ReadResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_numbers: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


@dataclass(frozen=True)
class ColumnMap:
    """How a file's own columns become a kind's fields.

    columns: field -> the file's column (`{"text": "sentence"}`); labels: the file's label value (as
    text) -> label (`{"0": "negative"}`); id_prefix: rows without an `id` get `<prefix><row number>`, so
    ids stay unique across a task's prompts and gold files (`prompts-17`, `gold-17`)."""

    columns: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    id_prefix: str | None = None

    @classmethod
    def of(
        cls,
        columns: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        id_prefix: str | None = None,
    ) -> ColumnMap:
        return cls(tuple(sorted((columns or {}).items())), tuple(sorted((labels or {}).items())), id_prefix)

    @property
    def is_identity(self) -> bool:
        return not (self.columns or self.labels or self.id_prefix)

    def source_of(self, field: str) -> str:
        """The file's column that holds `field`."""
        return dict(self.columns).get(field, field)

    def apply(self, row: dict[str, Any], number: int) -> dict[str, Any]:
        """The row with the kind's field names and labels; other columns are kept as they are."""
        if self.is_identity:
            return row
        out = dict(row)
        for name, column in self.columns:
            if column in out and column != name:
                out[name] = out.pop(column)
        if self.labels and "label" in out and out["label"] is not None:
            out["label"] = dict(self.labels).get(_label_key(out["label"]), out["label"])
        if self.id_prefix is not None and ("id" not in out or out["id"] is None):
            out["id"] = f"{self.id_prefix}{number}"
        return out

    def describe(self, field: str) -> str:
        source = self.source_of(field)
        return f"{field!r}" if source == field else f"{field!r} (the file's column {source!r})"


def _label_key(value: Any) -> str:
    """`0`, `0.0`, `"0"` and `True` in a file all name the same label-map key a user writes as text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def short(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """repr of a value cut to `limit` characters: a 1 MB string must not end up in a log line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_rows(
    path: Path,
    fmt: Literal["jsonl", "csv", "parquet"],
    required: list[str],
    mapping: ColumnMap | None = None,
    max_bytes: int | None = None,
) -> ReadResult:
    """Rows of a JSONL, CSV or Parquet file with their row numbers, mapped onto the kind's fields by
    `mapping`; problem rows go to `rejected`, never away. A file over `max_bytes` (default: what this
    machine's available memory allows, `max_file_bytes`) is one file-level problem, read not at all."""
    path = Path(path)
    mapping = mapping or ColumnMap()
    result = ReadResult()
    size = path.stat().st_size if path.exists() else 0  # a missing file fails below, as it always did
    limit = max_file_bytes() if max_bytes is None else max_bytes
    if size > limit:  # refused before a byte is read: a file larger than memory must not take the run down
        reason = (
            f"file of {size / 1e6:,.0f} MB is over the {limit / 1e6:,.0f} MB a file may have here "
            f"(reading needs about {READ_OVERHEAD}x its size in memory): split it into smaller files"
        )
        result.problems.append(Problem(str(path), 0, "<file>", short(path.name), reason))
        return result
    if fmt == "parquet":
        records: Iterator[_Record] = _parquet_records(path, result)
    else:
        data = path.read_bytes()
        if data.startswith(UTF16_BOMS):  # Windows tools save "Unicode" text as UTF-16: read it as such
            try:
                data = data.decode("utf-16").encode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"UTF-16 byte-order mark, but not UTF-16 at byte {exc.start}: save it as UTF-8"
                result.problems.append(Problem(str(path), 0, "<file>", short(data[:40]), reason))
                return result
        elif data[:4096].count(b"\x00") > len(data[:4096]) // 4:
            reason = "every other byte is NUL: UTF-16 without a byte-order mark? save it as UTF-8"
            result.problems.append(Problem(str(path), 0, "<file>", short(data[:40]), reason))
            return result
        start = len(BOM) if data.startswith(BOM) else 0
        if not data[start:].strip():
            problem = Problem(str(path), 0, "<file>", short(data[:MAX_VALUE_CHARS]), "empty file")
            result.problems.append(problem)
            return result
        lines = _lines(data, start)
        if fmt == "jsonl":
            records = _jsonl_records(lines)
        else:
            records = _csv_records(lines, len(data), str(path), result)
    for rec in records:
        problems = [Problem(str(path), rec.row, f, v, r) for f, v, r in rec.problems]
        if isinstance(rec.value, dict):
            rec.value = mapping.apply(rec.value, rec.row)
            problems += [
                Problem(
                    str(path), rec.row, name, "<absent>", f"missing required field {mapping.describe(name)}"
                )
                for name in required
                if name not in rec.value or rec.value[name] is _ABSENT
            ]
        if problems:
            result.problems.extend(problems)
            raw = rec.value if isinstance(rec.value, dict) else rec.text
            result.rejected.append(RejectedRow(rec.row, _repair(raw)))
        else:
            assert isinstance(rec.value, dict)
            result.rows.append(rec.value)
            result.row_numbers.append(rec.row)
    if fmt in ("csv", "parquet") and not result.rows and not result.rejected and not result.problems:
        what = "no rows after the header" if fmt == "csv" else "no rows"
        result.problems.append(Problem(str(path), 0, "<file>", "''", what))
    return result


def file_columns(path: Path, fmt: Literal["jsonl", "csv", "parquet"], sample: int = 100) -> list[str]:
    """The column names of a data file (its header; the keys of its first JSONL objects), for checking a
    column mapping before a run starts. Unreadable files give [] (the reader reports them row by row)."""
    path = Path(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception:
            return []
    text = path.read_bytes()[: 1 << 22].decode("utf-8-sig", "replace")
    if fmt == "csv":
        first = next(csv.reader(io.StringIO(text)), [])
        return [c.strip() for c in first]
    names: dict[str, None] = {}
    for line in text.splitlines()[:sample]:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            names.update(dict.fromkeys(value))
    return list(names)


# --- internals -------------------------------------------------------------------------------------


def _parquet_records(path: Path, result: ReadResult) -> Iterator[_Record]:
    """One record per Parquet row (row numbers from 1); an unreadable file is one file-level problem."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        result.problems.append(
            Problem(str(path), 0, "<file>", short(path.name), f"not a Parquet file: {exc}")
        )
        return
    for number, row in enumerate(rows, 1):
        yield _Record(number, short(row), dict(row))


_ABSENT = object()  # a CSV cell the record did not reach (fewer fields than the header)


@dataclass
class _Line:
    number: int  # 1-based physical line
    offset: int  # byte offset of the line in the file
    text: str  # decoded with surrogateescape, line ending kept
    bad_at: int | None  # byte offset in the file of the first byte that is not UTF-8


@dataclass
class _Record:
    row: int
    text: str
    value: Any = None
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (field, value, reason)


def _lines(data: bytes, start: int) -> list[_Line]:
    """Physical lines split on b"\\n" only: U+2028 inside a JSON string is not a line break."""
    out, offset, number = [], start, 1
    for chunk in data[start:].split(b"\n"):
        raw = chunk + b"\n" if offset + len(chunk) < len(data) else chunk
        try:
            raw.decode("utf-8")
            bad_at = None
        except UnicodeDecodeError as exc:
            bad_at = offset + exc.start
        if raw:
            out.append(_Line(number, offset, raw.decode("utf-8", "surrogateescape"), bad_at))
        offset += len(raw)
        number += 1
    return out


def _jsonl_records(lines: list[_Line]) -> Iterator[_Record]:
    last = max((ln.number for ln in lines if ln.text.strip()), default=0)
    for line in lines:
        if not line.text.strip():
            continue  # a blank line holds no row
        rec = _Record(line.number, line.text.rstrip("\r\n"))
        try:
            rec.value = json.loads(
                rec.text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants
            )
        except _DuplicateKeyError as exc:
            rec.problems.append((exc.key, short(exc.key), f"duplicate key {exc.key!r} in one object"))
        except _ConstantError as exc:
            reason = f"{exc.constant} is not valid JSON (Python's extension; a number or null is)"
            rec.problems.append(("<row>", short(rec.text), reason))
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON at column {exc.colno}: {exc.msg}"
            if line.number == last and not line.text.endswith("\n"):
                reason += " (last line has no newline: the file looks truncated)"
            rec.problems.append(("<row>", short(rec.text), reason))
        except RecursionError:
            reason = "JSON nested too deeply to read (over Python's recursion limit)"
            rec.problems.append(("<row>", short(rec.text), reason))
        except ValueError as exc:  # e.g. an integer of over 4,300 digits (int_max_str_digits)
            rec.problems.append(("<row>", short(rec.text), f"unreadable JSON value: {exc}"))
        else:
            if not isinstance(rec.value, dict):
                kind = type(rec.value).__name__
                rec.problems.append(("<row>", short(rec.value), f"JSON {kind}, not an object"))
            else:
                rec.problems += _nul_fields(rec.value)
        if line.bad_at is not None:
            bad, value = _bad_field(rec.value, rec.text)
            rec.problems.insert(
                0, (bad, short(_repair(value)), f"non-UTF-8 bytes at byte offset {line.bad_at}")
            )
        yield rec


def _csv_records(lines: list[_Line], size: int, file: str, result: ReadResult) -> Iterator[_Record]:
    """Records of a CSV file: csv.reader pulls physical lines, so `line_num` says which lines a record
    spans, and with them the byte offset of a bad byte."""
    reader = csv.reader(ln.text for ln in lines)
    by_number = {ln.number: ln for ln in lines}
    consumed = 0  # physical lines consumed so far (csv counts lines it read, blank ones included)
    header: list[str] | None = None
    record_no = 0
    with _field_limit(size):
        while True:
            try:
                fields = next(reader)
                error = None
            except StopIteration:
                return
            except csv.Error as exc:
                fields, error = [], str(exc)
            span = [by_number[n] for n in range(consumed + 1, reader.line_num + 1) if n in by_number]
            consumed = reader.line_num
            text = "".join(ln.text for ln in span)
            bad_at = next((ln.bad_at for ln in span if ln.bad_at is not None), None)
            if header is None:
                names = [_repair(h).strip() for h in fields]
                header = _unique_names(names)
                if bad_at is not None:
                    msg = f"non-UTF-8 bytes at byte offset {bad_at}"
                    result.problems.append(Problem(file, 0, "<header>", short(_repair(text)), msg))
                if header != names:
                    msg = f"duplicate column names, read as {header}"
                    result.problems.append(Problem(file, 0, "<header>", short(_repair(text)), msg))
                continue
            if not fields and error is None:
                continue  # a blank line holds no record
            record_no += 1
            rec = _Record(record_no, text)
            if error is not None:
                rec.problems.append(("<row>", short(_repair(text)), f"unreadable CSV record: {error}"))
                yield rec
                continue
            rec.value = {h: (fields[i] if i < len(fields) else _ABSENT) for i, h in enumerate(header)}
            if len(fields) != len(header):
                reason = f"{len(fields)} field(s), the header has {len(header)}"
                rec.problems.append(("<row>", short(_repair(text)), reason))
                rec.value.update({f"<extra {i}>": v for i, v in enumerate(fields[len(header) :], 1)})
            if bad_at is not None:
                bad, value = _bad_field(rec.value, text)
                rec.problems.insert(
                    0, (bad, short(_repair(value)), f"non-UTF-8 bytes at byte offset {bad_at}")
                )
            rec.problems += _nul_fields(rec.value)
            yield rec


@contextmanager
def _field_limit(size: int) -> Iterator[None]:
    """csv refuses fields over 131,072 characters; no field can be longer than the file itself."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, size + 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _unique_names(names: list[str]) -> list[str]:
    """A repeated column name gets a suffix (`text`, `text.2`) so neither column's values are lost."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}.{seen[name]}")
    return out


class _ConstantError(ValueError):
    def __init__(self, constant: str):
        super().__init__(constant)
        self.constant = constant


def _no_constants(name: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json reads them, no other JSON reader does, and a NaN
    compares false with every bound a validation rule sets, so it would pass them all."""
    raise _ConstantError(name)


def _nul_fields(value: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Fields holding a NUL character: PostgreSQL (behind Label Studio and MLflow) refuses it in text."""
    return [
        (_repair(str(k)), short(_repair(v)), "NUL character in the field")
        for k, v in value.items()
        if isinstance(v, str) and "\x00" in v
    ]


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _bad_field(value: Any, text: str) -> tuple[str, Any]:
    """(field, value) holding the first bad byte; ("<row>", raw text) when no single field does."""
    if isinstance(value, dict):
        for k, v in value.items():
            if _has_surrogate(k) or _has_surrogate(v):
                return _repair(str(k)), v
    return "<row>", text


def _repair(value: Any) -> Any:
    """Undo surrogateescape with U+FFFD for the bytes that were not UTF-8; drop the absent marker."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_repair(k): _repair(v) for k, v in value.items() if v is not _ABSENT}
    if isinstance(value, list):
        return [_repair(v) for v in value]
    return value
