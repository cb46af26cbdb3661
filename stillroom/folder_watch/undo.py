"""`stillroom watch FOLDER --undo`: the last run's changes taken back, newest first, each only if the file
is still the one the watcher left (same size and mtime after a move, same bytes for a written JPEG).

Undo never overwrites either: a file moved back finds its old name taken by a newer download, so it
comes back as "name (1).ext", and says so. What cannot be taken back is left, with the reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from stillroom.folder_watch.actions import move_into, read_bytes, sha256
from stillroom.folder_watch.journal import CHANGES, Journal, last_undoable


def _undo_move(folder: Path, entry: dict) -> tuple[str, str | None]:
    moved, home = folder / entry["to"], folder / entry["file"]
    if not moved.exists() or moved.is_symlink():
        return "left", "no longer where it was moved"
    stat = moved.stat()
    if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
        return "left", "changed since it was moved"
    back = move_into(moved, home.parent, home.name)
    return "restored", None if back == home else f"its name was taken: back as {back.name}"


def _undo_convert(folder: Path, entry: dict) -> tuple[str, str | None]:
    written = folder / entry["to"]
    if not written.exists() or written.is_symlink():
        return "left", "the JPEG is gone already"
    if sha256(read_bytes(written)) != entry["sha256"]:
        return "left", "the JPEG changed since it was written: kept"
    written.unlink()
    return "removed", None


def _undo_mkdir(folder: Path, entry: dict) -> tuple[str, str | None]:
    made = folder / entry["dir"]
    try:
        made.rmdir()
    except FileNotFoundError:
        return "left", "gone already"
    except OSError:
        return "left", "not empty: other files are in it now"
    return "removed", None


_UNDO = {"move": _undo_move, "convert": _undo_convert, "mkdir": _undo_mkdir}


def undo_last_run(folder: Path, state: Path) -> dict:
    """Reverse the newest run that changed the folder; appends what was done to that run's journal."""
    found = last_undoable(state)
    if found is None:
        return {"run": None, "message": "nothing to undo: no run changed this folder, or all were undone"}
    path, entries = found
    results: Counter[str] = Counter()
    left = []
    with Journal(state, path.stem) as journal:
        for entry in reversed([e for e in entries if e["event"] in CHANGES]):
            try:
                result, note = _UNDO[entry["event"]](folder, entry)
            except OSError as error:
                result, note = "left", f"{type(error).__name__}: {error}"
            results[result] += 1
            journal.write("undo", of=entry["seq"], action=entry["event"], result=result, note=note)
            if result == "left":
                left.append({"file": entry.get("to") or entry.get("dir"), "reason": note})
        journal.write("undone", **results)
    return {"run": path.stem, **{key: results[key] for key in ("restored", "removed", "left")}, "not_undone": left}
