"""What detect and the request matcher recognise a call by, defined once so they cannot disagree.

A program's calls share a system prompt and a response_format (the structure key); a
person's hand-typed calls share a mined user-turn template (`templates.py`). Generic
persona prompts ("You are a helpful assistant.") say nothing about the task and are
not a structure.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

# Sentences that set a tone but name no task: a prompt made only of these is generic.
_GENERIC_SENTENCE = re.compile(
    r"(you are|you're|act as) (an? |the )?"
    r"((very|helpful|friendly|useful|smart|kind|honest|harmless|polite|respectful|knowledgeable|intelligent"
    r"|concise|general-purpose|virtual|personal|large|language|ai|and) ){0,6}"
    r"(assistant|chatbot|bot|ai|model)( trained by [\w ]+)?"
    r"|you are chatgpt( a large language model trained by openai)?"
    r"|(knowledge cutoff|current date)\b.*"
    r"|(please )?(be|answer|respond|reply)( as)? (helpful|concise|concisely|brief|briefly|polite)( as possible)?"
)


def fold(text: str) -> str:
    """Whitespace, case and digits folded: dates, counters and ids inside a prompt
    template must not split one task into many."""
    return re.sub(r"\d+", "0", " ".join(text.split()).casefold())


def canonical_format(response_format: dict | None) -> str:
    if not response_format or response_format == {"type": "text"}:
        return ""
    return json.dumps(response_format, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=4096)
def is_generic_prompt(system_prompt: str) -> bool:
    """A prompt that could front any request ("You are a helpful assistant.") says nothing
    about the task, so it must not make unrelated calls one group."""
    sentences = (s.strip(" ,;:-'\"") for s in re.split(r"[.!?\n]+", fold(system_prompt)))
    return all(_GENERIC_SENTENCE.fullmatch(re.sub(r"[,;]", "", s)) for s in sentences if s)


@lru_cache(maxsize=4096)
def structure_key(system_prompt: str, response_format: str) -> tuple[str, ...]:
    return ("structure", fold(system_prompt), response_format)


@lru_cache(maxsize=4096)
def schema_keys(response_format: str) -> frozenset[str] | None:
    """The top-level properties of a JSON-schema response_format (canonical form), else None."""
    if not response_format:
        return None
    spec = json.loads(response_format)
    schema = (spec.get("json_schema") or {}).get("schema") if spec.get("type") == "json_schema" else None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return frozenset(properties) if isinstance(properties, dict) else None


def same_output(format_a: str, keys_a: frozenset[str] | None, format_b: str, keys_b: frozenset[str] | None) -> bool:
    """Two groups answer in one output shape: the same response_format, or a JSON schema whose
    properties are the keys the other group's JSON answers have (one job, one program asking
    with a schema and another asking in its prompt)."""
    if format_a == format_b:
        return True
    schema_a, schema_b = schema_keys(format_a), schema_keys(format_b)
    return (schema_a is not None and schema_a == keys_b) or (schema_b is not None and schema_b == keys_a)
