"""The request a task's logged calls would have sent for a file, and what its answer may do to the file.

A task card keeps its mined user-turn templates casefolded and masked ("file", "which folder does
this go in? <file>"), so the wording is taken from a logged example that fits the template: the
request reads like the user's own calls, and the student sees the input it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from stillroom.content import data_url
from stillroom.schema import TaskCard

Action = Literal["move", "convert", "suggest"]
NAME = "{name}"
_SLOT = re.compile(r"<[a-z]+>")
_EDGE = " .:;,!?-\"'"  # what detect strips off the ends of a template
_YES, _NO = {"yes", "y", "true"}, {"no", "n", "false"}
_JPEG = re.compile(r"\bjpe?g\b", re.IGNORECASE)
# A folder a label may name: one plain path component, never hidden, never `..`.
_FOLDER = re.compile(r"[\w][\w &+,()-]{0,63}")


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _fits(template: str, example: str, whole: bool = False) -> str | None:
    """The example's wording with the file name's place as `{name}`, when the example fills that template.

    A template with one slot fills it; a slot-less one is an instruction before the payload ("File:")
    or after it ("... Topic?"), or, with `whole` (the payload is an image part), the entire turn.
    """
    text = " ".join(example.split())
    folded = text.casefold()
    if len(folded) != len(text):  # a letter casefolding lengthens (ß): positions would not line up
        return None
    pieces = _SLOT.split(template)
    if len(pieces) == 2:
        head, tail = pieces
        core = folded.strip(_EDGE)
        start = len(folded) - len(folded.lstrip(_EDGE))
        if core.startswith(head) and core.endswith(tail) and len(core) > len(head) + len(tail):
            return text[: start + len(head)] + NAME + text[start + len(core) - len(tail) :]
        return None
    if len(pieces) != 1 or not template:
        return None
    if whole and folded.strip(_EDGE) == template:
        return text
    if folded.startswith(template):
        rest = text[len(template) :]
        gap = len(rest) - len(rest.lstrip(_EDGE))
        return text[: len(template) + gap] + NAME if gap else None
    if folded.endswith(template):
        rest = text[: len(text) - len(template)]
        gap = len(rest) - len(rest.rstrip(_EDGE))
        return NAME + text[len(rest) - gap :] if gap else None
    return None


def user_turn_shape(templates: Iterable[str], examples: Iterable[str], image: bool = False) -> str:
    """The most used template that a logged example fits, in that example's wording; else the bare name
    (a program that sends only the file name). For an image task the text may carry no name at all."""
    examples = list(examples)
    for template in templates:
        for example in examples:
            shape = _fits(template, example, whole=image)
            if shape is not None:
                return shape
    return NAME


@dataclass(frozen=True)
class TaskRequest:
    """How to ask one task about one file, and what its answers may do."""

    card: TaskCard
    system: str
    model: str
    shape: str
    action: Action
    image: bool  # the task's calls carry the image itself (`inputs: image+text`): the file goes as a data URL

    @classmethod
    def from_card(cls, card: TaskCard) -> TaskRequest:
        examples = [e.input for e in (*card.representative, *card.edge_cases)] + card.examples
        model = max(card.models, key=card.models.__getitem__) if card.models else "gpt-4o-mini"
        return cls(
            card=card,
            system=card.system_prompts[0] if card.system_prompts else "",
            model=model,
            shape=user_turn_shape(card.templates, examples, image=card.inputs == "image+text"),
            action=action_of(card),
            image=card.inputs == "image+text",
        )

    def body(self, name: str, image: tuple[bytes, str] | None = None) -> dict:
        """The chat request for a file, as the task's logged calls were sent: the text turn, and for an
        image task the file's (bytes, media type) as an OpenAI `image_url` data-URL part after it."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        text = self.shape.replace(NAME, name)
        content: str | list[dict] = text
        if image is not None:
            part = {"type": "image_url", "image_url": {"url": data_url(*image)}}
            content = [{"type": "text", "text": text}, part]
        return {"model": self.model, "messages": [*system, {"role": "user", "content": content}]}

    def folder(self, answer: str) -> str | None:
        """The task's own label the answer names, when it may be a sub-folder; else None."""
        wanted = answer.strip().strip(".").casefold()
        label = next((label for label in self.card.labels if label.casefold() == wanted), None)
        return label if label and _FOLDER.fullmatch(label) else None


def is_yes(answer: str) -> bool:
    return answer.strip().strip(".!").casefold() in _YES


def action_of(card: TaskCard) -> Action:
    """A label set of folders moves files; yes/no on a prompt about JPEG converts; anything else suggests."""
    if card.answer_format != "label" or not card.labels:
        return "suggest"
    labels = {label.strip().casefold() for label in card.labels}
    if labels <= _YES | _NO:
        about = " ".join([*card.system_prompts[:1], *card.templates[:3]])
        return "convert" if _JPEG.search(about) else "suggest"
    return "move" if any(_FOLDER.fullmatch(label) for label in card.labels) else "suggest"
