"""Reading a JSON answer the LM student wrote: where each top-level field lies, and snapping extracted
strings back to the input they were copied from. Pure functions on text, used at inference.
"""

from __future__ import annotations

import json
import re

_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Characters that open a quoted or bracketed value: a copied span never starts with one.
_OPENERS = frozenset("\"'“‘«([{<")


def ground_in_source(obj: dict, source: str) -> dict:
    """Snap each extracted string to the input's own text; drop what the input does not contain.

    A value is found as written, else ignoring case, else by the longest run of its words the
    input contains ("J Joaquin Phoenix" -> "Joaquin Phoenix"); the span then grows left to the
    start of its word, as the teacher copies whole words ("-Larry Bird" in "-Larry Bird said"),
    but never over an opening quote or bracket, which frames a value rather than belongs to it
    ('"Jane Q. Doe" <jq@x.org>' gives Jane Q. Doe).
    """
    lowered = source.casefold()

    def snap(value: str) -> str | None:
        words = value.split()
        for size in range(len(words), 0, -1):
            for first in range(len(words) - size + 1):
                piece = " ".join(words[first : first + size])
                at = source.find(piece)
                at = at if at >= 0 else lowered.find(piece.casefold())
                if at >= 0:
                    start = at
                    while start > 0 and not source[start - 1].isspace() and source[start - 1] not in _OPENERS:
                        start -= 1
                    return source[start : at + len(piece)]
        return None

    grounded: dict = {}
    for key, value in obj.items():
        if isinstance(value, list):
            snapped = [snap(item) if isinstance(item, str) else item for item in value]
            grounded[key] = [item for item in snapped if item is not None]
        elif isinstance(value, str):
            grounded[key] = snap(value) or value
        else:
            grounded[key] = value
    return grounded


def json_field_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of every top-level field (key through value) of a text that is one JSON object."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        match = _JSON_WHITESPACE.match(text, i)
        return match.end() if match else i

    i = skip(0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    spans: dict[str, tuple[int, int]] = {}
    i = skip(i + 1)
    if text[i : i + 1] == "}":
        return spans
    while True:
        start = i
        key, i = decoder.raw_decode(text, i)
        i = skip(i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        _, i = decoder.raw_decode(text, skip(i + 1))
        spans[str(key)] = (start, i)
        i = skip(i)
        if text[i : i + 1] == ",":
            i = skip(i + 1)
        elif text[i : i + 1] == "}":
            return spans
        else:
            raise ValueError(f"expected ',' or '}}' at {i}")
