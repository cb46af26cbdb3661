"""Which task is this request? The small public door of detect, for the server and the file watcher.

Detect writes a task index (`data/tasks/index.json`) built from the same fingerprints it
groups calls by (`fingerprints.py`, `templates.py`), so a request is matched the way its
logged twin was assigned:

1. structure: the folded system prompt and response_format of a program's calls;
2. template: a mined instruction template of a hand-typed user turn, else its skeleton over
   the fixed words detect kept (`templates.skeleton`), else detect's second chance: the task
   whose instruction words the turn shares (`second_chance.py`, a typo or a new wording);
3. embedding (optional, free-form prompts only): the nearest template of a task by cosine,
   no looser than detect's own clustering (`detect.cluster_similarity`).

A fingerprint enters the index only when the calls that carried it went (nearly) all to one
task, so a request that looks like a one-off is never matched. Steps 1 and 2 are dictionary
look-ups on folded strings: no model, well under a millisecond.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stillroom.detect.fingerprints import canonical_format, fold, is_generic_prompt
from stillroom.detect.second_chance import FormIndex, place
from stillroom.detect.templates import candidates, skeleton
from stillroom.schema import LogRecord, TaskCard

INDEX_VERSION = 3
# A fingerprint names a task when at least this share of the calls carrying it went to that task.
_PURITY = 0.9
# ... and at least this many of them: one shared call is a coincidence, not a template.
_MIN_SUPPORT = 2
_SEPARATOR = "\x1f"

MatchedBy = Literal["structure", "template", "embedding"]
EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Match:
    task_id: str
    task_name: str
    by: MatchedBy
    similarity: float | None = None  # cosine, for an embedding match


def _key(*parts: str) -> str:
    return _SEPARATOR.join(parts)


def _text(content: Any) -> str:
    """Message content as the text ingest keeps: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part)
            for part in content
            if isinstance(part, str) or (isinstance(part, dict) and part.get("type") in ("text", "input_text"))
        )
    return ""


def request_fingerprint(messages: Sequence[Mapping[str, Any]], response_format: Mapping | None) -> tuple[str, str, str]:
    """(system prompt, canonical response_format, last user turn) of a chat request, as ingest would read it."""
    system = "\n\n".join(_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
    user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    return system, canonical_format(dict(response_format) if response_format else None), user


def _structure(system: str, response_format: str) -> str | None:
    """The structure key of a call, or None for a free-form call (no or a generic system prompt)."""
    return None if is_generic_prompt(system) else _key(fold(system), response_format)


def _pure(counts: Mapping[str, Counter]) -> dict[str, str]:
    """Fingerprint -> task, for fingerprints whose calls went nearly all to one task (None counts against)."""
    out = {}
    for fingerprint, tasks in counts.items():
        (task, n), total = tasks.most_common(1)[0], sum(tasks.values())
        if task is not None and n >= _MIN_SUPPORT and n >= _PURITY * total:
            out[fingerprint] = task
    return out


def build_index(
    records: Iterable[LogRecord],
    assignments: Mapping[str, str | None],
    cards: Sequence[TaskCard],
    embed_fn: EmbedFn | None = None,
    similarity_floor: float = 0.8,
    skeleton_words: frozenset[str] = frozenset(),
    form_index: FormIndex | None = None,
    second_chance: tuple[float, float] = (0.8, 0.1),
) -> dict:
    """The task index detect writes: every structure, template and skeleton fingerprint that
    names one task, and the fixed words skeletons are made over."""
    structures: dict[str, Counter] = defaultdict(Counter)
    templates: dict[str, Counter] = defaultdict(Counter)
    skeletons: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        task = assignments.get(record.id)
        response_format = canonical_format(record.response_format)
        structure = _structure(record.system_prompt, response_format)
        if structure is not None:
            structures[structure][task] += 1
        for template in candidates(record.user_text):
            templates[_key(response_format, template)][task] += 1
        if skeleton_words and (form := skeleton(record.user_text, skeleton_words)):
            skeletons[_key(response_format, form)][task] += 1
    known = {card.id for card in cards}
    by_structure = {k: t for k, t in _pure(structures).items() if t in known}
    by_template = {k: t for k, t in _pure(templates).items() if t in known}
    by_skeleton = {k: t for k, t in _pure(skeletons).items() if t in known}
    index: dict = {
        "version": INDEX_VERSION,
        "tasks": {card.id: {"name": card.name, "output_format": card.answer_format} for card in cards},
        "structures": by_structure,
        "templates": by_template,
        "skeletons": by_skeleton,
        "skeleton_words": sorted(skeleton_words) if by_skeleton else [],  # a request's skeleton is made as detect's
        "embedding": None,
        # detect's second chance (second_chance.py): each task's instruction forms, with its floor and margin
        "forms": None
        if form_index is None
        else {**form_index.to_json(), "floor": second_chance[0], "margin": second_chance[1]},
    }
    if embed_fn is not None and by_template:
        keys = sorted(by_template)
        vectors = embed_fn([k.split(_SEPARATOR, 1)[1] for k in keys])
        index["embedding"] = {
            "floor": similarity_floor,
            "templates": keys,
            "vectors": np.round(vectors, 5).tolist(),
        }
    return index


def write_index(path: Path, index: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(index, ensure_ascii=False) + "\n", encoding="utf-8")


class TaskMatcher:
    """Matches chat requests to the tasks detect found; load once, call per request."""

    def __init__(self, index: dict, embed_fn: EmbedFn | None = None):
        if index.get("version") != INDEX_VERSION:
            raise ValueError(f"task index version {index.get('version')!r}, expected {INDEX_VERSION}: re-run detect")
        self.tasks: dict[str, dict] = index["tasks"]
        self.structures: dict[str, str] = index["structures"]
        self.templates: dict[str, str] = index["templates"]
        self.skeletons: dict[str, str] = index["skeletons"]
        self.skeleton_words = frozenset(index["skeleton_words"])
        forms = index.get("forms")
        self.forms = FormIndex.from_json(forms) if forms else None
        self._forms_floor, self._forms_margin = (forms["floor"], forms["margin"]) if forms else (1.0, 1.0)
        embedding = index.get("embedding") or None
        self.embed_fn = embed_fn if embedding else None
        if embedding and embed_fn is not None:
            self._template_keys: list[str] = embedding["templates"]
            self._vectors = np.asarray(embedding["vectors"], dtype=np.float32)
            self._floor = float(embedding["floor"])

    @classmethod
    def load(cls, path: Path | str, embed_fn: EmbedFn | None = None) -> TaskMatcher:
        """The index detect wrote; `embed_fn` (texts -> unit vectors) turns on the embedding step."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no task index at {path}: run the detect stage first (stillroom detect)")
        return cls(json.loads(path.read_text(encoding="utf-8")), embed_fn)

    def _found(self, task_id: str, by: MatchedBy, similarity: float | None = None) -> Match:
        return Match(task_id, self.tasks[task_id]["name"], by, similarity)

    def match(self, messages: Sequence[Mapping[str, Any]], response_format: Mapping | None = None) -> Match | None:
        """The task this request belongs to, or None (the request goes to the teacher)."""
        system, fmt, user = request_fingerprint(messages, response_format)
        structure = _structure(system, fmt)
        if structure is not None and (task := self.structures.get(structure)):
            return self._found(task, "structure")
        found = candidates(user)
        for template in found:
            if task := self.templates.get(_key(fmt, template)):
                return self._found(task, "template")
        form = skeleton(user, self.skeleton_words) if self.skeletons else None
        if form and (task := self.skeletons.get(_key(fmt, form))):
            return self._found(task, "template")
        if structure is None and self.forms is not None:
            task = place([user], self.forms, self._forms_floor, self._forms_margin)[0]
            if task is not None and task in self.tasks:
                return self._found(task, "template")
        if structure is None and found and self.embed_fn is not None:
            return self._nearest_template(fmt, found)
        return None

    def match_record(self, record: LogRecord) -> Match | None:
        """The task of a logged call, by the same steps as a live request."""
        messages = [{"role": m.role, "content": m.content} for m in record.prompt()]
        return self.match(messages, record.response_format)

    def _nearest_template(self, fmt: str, found: list[str]) -> Match | None:
        similarity = self.embed_fn(found) @ self._vectors.T  # (candidates, templates)
        allowed = np.array([key.split(_SEPARATOR, 1)[0] == fmt for key in self._template_keys])
        similarity[:, ~allowed] = -1.0
        row, column = np.unravel_index(int(similarity.argmax()), similarity.shape)
        best = float(similarity[row, column])
        if best < self._floor:
            return None
        return self._found(self.templates[self._template_keys[column]], "embedding", best)
