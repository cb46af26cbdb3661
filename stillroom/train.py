"""Pick and train the student for one task: a classifier for closed label sets, an LM otherwise."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from stillroom.config import Layout, Params, TrainParams
from stillroom.schema import DatasetRow, TaskCard, write_json
from stillroom.students.base import Student
from stillroom.synthesize import load_splits, synthesized_cards

TRAIN_INFO = "train_info.json"


def student_kind(card: TaskCard) -> str:
    return "classifier" if card.output_type == "label" else "lm"


def train_task(
    card: TaskCard,
    train: Sequence[DatasetRow],
    validation: Sequence[DatasetRow],
    params: TrainParams,
    out_dir: Path,
    progress: bool = True,
) -> tuple[Student, dict]:
    """Train, save to `out_dir` (replacing what was there) and return the student with its training facts."""
    if not train:
        raise ValueError(f"task {card.id} ({card.name}) has no training rows")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    kind = student_kind(card)
    if kind == "classifier":
        from stillroom.students.classifier import EmbeddingClassifier

        student, info = EmbeddingClassifier.train(train, params.classifier, seed=params.seed, progress=progress)
        student.save(out_dir)
    else:
        from stillroom.students.lm import LMStudent

        student, info = LMStudent.train(
            list(train), list(validation), params.lm, out_dir, seed=params.seed, progress=progress
        )
    info = {"task_id": card.id, "task": card.name, "kind": kind, **info}
    (out_dir / TRAIN_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return student, info


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """The train stage: one student per task under data/models/<task>/ (+ metrics/train.json)."""
    cards = synthesized_cards(layout)
    if layout.models.exists():
        shutil.rmtree(layout.models)
    summary = {}
    for card in cards:
        splits = load_splits(layout, card.id)
        _, info = train_task(card, splits["train"], splits["validation"], params.train, layout.model(card.id), progress)
        summary[card.name] = {k: v for k, v in info.items() if isinstance(v, int | float | str)}
    write_json(layout.stage_metrics("train"), summary)
    return summary
