"""The capture log: every exchange appended to data/raw/capture/ in the log shape ingest reads.

One writer thread owns the files. A request hands its row over and waits until the row is
written, so a response the caller has seen is never missing from the log when the server dies.
Each batch is then fsynced (rows arriving together share one fsync); with `fsync_first` the request
waits for that too (the row also survives the machine losing power, for ~0.6 ms a request on an
ext4 disk). Rows are keyed by request id: a second row for an id is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

_STOP = object()
log = logging.getLogger("stillroom.serve")
_REMEMBERED_IDS = 200_000  # enough to refuse any duplicate from a retry; bounded for a long-running server


class DuplicateRequest(RuntimeError):
    pass


class CaptureWriter:
    def __init__(
        self,
        directory: Path,
        batch: int = 64,
        on_batch: Callable[[list[dict]], None] | None = None,
        fsync_first: bool = False,
    ):
        self.directory = directory
        self.batch = batch
        self.fsync_first = fsync_first
        self.on_batch = on_batch  # runs on the writer thread after each fsync (live traffic counts)
        self.rows_written = 0
        self._queue: queue.Queue = queue.Queue()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="stillroom-capture", daemon=True)
        self._started = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put((_STOP, None))
            self._thread.join(timeout=30)

    def submit(self, row: dict) -> Future:
        """Queue a row; the future is done once it is written (and fsynced, with `fsync_first`)."""
        done: Future = Future()
        self._queue.put((row, done))
        return done

    async def write(self, row: dict) -> None:
        await asyncio.wrap_future(self.submit(row))

    def path_for(self, moment: datetime) -> Path:
        """One file a day per server process: two servers never append to the same file."""
        return self.directory / f"capture-{moment:%Y-%m-%d}-{self._started}-p{os.getpid()}.jsonl"

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = []
            for row, done in items:
                if row is _STOP:
                    stopping = True
                else:
                    rows.append((row, done))
            if rows:
                self._write(rows)

    def _write(self, rows: list[tuple[dict, Future]]) -> None:
        accepted, lines = [], []
        for row, done in rows:
            request_id = row["stillroom"]["request_id"]
            if request_id in self._seen:
                done.set_exception(DuplicateRequest(f"request {request_id} is already in the capture log"))
                continue
            self._remember(request_id)
            accepted.append((row, done))
            lines.append(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        if not lines:
            return
        try:
            with self.path_for(datetime.now(UTC)).open("a", encoding="utf-8") as out:
                out.write("".join(lines))
                out.flush()  # in the operating system's hands: a dying server no longer loses it
                if not self.fsync_first:
                    self._release(accepted)
                os.fsync(out.fileno())
        except OSError as err:
            waiting = [done for _, done in accepted if not done.done()]
            for done in waiting:
                done.set_exception(err)
            if not waiting:  # written and released, only the fsync failed
                log.exception("capture rows written but not fsynced")
            return
        if self.fsync_first:
            self._release(accepted)
        if self.on_batch is not None and accepted:
            try:
                self.on_batch([row for row, _ in accepted])
            except Exception:  # live counts are a convenience; the log is what matters
                log.exception("live traffic counts not updated")

    def _release(self, accepted: list[tuple[dict, Future]]) -> None:
        self.rows_written += len(accepted)
        for _, done in accepted:
            done.set_result(None)

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        if len(self._seen) > _REMEMBERED_IDS:
            self._seen.popitem(last=False)
