"""The watch loop: list the folder, wait for each new file to settle, ask the task, act, journal.

One thread does the work, one file at a time: watchdog's observer only wakes it, and a full
listing runs every `watch.rescan_s` besides, for file systems whose events get lost. Files waiting
to settle are capped at `watch.max_pending` (the rest wait for a later listing), so a folder
flooded with downloads costs bounded memory; the process runs at a raised niceness.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stillroom.config import WatchParams
from stillroom.folder_watch.actions import (
    Refused,
    Unreadable,
    jpeg_bytes,
    media_type,
    move_into,
    read_bytes,
    sha256,
    split_name,
    sub_folder,
    write_new,
)
from stillroom.folder_watch.endpoint import Answer, Endpoint
from stillroom.folder_watch.journal import Journal
from stillroom.folder_watch.request import TaskRequest, is_yes

# Idle, the loop still wakes this often to see a stop request (an event or a listing due wakes it too).
_IDLE_WAIT_S = 0.5
log = logging.getLogger("stillroom.watch")
Signature = tuple[int, int]  # (size, mtime in ns): a file still being written changes it


@dataclass
class Outcome:
    """One file's line: what the task answered, by which route, and what was done about it."""

    file: str
    action: str  # suggest | move | convert | skip | error
    answer: str | None = None
    route: str | None = None
    confidence: float | None = None
    to: str | None = None
    reason: str | None = None
    request_id: str | None = None
    undo: dict = field(default_factory=dict)  # what undo checks (journaled, not shown)

    def line(self) -> str:
        routed = f" [{self.route}{f' {self.confidence:.2f}' if self.confidence is not None else ''}]"
        said = f" -> {self.answer}{routed if self.route else ''}" if self.answer is not None else ""
        done = {"move": f": moved to {self.to}", "convert": f": wrote {self.to}"}.get(self.action, "")
        why = f" ({self.reason})" if self.reason else ""
        tag = "" if self.action in ("suggest", "move", "convert") else f" {self.action}"
        return f"{self.file}{said}{done}{tag}{why}"

    def public(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "undo" and value is not None}


def signature(path: Path) -> Signature | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


@dataclass
class FolderWatcher:
    folder: Path
    request: TaskRequest
    endpoint: Endpoint
    settings: WatchParams
    journal: Journal
    apply: bool
    emit: Callable[[Outcome], None]
    pending: dict[str, tuple[Signature, float]] = field(default_factory=dict)  # name -> (signature, held since)
    done: dict[str, Signature] = field(default_factory=dict)  # handled or written by us: asked again only if changed
    counts: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    wake: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------------ finding settled files

    def scan(self) -> bool:
        """New top-level regular files into `pending`, up to the cap (False: it was reached, more are there);
        symlinks are reported once, never followed."""
        unfinished = tuple(suffix.casefold() for suffix in self.settings.skip_suffixes)
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name in self.pending:
                    continue
                if name.casefold().endswith(unfinished):
                    continue  # an unfinished download: its final name comes later
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                sig = (info.st_size, info.st_mtime_ns)
                if self.done.get(name) == sig:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    self.done[name] = sig
                    self._finish(Outcome(name, "skip", reason="a symlink: never followed"))
                elif stat.S_ISREG(info.st_mode):
                    if len(self.pending) >= self.settings.max_pending:
                        return False
                    self.pending[name] = (sig, time.monotonic())
        return True

    def settled(self, once: bool) -> list[str]:
        """Pending files whose size and mtime held for settle_s (or were last changed that long ago).
        A file that changed goes on waiting; with --once it is skipped, left for the next run."""
        ready, now, wall = [], time.monotonic(), time.time_ns()
        settle_ns = self.settings.settle_s * 1e9
        for name, (sig, since) in list(self.pending.items()):
            current = signature(self.folder / name)
            if current is None:
                del self.pending[name]
            elif current != sig:
                if once:
                    del self.pending[name]
                    self._finish(Outcome(name, "skip", reason="still being written: left for the next run"))
                else:
                    self.pending[name] = (current, now)
            elif now - since >= self.settings.settle_s or wall - sig[1] >= settle_ns:
                ready.append(name)
        return sorted(ready)

    def run(self, once: bool, stop: threading.Event) -> None:
        observer = None if once else self._observe()
        try:
            complete = self.scan()
            next_scan = time.monotonic() + self.settings.rescan_s
            while not stop.is_set():
                for name in self.settled(once):
                    del self.pending[name]
                    self.handle(name)
                    if stop.is_set():
                        return
                if once and not self.pending:
                    return
                self.wake.wait(self.settings.poll_s if self.pending else _IDLE_WAIT_S)
                drained = not complete and len(self.pending) < self.settings.max_pending
                if not once and (self.wake.is_set() or drained or time.monotonic() >= next_scan):
                    self.wake.clear()
                    complete = self.scan()
                    next_scan = time.monotonic() + self.settings.rescan_s
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def _observe(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self.wake

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                wake.set()

        observer = Observer()
        try:
            observer.schedule(Wake(), str(self.folder), recursive=False)
            observer.start()
        except OSError as error:  # e.g. the inotify watch limit: the periodic listing still finds every file
            log.warning("no file system events for %s (%s): listing it every %g s", self.folder, error,
                        self.settings.rescan_s)
            return None
        return observer

    # ------------------------------------------------------------------ one file

    def handle(self, name: str) -> None:
        path = self.folder / name
        sig = signature(path)
        if sig is None:
            return
        self.done[name] = sig
        try:
            with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as handle:
                handle.read(1)
        except OSError as error:
            self._finish(Outcome(name, "error", reason=f"cannot read: {type(error).__name__}: {error.strerror}"))
            return
        image = None
        if self.request.image:  # the task reads the image itself: it goes in the request, as logged
            try:
                data = read_bytes(path, self._max_image_bytes)
                image = data, media_type(data)
            except (Refused, Unreadable) as why:
                self._finish(Outcome(name, "skip", reason=f"{why}: the task reads images"))
                return
        answer = self.endpoint.ask(self.request.body(name, image))
        self.routes[answer.route or "-"] += 1
        outcome = Outcome(
            name, "suggest", answer.text, answer.route, answer.confidence, request_id=answer.request_id
        )
        if answer.error:
            outcome.action, outcome.reason = "error", f"no answer: {answer.error}"
        elif self.apply:
            self._act(outcome, answer, path, sig, image[0] if image else None)
        self._finish(outcome)

    @property
    def _max_image_bytes(self) -> int:
        """A file over 4 bytes per allowed pixel is refused before it is read into memory."""
        return self.settings.max_image_pixels * 4

    def _act(self, outcome: Outcome, answer: Answer, path: Path, sig: Signature, data: bytes | None) -> None:
        if signature(path) != sig:
            outcome.action, outcome.reason = "skip", "changed while the task was asked"
            return
        try:
            if self.request.action == "move":
                self._move(outcome, answer.text or "", path)
            elif self.request.action == "convert":
                self._convert(outcome, answer.text or "", path, data)
        except Refused as why:
            outcome.action, outcome.reason = "skip", str(why)
        except Unreadable as why:
            outcome.action, outcome.reason = "error", str(why)
        except OSError as error:
            outcome.action, outcome.reason = "error", f"{type(error).__name__}: {error}"

    def _move(self, outcome: Outcome, answer: str, path: Path) -> None:
        folder = self.request.folder(answer)
        if folder is None:
            outcome.reason = "the answer names none of the task's folders: nothing moved"
            return
        target, made = sub_folder(self.folder, folder)
        if made:
            self.journal.write("mkdir", dir=folder)
        moved = move_into(path, target, path.name)
        info = moved.stat()
        outcome.action, outcome.to = "move", moved.relative_to(self.folder).as_posix()
        outcome.undo = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        if moved.name != path.name:
            outcome.reason = f"{folder}/{path.name} exists: not overwritten"

    def _convert(self, outcome: Outcome, answer: str, path: Path, data: bytes | None) -> None:
        if not is_yes(answer):
            return
        settings = self.settings
        original = data if data is not None else read_bytes(path, self._max_image_bytes)
        jpeg = jpeg_bytes(original, settings.jpeg_quality, settings.max_image_pixels)
        name = split_name(path.name)[0] + ".jpg"
        written = write_new(path.parent, name, jpeg)
        self.done[written.name] = signature(written) or (0, 0)
        outcome.action, outcome.to = "convert", written.name
        outcome.undo = {"sha256": sha256(jpeg)}
        if written.name != name:
            outcome.reason = "that JPEG name exists: not overwritten"

    def _finish(self, outcome: Outcome) -> None:
        self.counts[outcome.action] += 1
        self.journal.write(outcome.action, **outcome.public(), **outcome.undo)
        self.emit(outcome)

    def summary(self) -> dict:
        return {"files": sum(self.counts.values()), **dict(sorted(self.counts.items())),
                "routes": dict(sorted(self.routes.items()))}
