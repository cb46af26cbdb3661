"""What every student is: something that answers a task's prompts with a confidence, loaded from a folder.

The folder holds a `student.json` manifest naming the kind, so evaluation, MLflow and
serving load any student the same way without knowing how it was trained. Writing a folder
is the training side's job (`lm_train.save_lm`, `classifier_train.save_classifier`).
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from stillroom.schema import Message, Prediction

MANIFEST = "student.json"
# kind -> "module:Class" of its inference side; the kind is what a student folder's manifest names.
KINDS = {
    "classifier": "stillroom.students.classifier:EmbeddingClassifier",
    "lm": "stillroom.students.lm:LMStudent",
}

Prompt = Sequence[Message]


class Student(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def predict(self, prompts: Sequence[Prompt], batch_size: int = 16) -> list[Prediction]:
        """Answer each prompt (system prompt and turns, as the teacher saw them)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Student: ...


def last_user_turn(prompt: Prompt) -> str:
    for message in reversed(prompt):
        if message.role == "user":
            return message.content
    return ""


def write_manifest(directory: Path, kind: str, **info: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps({"kind": kind, **info}, indent=2, default=str) + "\n")


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a stillroom student: {MANIFEST} is missing")
    return json.loads(path.read_text())


def load_student(directory: Path | str) -> Student:
    """Load whichever kind of student the folder holds."""
    directory = Path(directory)
    kind = read_manifest(directory)["kind"]
    if kind not in KINDS:
        raise ValueError(f"{directory}: unknown student kind {kind!r}; known: {sorted(KINDS)}")
    module_name, class_name = KINDS[kind].split(":")
    student_class = getattr(importlib.import_module(module_name), class_name)
    return student_class.load(directory)
