"""Containers: which files a `logs` setting names, and the items each holds, from where it was last read.

An item is one line of a `.jsonl` (or `.jsonl.gz`) file, one element of a `.json` array, or
one row of an `llm` logs.db. Lines are read as bytes with a length limit, so one huge or
binary line costs neither memory nor the rest of the file; what cannot be read becomes an
item with an error, which ingest quarantines.
"""

from __future__ import annotations

import glob
import gzip
import json
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stillroom.ingest.state import FileMark, State, head_fingerprint

LINE_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".log")
JSON_SUFFIXES = (".json", ".json.gz")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Item:
    source: str  # file:line (or file:row)
    text: str | None = None  # a JSON text to parse
    value: dict | None = None  # an already-decoded object (a database row)
    error: str | None = None  # why it could not be read: quarantined with this reason
    raw: str = ""  # what to show in quarantine when there is no text
    fmt: str | None = None  # the format the container implies (an llm logs.db)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*LINE_SUFFIXES, *JSON_SUFFIXES, *SQLITE_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return ""


def log_files(spec: Path | str) -> list[Path]:
    """A file, every log file below a folder, or a glob; in a stable order."""
    text = str(spec)
    if any(char in text for char in "*?["):
        return sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) and not p.name.startswith("."))
    raise FileNotFoundError(f"no logs at {path}: give a .jsonl(.gz) or .json file, an llm logs.db, a folder or a glob")


def _is_sqlite(path: Path) -> bool:
    if _suffix(path) in SQLITE_SUFFIXES:
        return True
    with path.open("rb") as file:
        return file.read(16) == SQLITE_MAGIC


def items(path: Path, state: State, max_bytes: int, events: Counter) -> Iterator[Item]:
    """The items of one log file not read on an earlier run; its new mark is saved at the end."""
    if _is_sqlite(path):
        yield from _database_rows(path, state)
    elif _suffix(path) in JSON_SUFFIXES:
        yield from _json_document(path, state, max_bytes)
    else:
        yield from _lines(path, state, max_bytes, events)


def _resume(path: Path, state: State) -> tuple[FileMark, bool]:
    """Where to start reading, and whether the file was rewritten or rotated since the last run."""
    size = path.stat().st_size
    mark = state.mark(path)
    if mark.size == 0:
        return FileMark(), False
    if size < mark.size or head_fingerprint(path, mark.size) != mark.head:
        return FileMark(), True
    return mark, False


def _save(path: Path, state: State, position: int, line: int) -> None:
    size = path.stat().st_size
    state.set_mark(path, FileMark(size=size, position=position, line=line, head=head_fingerprint(path, size)))


def _lines(path: Path, state: State, max_bytes: int, events: Counter) -> Iterator[Item]:
    mark, rotated = _resume(path, state)
    events["files_rotated"] += rotated
    if mark.size and mark.size == path.stat().st_size:
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    position, number = mark.position, mark.line
    try:
        with opener(path, "rb") as file:
            file.seek(position)
            while True:
                raw = file.readline(max_bytes + 1)
                if not raw:
                    break
                number += 1
                position += len(raw)
                source = f"{path.name}:{number}"
                if len(raw) > max_bytes and not raw.endswith(b"\n"):
                    head = raw[:200].decode("utf-8", errors="replace")
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line without holding it
                        raw = file.readline(1 << 20)
                        position += len(raw)
                    yield Item(source=source, error=f"too large: over ingest.max_record_bytes ({max_bytes})", raw=head)
                    continue
                if not raw.strip():  # a blank line keeps its number but is no item
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield Item(source=source, error="invalid UTF-8", raw=raw[:2000].decode("utf-8", errors="replace"))
                    continue
                yield Item(source=source, text=text)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        yield Item(source=f"{path.name}:{number + 1}", error=f"truncated or corrupt gzip: {type(err).__name__}")
    _save(path, state, position, number)


def _json_document(path: Path, state: State, max_bytes: int) -> Iterator[Item]:
    """A `.json` file: an array of log objects, or one object (an OTLP export). Read whole when it changed."""
    mark = state.mark(path)
    size = path.stat().st_size
    if mark.size == size and mark.head == head_fingerprint(path, size):
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            data = json.loads(file.read().decode("utf-8"))
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        yield Item(source=f"{path.name}:1", error=f"truncated or corrupt gzip: {type(err).__name__}")
    except UnicodeDecodeError:
        yield Item(source=f"{path.name}:1", error="invalid UTF-8")
    except (json.JSONDecodeError, RecursionError) as err:
        yield Item(source=f"{path.name}:1", error=f"not JSON: {getattr(err, 'msg', 'too deeply nested')}")
    else:
        elements = data if isinstance(data, list) else [data]
        for number, element in enumerate(elements, start=1):
            if isinstance(element, dict):
                yield Item(source=f"{path.name}:{number}", value=element)
            else:
                yield Item(source=f"{path.name}:{number}", error="not a JSON object", raw=json.dumps(element)[:2000])
    _save(path, state, size, 0)


_LLM_ROWS = """
SELECT r.rowid, r.id, r.model, r.prompt, r.system, r.prompt_json, r.options_json, r.response, r.response_json,
       r.conversation_id, r.duration_ms, r.datetime_utc, r.input_tokens, r.output_tokens, s.content AS schema
FROM responses r LEFT JOIN schemas s ON s.id = r.schema_id
WHERE r.rowid > ? ORDER BY r.rowid
"""
_LLM_ROWS_OLD = _LLM_ROWS.replace("s.content AS schema", "NULL AS schema").replace(
    " LEFT JOIN schemas s ON s.id = r.schema_id", "").replace("r.input_tokens, r.output_tokens", "NULL, NULL")


def _database_rows(path: Path, state: State) -> Iterator[Item]:
    """Rows of the `responses` table of the `llm` CLI's logs.db newer than the last run's (by rowid)."""
    mark = state.mark(path)
    last = mark.position
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            cursor = db.execute(_LLM_ROWS, (last,))
        except sqlite3.OperationalError:  # a logs.db from before usage and schemas were logged
            cursor = db.execute(_LLM_ROWS_OLD, (last,))
        for row in cursor:
            last = row["rowid"]
            yield Item(source=f"{path.name}:row{row['rowid']}", value={"llm_row": dict(row)}, fmt="llm_db")
        db.close()
    except sqlite3.Error as err:
        yield Item(source=f"{path.name}:0", error=f"unreadable SQLite: {str(err)[:120]}")
    state.set_mark(path, FileMark(size=path.stat().st_size, position=last, line=0, head=""))
