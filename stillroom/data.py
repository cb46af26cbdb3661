"""The data layer: where each stage's files live and how they are read and written.

Stages talk only through these files (records, task cards and the task index,
assignments, datasets, student folders, reports, the registry list), so any stage can
be run, inspected or replaced on its own, and no stage imports another.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from stillroom.schema import SPLITS, DatasetRow, LogRecord, Message, Split, TaskCard

TRAIN_INFO_FILE = "train_info.json"  # a student folder's training facts, written last

class Layout:
    """Where each stage reads and writes, relative to the project root (see dvc.yaml)."""

    def __init__(self, root: Path | str = "."):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.metrics = self.root / "metrics"

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # ingest
    @property
    def records(self) -> Path:
        return self.data / "records.jsonl"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine.jsonl"

    @property
    def blobs(self) -> Path:
        """Image bytes from the logs, each stored once under its SHA-256 (records hold references only)."""
        return self.data / "raw" / "blobs"

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256

    # detect
    @property
    def tasks_dir(self) -> Path:
        return self.data / "tasks"

    @property
    def cards(self) -> Path:
        return self.tasks_dir / "cards.json"

    @property
    def assignments(self) -> Path:
        return self.tasks_dir / "assignments.jsonl"

    @property
    def task_index(self) -> Path:
        """What the request matcher loads (stillroom.detect.matcher): fingerprints of every task."""
        return self.tasks_dir / "index.json"

    # synthesize
    @property
    def datasets(self) -> Path:
        return self.data / "datasets"

    def dataset(self, task_id: str, split: str) -> Path:
        return self.datasets / task_id / f"{split}.jsonl"

    # train
    @property
    def models(self) -> Path:
        return self.data / "models"

    def model(self, task_id: str) -> Path:
        return self.models / task_id

    def train_info(self, task_id: str) -> Path:
        """Written last by train: a model folder without it is not a finished student."""
        return self.models / task_id / TRAIN_INFO_FILE

    # evaluate
    @property
    def reports(self) -> Path:
        return self.data / "reports"

    def report(self, task_id: str) -> Path:
        return self.reports / task_id

    # register
    @property
    def registry(self) -> Path:
        return self.data / "registry.json"

    def stage_metrics(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"


ModelT = TypeVar("ModelT", bound=BaseModel)


def write_jsonl(path: Path, rows: Iterable[BaseModel | dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            line = row.model_dump_json() if isinstance(row, BaseModel) else json.dumps(row, ensure_ascii=False)
            out.write(line + "\n")
            count += 1
    return count


def read_jsonl(path: Path, model: type[ModelT]) -> Iterator[ModelT]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield model.model_validate_json(line)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    path.write_text(text + "\n", encoding="utf-8")


def write_cards(path: Path, cards: Iterable[TaskCard]) -> None:
    write_json(path, [card.model_dump(mode="json") for card in cards])


def read_cards(path: Path) -> list[TaskCard]:
    if not path.exists():
        raise FileNotFoundError(f"no task cards at {path}: run the detect stage first (stillroom detect)")
    return [TaskCard.model_validate(card) for card in json.loads(path.read_text(encoding="utf-8"))]


def write_assignments(path: Path, assignments: dict[str, str | None]) -> int:
    return write_jsonl(path, ({"record_id": rid, "task_id": tid} for rid, tid in assignments.items()))


def read_assignments(path: Path) -> dict[str, str | None]:
    with path.open(encoding="utf-8") as lines:
        return {row["record_id"]: row["task_id"] for row in map(json.loads, lines) if row}


def read_records(layout: Layout) -> list[LogRecord]:
    return list(read_jsonl(layout.records, LogRecord))


def group_records(records: Sequence[LogRecord], assignments: dict[str, str | None]) -> dict[str, list[LogRecord]]:
    """Task id -> its records, in the order given; unassigned records are left out."""
    groups: dict[str, list[LogRecord]] = defaultdict(list)
    for record in records:
        task_id = assignments.get(record.id)
        if task_id:
            groups[task_id].append(record)
    return groups


def synthesized_cards(layout: Layout) -> list[TaskCard]:
    """The tasks synthesize built a dataset for: the ones train, evaluate and register work on."""
    return [card for card in read_cards(layout.cards) if (layout.datasets / card.id).is_dir()]


def load_splits(layout: Layout, task_id: str, splits: Sequence[Split] = SPLITS) -> dict[Split, list[DatasetRow]]:
    """Training and threshold code asks for ("train", "validation") only: it never opens the test file.
    A row's images come with their bytes from the blob store, as a served request's come with the request."""
    out = {split: list(read_jsonl(layout.dataset(task_id, split), DatasetRow)) for split in splits}
    attach_image_bytes((row.prompt for rows in out.values() for row in rows), layout.blobs)
    return out


_SHA256 = re.compile(r"[0-9a-f]{64}")  # a blob's name; anything else (a path) is never opened


def attach_image_bytes(prompts: Iterable[Sequence[Message]], blobs: Path) -> None:
    """Put each stored image's bytes on its reference (`ImageRef.body`, never serialized), so a student reads a
    logged call's images as it reads a served request's. A blob that is not there stays None."""
    for prompt in prompts:
        for ref in (ref for message in prompt for ref in message.images):
            if ref.body is None and _SHA256.fullmatch(ref.sha256 or "") and (blobs / ref.sha256).is_file():
                ref.body = (blobs / ref.sha256).read_bytes()


def read_json(path: Path) -> dict:
    """A JSON file a stage wrote, or {} when that stage has not run."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def open_sqlite(path: Path) -> sqlite3.Connection:
    """A SQLite file shared by threads and processes: WAL, so readers never block the one writer;
    callers serialise their own writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    return db
