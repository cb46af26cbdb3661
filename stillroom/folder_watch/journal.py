"""One JSONL journal per run of a watched folder, kept in the project (`watch.state_dir`), never in the folder.

Every file's outcome is a line; the lines that changed the folder (`mkdir`, `move`, `convert`) carry
what undo needs to check that the file is still the one the watcher left, and are fsynced before
the next file is looked at. Undo appends its own lines and an `undone` line to the same journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from stillroom.config import Params
from stillroom.data import Layout

CHANGES = ("mkdir", "move", "convert")  # the events undo reverses


def state_dir(params: Params, layout: Layout, folder: Path) -> Path:
    """Per folder: its name (readable) and a hash of its resolved path (two folders never share one)."""
    readable = re.sub(r"[^\w.-]+", "_", folder.name)[:40] or "root"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
    return layout.resolve(params.watch.state_dir) / f"{readable}-{digest}"


@contextmanager
def folder_lock(state: Path) -> Iterator[None]:
    """One watch or undo per folder at a time: an undo under a running watch would race its moves."""
    state.mkdir(parents=True, exist_ok=True)
    lock = FileLock(state / "lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as error:
        raise RuntimeError(f"another `stillroom watch` is running on this folder (lock {state / 'lock'})") from error
    try:
        yield
    finally:
        lock.release()


class Journal:
    def __init__(self, state: Path, run_id: str | None = None):
        self.run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.path = state / "runs" / f"{self.run_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self.seq = sum(1 for _ in self.path.open(encoding="utf-8"))

    def write(self, event: str, **fields: object) -> dict:
        entry = {"seq": self.seq, "event": event, "time": datetime.now(UTC).isoformat(timespec="milliseconds")}
        entry.update({key: value for key, value in fields.items() if value is not None})
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        if event in CHANGES:
            os.fsync(self._file.fileno())
        self.seq += 1
        return entry

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path) -> list[dict]:
    """The entries of a journal; a last line cut off by a crash is left out."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def last_undoable(state: Path) -> tuple[Path, list[dict]] | None:
    """The newest run that changed the folder and was not undone yet."""
    for path in sorted((state / "runs").glob("*.jsonl"), reverse=True):
        entries = read_journal(path)
        events = {entry["event"] for entry in entries}
        if "undone" not in events and events & set(CHANGES):
            return path, entries
    return None
