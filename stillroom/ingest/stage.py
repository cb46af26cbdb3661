"""The ingest stage: every log item parsed, windowed, scrubbed, deduplicated and streamed to disk.

Each item ends in exactly one place, so nothing is lost silently: a record (new or a
duplicate), a quarantined entry with its reason, or a counted skip (student traffic, a
batch half waiting for the other). A record's images are stored once each, as blobs
(see `images`); a bad one quarantines the record. Records are appended to data/records.jsonl
in arrival order (detect sorts by time itself); what was read is remembered in data/ingest/state.sqlite,
so a re-run reads only what was appended since.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from stillroom.config import IngestParams, Params
from stillroom.data import Layout, write_json
from stillroom.images import ImageStore
from stillroom.ingest.common import BadRecord, Skip, timestamp
from stillroom.ingest.formats import parse_object
from stillroom.ingest.scrub import Scrubber, scrub_text
from stillroom.ingest.sources import Item, items, log_files
from stillroom.ingest.state import State
from stillroom.schema import LogRecord

QUARANTINE_EXIT_CODE = 3  # `stillroom ingest` exits with this when anything was quarantined (see cli.py)
_COMMIT_EVERY = 50_000
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")  # an image's bytes in a quarantined line: kept as a length
_IMAGE_COUNTS = ("parts", "stored", "already_stored", "url_only", "file_id_only", "location_removed",
                 "location_tags_removed")


@dataclass
class Quarantined:
    source: str
    reason: str
    raw: str

    def as_dict(self) -> dict:
        return {"source": self.source, "reason": self.reason, "raw": self.raw}


@dataclass
class IngestResult:
    records: list[LogRecord] = field(default_factory=list)  # filled only by `ingest()`, the in-memory form
    quarantined: list[Quarantined] = field(default_factory=list)  # likewise
    new_records: int = 0
    duplicates: int = 0
    lines: int = 0
    parsed_lines: int = 0
    quarantined_count: int = 0
    outside_window: int = 0
    dropped_sensitive: int = 0
    formats: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    scrubbed: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    images: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        skipped = sum(self.skipped.values())
        return {
            "lines": self.lines,
            "records": self.new_records,
            "quarantined": self.quarantined_count,
            "duplicates": self.duplicates,
            "quarantine_reasons": dict(self.reasons),
            "skipped": dict(self.skipped),
            "outside_window": self.outside_window,
            "dropped_sensitive": self.dropped_sensitive,
            "scrubbed": dict(self.scrubbed),
            "formats": dict(self.formats),
            "images": {key: self.images[key] for key in _IMAGE_COUNTS},
            "files_rotated": self.events["files_rotated"],
            "lost": self.lines - self.parsed_lines - self.quarantined_count - skipped,
            "exit_code": QUARANTINE_EXIT_CODE if self.quarantined_count else 0,
        }


def _bound(value: str | None, name: str) -> datetime | None:
    try:
        return timestamp(value)
    except BadRecord as err:
        raise ValueError(f"ingest.{name}: {err}") from err


class _ScrubbedBatchStore:
    """The state's Batch API store, with every waiting half scrubbed before it is written."""

    def __init__(self, state: State, scrub: bool):
        self.state, self.scrub = state, scrub

    def _clean(self, value: dict) -> dict:
        return Scrubber().value(value) if self.scrub else value

    def put_request(self, custom_id: str, body: dict) -> dict | None:
        return self.state.put_request(custom_id, self._clean(body))

    def take_request(self, custom_id: str) -> dict | None:
        return self.state.take_request(custom_id)

    def put_output(self, custom_id: str, line: dict, source: str) -> None:
        self.state.put_output(custom_id, self._clean(line), source)


class Ingestor:
    """Feeds items through parse -> time window -> scrub -> dedupe, to the two sinks."""

    def __init__(self, params: IngestParams, state: State, keep: Callable[[LogRecord], None],
                 quarantine: Callable[[Quarantined], None], blobs: Path | None = None):
        self.params, self.state, self._keep, self._quarantine = params, state, keep, quarantine
        self.store = _ScrubbedBatchStore(state, params.scrub != "off")
        self.since, self.until = _bound(params.since, "since"), _bound(params.until, "until")
        self.result = IngestResult()
        self.images = ImageStore(blobs, params.max_image_bytes, self.result.images)

    def file(self, path: Path) -> None:
        for item in items(path, self.state, self.params.max_record_bytes, self.result.events):
            self.item(item)

    def item(self, item: Item) -> None:
        self.result.lines += 1
        if item.error:
            self.quarantine(item.source, item.error, item.raw)
            return
        try:
            obj = item.value if item.value is not None else json.loads(item.text or "")
            name, records = parse_object(obj, item.source, self.store, item.fmt or self.params.format)
            self.images.prepare(records)  # one bad image quarantines the line, before any of its records is kept
        except Skip as skip:
            self.result.skipped[str(skip)] += 1
            return
        except (json.JSONDecodeError, RecursionError) as err:
            self.quarantine(item.source, f"not JSON: {getattr(err, 'msg', 'too deeply nested')}", item.text or "")
            return
        except BadRecord as err:
            self.quarantine(item.source, str(err), item.text or json.dumps(item.value, default=str))
            return
        self.result.parsed_lines += 1
        for record in records:
            self.record(name, record)

    def record(self, name: str, record: LogRecord) -> None:
        if (self.since or self.until) and not self._in_window(record.timestamp):
            self.result.outside_window += 1
            return
        if self.params.scrub != "off":
            scrubber = _scrub(record)
            self.result.scrubbed.update(scrubber.counts)
            if self.params.scrub == "drop" and scrubber.found:
                self.result.dropped_sensitive += 1
                return
        if not self.state.add(record.id):
            self.result.duplicates += 1
            return
        self.result.formats[name] += 1
        self.result.new_records += 1
        self.images.store(record)
        self._keep(record)

    def _in_window(self, when: datetime | None) -> bool:
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (self.until is None or when < self.until)

    def quarantine(self, source: str, reason: str, raw: str) -> None:
        """Quarantined text is scrubbed whatever the mode: a secret must not reach disk through an error."""
        raw = _BASE64_RUN.sub(lambda run: f"<base64: {len(run.group())} chars>", raw)
        reason = scrub_text(reason)[:300]
        self.result.quarantined_count += 1
        self.result.reasons[reason.split(":")[0]] += 1
        self._quarantine(Quarantined(source=source, reason=reason, raw=scrub_text(raw[:2400])[:2000]))

    def finish(self) -> None:
        """Batch outputs still without a request at the end of a run: a response without a request."""
        for source, _line in self.state.take_waiting_outputs():
            self.result.skipped["batch output waiting for its request"] -= 1
            self.quarantine(source, "response without request: batch output whose custom_id no input file holds", "")
        self.result.skipped = +self.result.skipped


def _scrub(record: LogRecord) -> Scrubber:
    """Every text of the record through one scrubber, so placeholders agree across its fields."""
    scrubber = Scrubber()
    record.system_prompt = scrubber.text(record.system_prompt)
    for message in record.messages:
        message.content = scrubber.text(message.content)
        for image in message.images:  # a URL can carry a password or a token
            image.url = scrubber.text(image.url) if image.url else image.url
    record.response_text = scrubber.text(record.response_text)
    if record.extra:
        record.extra = scrubber.value(record.extra)
    return scrubber


def ingest(path: Path | str, params: IngestParams | None = None, blobs: Path | None = None) -> IngestResult:
    """Every record from the logs at `path`, in time order, each call once; in memory (tests, small logs).
    Image blobs are written to `blobs` when given, else only referenced."""
    params = params or IngestParams()
    state = State()
    ingestor: Ingestor
    result_records: list[LogRecord] = []
    quarantined: list[Quarantined] = []
    ingestor = Ingestor(params, state, result_records.append, quarantined.append, blobs)
    for file in log_files(path):
        ingestor.file(file)
    ingestor.finish()
    state.close()
    epoch = datetime.min.replace(tzinfo=UTC)
    ingestor.result.records = sorted(result_records, key=lambda r: (r.timestamp or epoch, r.id))
    ingestor.result.quarantined = quarantined
    return ingestor.result


def _sync_state(state: State, layout: Layout, reading: str) -> None:
    """Make the state agree with the output files: they may be deleted (dvc repro) or longer (a crash)."""
    expected = int(state.get("records_bytes") or 0)
    actual = layout.records.stat().st_size if layout.records.exists() else 0
    if actual < expected or (expected == 0 and actual > 0) or not layout.quarantine.exists():
        state.reset()
        for path in (layout.records, layout.quarantine):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    elif actual > expected:  # a run stopped between writing records and committing what it had read
        with layout.records.open("r+b") as records:
            records.truncate(expected)
        with layout.quarantine.open("r+b") as quarantine:
            quarantine.truncate(int(state.get("quarantine_bytes") or 0))
    if state.get("reading") != reading:  # a new window or format: read every file again (dedupe keeps ids once)
        state.db.execute("DELETE FROM files")
        state.set("reading", reading)
    state.commit()


def _progress(enabled: bool):
    from tqdm import tqdm

    return tqdm(unit=" lines", unit_scale=True, disable=not enabled, file=sys.stderr, mininterval=0.5)


def run(params: Params, layout: Layout) -> dict:
    """The ingest stage: logs -> data/records.jsonl (+ data/quarantine.jsonl, metrics/ingest.json)."""
    settings = params.ingest
    files = log_files(layout.resolve(settings.logs))
    capture = layout.resolve(settings.capture)
    if capture.is_dir():
        files += [file for file in log_files(capture) if file not in files]
    state = State(layout.data / "ingest" / "state.sqlite")
    reading = json.dumps({"format": settings.format, "since": settings.since, "until": settings.until})
    _sync_state(state, layout, reading)
    with layout.records.open("a", encoding="utf-8") as records, \
            layout.quarantine.open("a", encoding="utf-8") as quarantine, _progress(sys.stderr.isatty()) as bar:
        ingestor = Ingestor(params.ingest, state, lambda r: records.write(r.model_dump_json() + "\n"),
                            lambda q: quarantine.write(json.dumps(q.as_dict(), ensure_ascii=False) + "\n"),
                            layout.blobs)
        for file in files:
            for item in items(file, state, settings.max_record_bytes, ingestor.result.events):
                ingestor.item(item)
                if ingestor.result.lines % _COMMIT_EVERY == 0:
                    _checkpoint(state, records, quarantine)
                    bar.update(_COMMIT_EVERY)
            _checkpoint(state, records, quarantine)
        ingestor.finish()
        _checkpoint(state, records, quarantine)
    total = state.seen_count()
    state.close()
    summary = {**ingestor.result.summary(), "records_total": total}
    write_json(layout.stage_metrics("ingest"), summary)
    return summary


def _checkpoint(state: State, records: TextIO, quarantine: TextIO) -> None:
    """Records on disk, then the state that says they are there: a crash between the two is undone next run."""
    records.flush()
    quarantine.flush()
    state.set("records_bytes", str(records.tell()))
    state.set("quarantine_bytes", str(quarantine.tell()))
    state.commit()
