"""A second chance for the calls no template placed: a typo in the instruction, a payload word
that happens to repeat, a wording one call in a hundred uses.

Each such call is reduced to its instruction form: the turn with its payload masked (JSON,
numbers, file names, quotes), function words and punctuation dropped, and of
a long turn only its first and last words, where people put the instruction. A task is known
by its instruction words (the words a good share of its calls use: what its people repeat) and
by its most used forms over those words. A call joins the task one of whose forms shares most
of its instruction words (Dice overlap at least `floor`) when no other task comes within
`margin`; detect also asks that its answer fits the task's answers. Sets of words, not a model:
a million unplaced calls cost seconds, and a one-off chat turn shares too few of any task's
instruction words to reach the floor. The matcher serve uses makes the same comparison from
the index, so a request typed with the same slip is routed as its logged twin was.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

from stillroom.detect.templates import FUNCTION_WORDS, MAX_SKELETON_CHARS, mask, mask_json

# A task is known by at most this many of its most used forms: enough for every wording.
FORMS_PER_TASK = 64
# A word is one of a task's instruction words when at least this share of its calls use it.
_INSTRUCTION_SHARE = 0.2
# A long turn is read by this many words at its start and at its end.
_EDGE_WORDS = 12
# A call is compared only when it has this many of the tasks' instruction words.
_MIN_WORDS = 2
_WORD = re.compile(r"<\w+>|[a-z][\w']*")


def instruction_form(text: str, mask: Callable[[str], str] = mask) -> frozenset[str]:
    """The words of a turn that could say what to do: payload masked to slots, function words
    and punctuation dropped; of a long turn, only its first and last words (a head before the
    payload, or a question after it)."""
    masked = mask_json(text.strip())
    if len(masked) > MAX_SKELETON_CHARS:
        lines = [line for line in masked.split("\n") if line.strip()]
        first = re.split(r":\s", lines[0], maxsplit=1)[0].split()[:_EDGE_WORDS]
        last = lines[-1].split()[-_EDGE_WORDS:] if len(lines) > 1 else []
        masked = " ".join([*first, *last])
    return frozenset(t for t in _WORD.findall(mask(masked)) if t not in FUNCTION_WORDS)


def instruction_forms(texts: Sequence[str], mask: Callable[[str], str] = mask) -> list[frozenset[str]]:
    """`instruction_form` of each text, each distinct text worked out once: a task's calls and a
    log's one-offs repeat their turns."""
    forms = {text: instruction_form(text, mask) for text in dict.fromkeys(texts)}
    return [forms[text] for text in texts]


@dataclass
class FormIndex:
    """Each task's instruction forms over the instruction words: what an unplaced call is compared with."""

    words: list[str]  # every task's instruction words
    forms: list[list[str]]
    owners: list[str]  # the task of each form

    @classmethod
    def build(cls, forms_by_task: dict[str, list[frozenset[str]]]) -> FormIndex:
        words: set[str] = set()
        forms, owners = [], []
        for task, task_forms in forms_by_task.items():
            used = Counter(w for form in task_forms for w in form)
            own = {w for w, n in used.items() if n >= _INSTRUCTION_SHARE * len(task_forms)}
            words |= own
            for form, _ in Counter(form & own for form in task_forms if form & own).most_common(FORMS_PER_TASK):
                forms.append(sorted(form))
                owners.append(task)
        return cls(sorted(words), forms, owners)

    def _matrix(self, forms: Sequence[frozenset[str] | Sequence[str]]) -> sparse.csr_matrix:
        column = {w: j for j, w in enumerate(self.words)}
        rows, cols = [], []
        for i, form in enumerate(forms):
            for w in form:
                if w in column:
                    rows.append(i)
                    cols.append(column[w])
        data = np.ones(len(rows), dtype=np.float32)
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(forms), len(self.words)))

    @cached_property
    def _known(self) -> sparse.csr_matrix:
        """The tasks' forms as a matrix, built once: the matcher compares every request with it."""
        return self._matrix(self.forms)

    def nearest(self, forms: Sequence[frozenset[str]], floor: float, margin: float) -> list[str | None]:
        """Per call, the task one of whose forms it overlaps best (Dice over instruction words), when
        that is at least `floor` and `margin` clear of every other task."""
        if not self.forms or not forms:
            return [None] * len(forms)
        calls, known = self._matrix(forms), self._known
        enough = np.asarray(calls.sum(axis=1)).ravel() >= _MIN_WORDS
        shared = (calls @ known.T).toarray()
        sizes = np.asarray(calls.sum(axis=1)) + np.asarray(known.sum(axis=1)).T
        dice = np.divide(2 * shared, sizes, out=np.zeros_like(shared), where=sizes > 0)
        tasks = sorted(set(self.owners))
        column = np.array([tasks.index(o) for o in self.owners])
        best = np.stack([dice[:, column == j].max(axis=1) for j in range(len(tasks))], axis=1)
        order = np.argsort(-best, axis=1)
        rows = np.arange(len(forms))
        top = best[rows, order[:, 0]]
        runner_up = best[rows, order[:, 1]] if len(tasks) > 1 else np.zeros(len(forms))
        sure = enough & (top >= floor) & (top - runner_up >= margin)
        return [tasks[order[i, 0]] if sure[i] else None for i in rows]

    def to_json(self) -> dict:
        return {"words": self.words, "forms": self.forms, "owners": self.owners}

    @classmethod
    def from_json(cls, data: dict) -> FormIndex:
        return cls(list(data["words"]), [list(f) for f in data["forms"]], list(data["owners"]))


def place(
    texts: Sequence[str], index: FormIndex, floor: float, margin: float, mask: Callable[[str], str] = mask
) -> list[str | None]:
    """The task each text's instruction form is nearest to, or None; each distinct form compared once."""
    forms = instruction_forms(texts, mask)
    unique = list(dict.fromkeys(forms))
    nearest = dict(zip(unique, index.nearest(unique, floor, margin), strict=True))
    return [nearest[form] for form in forms]
