"""How answers are read, in one place: label spelling, JSON parsing, and token and spend estimates.

Detect, synthesize, the students and the metrics all read teacher and student answers;
one definition each keeps a label "Sport." from being one label in a card and another
in a dataset, and an answer from being JSON in one stage and text in the next.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

CHARS_PER_TOKEN = 4  # the usual estimate when a log has no usage numbers
DAYS_PER_MONTH = 30  # spend per month is the observed daily spend times this


def fold_case_and_spacing(text: str) -> str:
    """Case and runs of whitespace never make two answers different."""
    return " ".join(text.split()).casefold()


def normalize_label(text: str) -> str:
    """One spelling per answer, so "Sport", "sport." and " sport" count as the same label."""
    return fold_case_and_spacing(text).rstrip(".").rstrip()


@lru_cache(maxsize=65536)
def parse_json(text: str) -> object | None:
    """The answer as any JSON value, or None when it is not JSON (cached: answers are read many times)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def parse_json_object(text: str) -> dict | None:
    """The answer as a JSON object, or None when it is anything else."""
    value = parse_json(text)
    return value if isinstance(value, dict) else None


def estimate_tokens(text: str) -> int:
    """Tokens in a text when nobody counted them: about four characters each, at least one."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0
