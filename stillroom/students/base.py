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
    "image_classifier": "stillroom.students.image_classifier:ImageClassifier",
    "lm": "stillroom.students.lm:LMStudent",
    "span": "stillroom.students.span:SpanStudent",
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

    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        """Import the libraries `load` will need (seconds for torch), so a server can pay for them
        at start-up rather than on a user's first request. A kind with nothing heavy to import keeps this."""
        return None


def last_user_turn(prompt: Prompt) -> str:
    for message in reversed(prompt):
        if message.role == "user":
            return message.content
    return ""


def write_manifest(directory: Path, kind: str, /, **info: object) -> None:
    """`info` may be a loaded manifest, its own `kind` included: `kind` is the one written."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": kind, **{key: value for key, value in info.items() if key != "kind"}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a stillroom student: {MANIFEST} is missing")
    return json.loads(path.read_text())


def student_class(directory: Path | str) -> tuple[type[Student], dict]:
    """The class that loads the folder's kind of student, and the folder's manifest."""
    manifest = read_manifest(Path(directory))
    kind = manifest["kind"]
    if kind not in KINDS:
        raise ValueError(f"{directory}: unknown student kind {kind!r}; known: {sorted(KINDS)}")
    module_name, class_name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name), manifest


def load_student(directory: Path | str, weights: str | None = None) -> Student:
    """Load whichever kind of student the folder holds; `weights` overrides an LM student's form."""
    cls = student_class(directory)[0]
    return cls.load(Path(directory), weights=weights) if weights else cls.load(Path(directory))


def import_runtime(directory: Path | str) -> None:
    """Import what loading this folder's student needs, without loading its weights."""
    cls, manifest = student_class(directory)
    cls.import_runtime(manifest)
