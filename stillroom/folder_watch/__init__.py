"""`stillroom watch FOLDER --task NAME`: act on a folder the way the user would have asked the cloud model to.

For each new file (settled: size and mtime unchanged for `watch.settle_s`) the watcher sends the
task the request its logged calls had, with the file name in the template's slot (`request`),
through `stillroom serve`'s own routing (`endpoint`): the student when it is sure, else the
teacher, one capture row per file. By default it only suggests; with --apply a label naming a
folder moves the file there and a yes from a convert-to-JPEG task writes a JPEG beside it
(`actions`: never over an existing file, never through a symlink). Every outcome is journaled per
run (`journal`), and --undo takes the last run's changes back (`undo`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from stillroom.config import Params
from stillroom.data import Layout, read_cards
from stillroom.folder_watch.endpoint import endpoint_for
from stillroom.folder_watch.journal import Journal, folder_lock, state_dir
from stillroom.folder_watch.request import TaskRequest
from stillroom.folder_watch.undo import undo_last_run
from stillroom.folder_watch.watcher import FolderWatcher, Outcome
from stillroom.schema import TaskCard

__all__ = ["Outcome", "TaskRequest", "find_card", "undo_folder", "watch_folder"]


def find_card(layout: Layout, task: str) -> TaskCard:
    cards = read_cards(layout.cards) if layout.cards.exists() else []
    for card in cards:
        if task in (card.id, card.name):
            return card
    raise ValueError(f"no task {task!r}; `stillroom tasks` lists them")


def _folder(folder: Path) -> Path:
    resolved = Path(folder).expanduser().resolve()
    if not resolved.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return resolved


def watch_folder(
    params: Params,
    layout: Layout,
    folder: Path,
    task: str,
    *,
    apply: bool = False,
    once: bool = False,
    base_url: str | None = None,
    emit: Callable[[Outcome], None] = lambda outcome: None,
    stop: threading.Event | None = None,
) -> dict:
    """Watch until `stop` is set (or, with once, handle the files there now); returns the run's summary."""
    folder = _folder(folder)
    request = TaskRequest.from_card(find_card(layout, task))
    state = state_dir(params, layout, folder)
    with folder_lock(state), Journal(state) as journal, endpoint_for(params, layout, request.card.id, base_url) as ep:
        if params.watch.nice:
            os.nice(params.watch.nice)
        journal.write("start", folder=str(folder), task=request.card.name, apply=apply, once=once,
                      action=request.action, shape=request.shape, endpoint=base_url or "in-process")
        watcher = FolderWatcher(folder, request, ep, params.watch, journal, apply, emit)
        try:
            watcher.run(once, stop or threading.Event())
        finally:
            summary = {"run": journal.run_id, "folder": str(folder), "task": request.card.name,
                       "action": request.action if apply else "suggest", **watcher.summary()}
            journal.write("end", **summary)
    return summary


def undo_folder(params: Params, layout: Layout, folder: Path) -> dict:
    """Take back the changes of the folder's last run that made any."""
    folder = _folder(folder)
    state = state_dir(params, layout, folder)
    with folder_lock(state):
        return {"folder": str(folder), **undo_last_run(folder, state)}
