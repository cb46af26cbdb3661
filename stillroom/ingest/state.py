"""What ingest remembers between runs, in one SQLite file: ids seen, how far each log was read,
and Batch API halves waiting for their other half.

A disk-backed set keeps dedupe exact at 10M records in bounded memory (a Bloom filter would
drop a few real calls as false duplicates).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, position INTEGER, line INTEGER, head TEXT);
CREATE TABLE IF NOT EXISTS batch_requests (custom_id TEXT PRIMARY KEY, body TEXT);
CREATE TABLE IF NOT EXISTS batch_outputs (custom_id TEXT PRIMARY KEY, line TEXT, source TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass
class FileMark:
    """How far a log was read: `position` in its (decompressed) stream, or the last rowid of a database."""

    size: int = 0
    position: int = 0
    line: int = 0
    head: str = ""


def head_fingerprint(path: Path, length: int) -> str:
    with path.open("rb") as file:
        return hashlib.sha256(file.read(min(length, HEAD_BYTES))).hexdigest()


class State:
    def __init__(self, path: Path | str = ":memory:"):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.executescript(_SCHEMA)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")

    def reset(self) -> None:
        """Forget everything: the outputs it described are gone."""
        for table in ("seen", "files", "batch_requests", "batch_outputs", "meta"):
            self.db.execute(f"DELETE FROM {table}")
        self.db.commit()

    def add(self, record_id: str) -> bool:
        """True when the id is new (and now remembered)."""
        return self.db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (record_id,)).rowcount == 1

    def seen_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM seen").fetchone()[0]

    def mark(self, path: Path) -> FileMark:
        row = self.db.execute("SELECT size, position, line, head FROM files WHERE path = ?", (str(path),)).fetchone()
        return FileMark(*row) if row else FileMark()

    def set_mark(self, path: Path, mark: FileMark) -> None:
        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                        (str(path), mark.size, mark.position, mark.line, mark.head))

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    # Batch API: requests and outputs arrive in separate files, in either order.
    def put_request(self, custom_id: str, body: dict) -> dict | None:
        row = self.db.execute("SELECT line, source FROM batch_outputs WHERE custom_id = ?", (custom_id,)).fetchone()
        if row:
            self.db.execute("DELETE FROM batch_outputs WHERE custom_id = ?", (custom_id,))
            return {"line": json.loads(row[0]), "source": row[1]}
        self.db.execute("INSERT OR REPLACE INTO batch_requests VALUES (?, ?)", (custom_id, json.dumps(body)))
        return None

    def take_request(self, custom_id: str) -> dict | None:
        row = self.db.execute("SELECT body FROM batch_requests WHERE custom_id = ?", (custom_id,)).fetchone()
        if row is None:
            return None
        self.db.execute("DELETE FROM batch_requests WHERE custom_id = ?", (custom_id,))
        return json.loads(row[0])

    def put_output(self, custom_id: str, line: dict, source: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO batch_outputs VALUES (?, ?, ?)", (custom_id, json.dumps(line), source))

    def take_waiting_outputs(self) -> list[tuple[str, str]]:
        """(source, line) of every output still without its request; they are forgotten."""
        rows = self.db.execute("SELECT source, line FROM batch_outputs").fetchall()
        self.db.execute("DELETE FROM batch_outputs")
        return rows
