"""Template mining of user turns, Drain-style: the constant part of a turn with its variable
slots masked.

Calls that fill one template ("Summarize this: {text}", "{text}\\n\\ntl;dr", "What is {n} + {n}?")
share that part, so they can be grouped by counting strings instead of embedding every call:
at a million calls, embedding each one would take hours on a CPU, while the distinct templates
number in the hundreds. Only places where people put an instruction are candidates (a head
before a colon, a separate first or last paragraph, a short turn with masked slots), so the
opening words two chat messages happen to share never make a template.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# A candidate longer than this is content (an article's paragraph), not an instruction.
MAX_TEMPLATE_WORDS = 60
# A whole turn is its own template only when it is this short and has a masked slot.
MAX_SHORT_TURN_WORDS = 12

_MASKS = (
    (re.compile(r"(?:https?://|www\.)\S+"), "<url>"),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<email>"),
    (re.compile(r"(?<![\w@])@\w+"), "<user>"),
    (re.compile(r"\d+(?:[.,:/-]\d+)*"), "<num>"),
)
_SLOT_TOKENS = tuple(token for _, token in _MASKS)
_EDGE_PUNCTUATION = " .:;,!?-\"'"


def mask(text: str) -> str:
    """Case, spacing and edge punctuation folded, variable tokens (numbers, URLs, e-mail
    addresses, @handles) replaced by a slot name, so "Order 12:" and "order 7" agree."""
    text = " ".join(text.split()).casefold()
    for pattern, token in _MASKS:
        text = pattern.sub(token, text)
    return text.strip(_EDGE_PUNCTUATION)


def candidates(text: str) -> list[str]:
    """The masked parts of a turn that could be its fixed instruction."""
    text = text.strip()
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    head = re.match(r"([^\n]+?):(?:\s|$)", text)
    found = [head.group(1)] if head else []
    if len(paragraphs) > 1:
        found += [paragraphs[0], paragraphs[-1]]
    masked = [mask(part) for part in found if len(part.split()) <= MAX_TEMPLATE_WORDS]
    if len(text.split()) <= MAX_SHORT_TURN_WORDS:
        whole = mask(text)
        if any(token in whole for token in _SLOT_TOKENS):
            masked.append(whole)
    return list(dict.fromkeys(m for m in masked if m))


def mine(texts: Sequence[str], min_support: int = 2) -> list[str | None]:
    """Per turn, the candidate it shares with the most other turns (ties: the first found),
    or None when it shares none with at least `min_support - 1` others."""
    found = [candidates(text) for text in texts]
    support = Counter(c for cs in found for c in cs)
    picked: list[str | None] = []
    for cs in found:
        best = max(cs, key=support.__getitem__, default=None)
        picked.append(best if best is not None and support[best] >= min_support else None)
    return picked
