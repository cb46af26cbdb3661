"""Task cards: what a repeated task costs, what its answers look like, and where it is odd.

A card is what a person reads to decide whether a student is worth it, and what the later
stages read to build one, so every number on it comes from the logged calls themselves.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from stillroom.answers import DAYS_PER_MONTH, estimate_tokens, normalize_label, parse_json
from stillroom.config import DetectParams, price_of
from stillroom.schema import DetectedBy, Example, LogRecord, OutputFormat, OutputType, TaskCard

# Share of a group's answers that must agree on one shape (short, or JSON with one key
# set) for the group to count as one task; the rest is teacher noise.
SHAPE_SHARE = 0.9
# A closed label set repeats itself: each label is used this often on average, and
# answers off the set (said once, or too long: names, refusals) are at most the noise share.
_MIN_RECORDS_PER_LABEL = 3
# Two groups' short answers "overlap" when this share of the smaller set is in the other.
_MIN_LABEL_OVERLAP = 0.5
# Two text tasks whose typical answers differ in length more than this are different tasks
# (a headline is not a summary).
_MAX_LENGTH_RATIO = 3.0
_EXAMPLES = 5
_EXAMPLE_CHARS = 200


# The signature of a JSON array answer: its item types, as one pseudo-key ("[string]"), so an
# array task has a key set like an object task and two array tasks of other item types differ.
_EMPTY_ARRAY = frozenset({"[]"})


def _is_array(signature: frozenset[str] | None) -> bool:
    return signature is not None and len(signature) == 1 and next(iter(signature)).startswith("[")


def _type_name(value: object) -> str:
    return str(_json_type(value).get("type", "any"))


def json_signature(value: object) -> frozenset[str] | None:
    """What shape a JSON answer has: an object's key set, an array's item types (one pseudo-key,
    "[string]"; "[]" when empty), else None (not JSON, or a bare number or string)."""
    if isinstance(value, dict):
        return frozenset(value)
    if isinstance(value, list):
        return frozenset({"[" + "|".join(sorted({_type_name(v) for v in value})) + "]"})
    return None


def _json_signature(answers: Counter[str], total: int) -> frozenset[str] | None:
    """The shape nearly every answer has, if JSON (`answers`: each distinct answer text with its
    count). Empty arrays fit any array shape: a list of names is often empty, and that must not
    make a names task look like two."""
    signatures: Counter[frozenset[str]] = Counter()
    for text, n in answers.items():
        if (s := json_signature(parse_json(text))) is not None:
            signatures[s] += n
    empty = signatures.pop(_EMPTY_ARRAY, 0)
    top = next((s for s, _ in signatures.most_common() if _is_array(s)), None) if empty else None
    if top is not None:
        signatures[top] += empty
    elif empty:
        signatures[_EMPTY_ARRAY] = empty
    best = signatures.most_common(1)
    return best[0][0] if best and best[0][1] >= SHAPE_SHARE * total else None


@dataclass
class AnswerShape:
    """What a group's answers look like, to tell a label task from JSON and text, and to keep
    different tasks with similar prompts apart."""

    short: set[str]  # distinct normalized answers of at most label_max_words words
    labels: dict[str, int]  # the short answers given more than once, with their counts
    mostly_short: bool
    closed: bool  # a label set: few recurring short answers cover nearly every call
    json_keys: frozenset[str] | None  # the key set (or array item types) nearly every answer has, if JSON
    median_words: float
    spread: float  # the 90th over the 10th percentile of answer words: how alike in length
    format: OutputFormat

    @classmethod
    def of(cls, records: Sequence[LogRecord], params: DetectParams) -> AnswerShape:
        total = len(records)
        answers = Counter(r.response_text for r in records)  # each distinct answer read once: labels repeat
        counts: Counter[str] = Counter()
        for text, n in answers.items():
            counts[normalize_label(text)] += n
        short = {a for a in counts if len(a.split()) <= params.label_max_words}
        labels = {a: n for a, n in counts.most_common() if a in short and n > 1}
        json_keys = _json_signature(answers, total)
        # JSON objects are structured output even when few distinct ones recur ({"people": []})
        closed = (
            json_keys is None
            and 0 < len(labels) <= params.max_labels
            and len(labels) * _MIN_RECORDS_PER_LABEL <= total
            and sum(labels.values()) >= SHAPE_SHARE * total
        )
        words = np.repeat([max(1, len(a.split())) for a in counts], list(counts.values()))
        median_words = float(np.median(words)) if total else 0.0
        spread = float(np.percentile(words, 90) / np.percentile(words, 10)) if total else 1.0
        if closed:
            fmt: OutputFormat = "label"
        elif json_keys is not None:
            fmt = "json"
        else:
            fmt = "short_text" if median_words <= params.short_text_max_words else "long_text"
        return cls(
            short=short,
            labels=labels,
            mostly_short=sum(counts[a] for a in short) >= SHAPE_SHARE * total,
            closed=closed,
            json_keys=json_keys,
            median_words=median_words,
            spread=spread,
            format=fmt,
        )

    @property
    def one_shape(self) -> bool:
        """Answered in one shape: a label set, one JSON key set, short answers, or texts of
        about one length (a chat's replies range from a word to a paragraph)."""
        return self.closed or self.json_keys is not None or self.mostly_short or self.spread <= _MAX_LENGTH_RATIO

    def fits(self, answer: str) -> bool:
        """One more answer in this shape: a known label, JSON of the same keys or items, or text
        about as long as the others."""
        if self.format == "label":
            return normalize_label(answer) in self.labels
        if self.format == "json":
            signature = json_signature(parse_json(answer))
            return signature == self.json_keys or (signature == _EMPTY_ARRAY and _is_array(self.json_keys))
        words = max(1.0, float(len(answer.split())))
        return max(words, self.median_words) <= _MAX_LENGTH_RATIO * max(1.0, min(words, self.median_words))

    def compatible(self, other: AnswerShape) -> bool:
        """Could both groups be one task? Answer shapes agree, label sets overlap, text
        answers are about as long."""
        if self.json_keys is not None or other.json_keys is not None:
            return self.json_keys == other.json_keys  # JSON answers are short or long by their content, not shape
        if self.mostly_short != other.mostly_short:
            return False
        if self.closed or other.closed:
            overlap = len(self.short & other.short)
            return overlap >= _MIN_LABEL_OVERLAP * min(len(self.short), len(other.short))
        longer, shorter = sorted((max(self.median_words, 1.0), max(other.median_words, 1.0)), reverse=True)
        return longer <= _MAX_LENGTH_RATIO * shorter


def _json_type(value: object) -> dict:
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        items = [_json_type(v) for v in value]
        return {"type": "array", "items": _union(items)} if items else {"type": "array"}
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: _json_type(v) for k, v in value.items()}}
    return {}


def _union(schemas: Sequence[dict]) -> dict:
    """One schema that every given value schema fits: types joined, arrays' items and
    objects' properties merged."""
    named = (s["type"] for s in schemas if "type" in s)
    types = sorted({t for name in named for t in ([name] if isinstance(name, str) else name)})
    merged: dict = {"type": types[0] if len(types) == 1 else types}
    item_schemas = [s["items"] for s in schemas if "items" in s]
    if item_schemas:
        merged["items"] = _union(item_schemas)
    objects = [s["properties"] for s in schemas if "properties" in s]
    if objects:
        keys = dict.fromkeys(k for props in objects for k in props)
        merged["properties"] = {k: _union([props[k] for props in objects if k in props]) for k in keys}
    return merged


def _union_of_distinct(values: Sequence[object]) -> dict:
    """`_union` of the values' schemas, each distinct schema once: a task's answers share a few."""
    schemas = {}
    for value in values:
        schema = _json_type(value)
        schemas.setdefault(json.dumps(schema), schema)
    return _union(list(schemas.values()))


def infer_json_schema(answers: Sequence[object], counts: Sequence[int] | None = None) -> dict:
    """A JSON Schema for the answers (each given `counts` times, else once): an array of the
    items' types when most answers are arrays, else an object whose key is required when nearly
    every answer has it."""
    weighted = list(zip(answers, counts or [1] * len(answers), strict=True))
    arrays = [(a, n) for a, n in weighted if isinstance(a, list)]
    objects = [(a, n) for a, n in weighted if isinstance(a, dict)]
    if sum(n for _, n in arrays) > sum(n for _, n in objects):
        return _union_of_distinct([a for a, _ in arrays])
    schema = _union_of_distinct([a for a, _ in objects])
    present: Counter[str] = Counter()
    for a, n in objects:
        for k in a:
            present[k] += n
    total = sum(n for _, n in objects)
    schema["required"] = [k for k in schema.get("properties", {}) if present[k] >= SHAPE_SHARE * total]
    return schema


def _tokens(record: LogRecord) -> tuple[int, int]:
    """Billed tokens, estimated from characters when the log has no usage."""
    usage = record.usage
    return (
        usage.input_tokens or estimate_tokens(record.system_prompt + "".join(m.content for m in record.messages)),
        usage.output_tokens or estimate_tokens(record.response_text),
    )


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1].rstrip() + "…"


def _example(record: LogRecord, why: str = "") -> Example:
    return Example(input=_shorten(record.user_text), output=_shorten(record.response_text), why=why)


def evenly_spaced(items: Sequence, n: int) -> list:
    """n items evenly spaced over the sequence: spread over the task's life, not its first day."""
    if not items:
        return []
    return [items[i] for i in dict.fromkeys(np.linspace(0, len(items) - 1, min(len(items), n)).round().astype(int))]


def spelled_labels(records: Sequence[LogRecord], labels: dict[str, int]) -> dict[str, int]:
    """Label counts with each label in the spelling the teacher used most ("Sport", not "sport")."""
    spellings: dict[str, Counter[str]] = {label: Counter() for label in labels}
    for record in records:
        spelling = " ".join(record.response_text.split()).rstrip(".").rstrip()
        if normalize_label(spelling) in spellings:
            spellings[normalize_label(spelling)][spelling] += 1
    return {spellings[label].most_common(1)[0][0]: n for label, n in labels.items()}


def _answer_key(text: str, fmt: OutputFormat) -> str:
    """Two answers mean the same when these agree: JSON by value, the rest by folded text."""
    if fmt == "json" and (parsed := parse_json(text)) is not None:
        return json.dumps(parsed, sort_keys=True)
    return normalize_label(text)


def _off_format(answers: Counter[str], shape: AnswerShape) -> set[str]:
    """The distinct answers outside a label or JSON task's format (text has no format to be outside)."""
    return {a for a in answers if not shape.fits(a)} if shape.format in ("label", "json") else set()


@dataclass
class _Consistency:
    repeated_inputs: int
    agreement: float | None
    disagreeing: list[LogRecord]  # one call per repeated input the teacher answered differently


def _self_consistency(records: Sequence[LogRecord], fmt: OutputFormat) -> _Consistency:
    """How often the teacher repeats itself: answers to an input seen more than once that
    match that input's most common answer. A student can only be as consistent as this."""
    by_input: dict[tuple, list[LogRecord]] = {}
    for record in records:
        turns = record.messages  # most calls are one turn: its pair is the key, no tuple of pairs to build
        # a turn's identity is its text, and its images' blobs when it has any (two photos, one question)
        key = (turns[0].role, turns[0].identity) if len(turns) == 1 else tuple([(m.role, m.identity) for m in turns])
        by_input.setdefault(key, []).append(record)
    repeated = [calls for calls in by_input.values() if len(calls) > 1]
    if not repeated:
        return _Consistency(0, None, [])
    agreeing, total, disagreeing = 0, 0, []
    keys: dict[str, str] = {}  # each distinct answer keyed once: a large log repeats inputs and their answers
    for calls in repeated:
        answers = Counter(
            keys[text] if text in keys else keys.setdefault(text, _answer_key(text, fmt))
            for text in (r.response_text for r in calls)
        )
        agreeing += answers.most_common(1)[0][1]
        total += len(calls)
        if len(answers) > 1:
            disagreeing.append(calls[-1])
    return _Consistency(len(repeated), agreeing / total, disagreeing)


def _first_two(item: tuple) -> tuple:
    return item[:2]


def _edge_cases(
    records: Sequence[LogRecord],
    lengths: Sequence[int],
    shape: AnswerShape,
    consistency: _Consistency,
    off_format: set[str],
) -> list[Example]:
    """The calls a student is likeliest to get wrong, each with why (`lengths`: of each call's user turn)."""
    by_length = [(n, r.id, r) for n, r in zip(lengths, records, strict=True)]
    longest, shortest = max(by_length, key=_first_two)[2], min(by_length, key=_first_two)[2]
    cases = [_example(longest, "longest input"), _example(shortest, "shortest input")]
    if shape.format == "label":
        rarest = min(shape.labels, key=lambda label: (shape.labels[label], label))
        record = next(r for r in records if normalize_label(r.response_text) == rarest)
        cases.append(_example(record, f"rarest label ({shape.labels[rarest]} calls)"))
    off = next((r for r in records if r.response_text in off_format), None) if off_format else None
    if off is not None:
        cases.append(_example(off, f"answer outside the {shape.format.replace('_', ' ')} format"))
    if consistency.disagreeing:
        cases.append(_example(consistency.disagreeing[0], "the teacher answered this input differently before"))
    merged: dict[tuple[str, str], Example] = {}
    for case in cases:  # one call can be an edge case for several reasons
        seen = merged.setdefault((case.input, case.output), case)
        if seen is not case:
            seen.why = f"{seen.why}; {case.why}"
    return list(merged.values())


def _representative(records: Sequence[LogRecord], lengths: Sequence[int], shape: AnswerShape) -> list[Example]:
    """Typical calls: one per most common label, else calls of median input length over time."""
    if shape.format == "label":
        first: dict[str, LogRecord] = {}
        for record in records:
            first.setdefault(normalize_label(record.response_text), record)
        return [_example(first[label]) for label in list(shape.labels)[:_EXAMPLES]]
    low, high = np.percentile(lengths, [25, 75])
    typical = [r for r, n in zip(records, lengths, strict=True) if low <= n <= high]
    return [_example(r) for r in evenly_spaced(typical, _EXAMPLES)]


def _percentile(values: Sequence[int], q: float) -> int:
    return round(float(np.percentile(values, q))) if values else 0


def build_card(
    records: Sequence[LogRecord],
    *,
    task_id: str,
    name: str,
    detected_by: DetectedBy,
    templates: Sequence[str],
    params: DetectParams,
) -> TaskCard:
    """The card of one task from its calls (in time order)."""
    shape = AnswerShape.of(records, params)
    output_type: OutputType = "label" if shape.format == "label" else "text"
    distribution = spelled_labels(records, shape.labels) if shape.format == "label" else {}
    stamps = [r.timestamp for r in records if r.timestamp is not None]
    first_seen: datetime | None = min(stamps, default=None)
    last_seen: datetime | None = max(stamps, default=None)
    span_days = max(1.0, (last_seen - first_seen).total_seconds() / 86400) if first_seen and last_seen else 1.0
    tokens = [_tokens(r) for r in records]
    user_texts = [r.user_text for r in records]
    user_tokens = [estimate_tokens(text) for text in user_texts]
    lengths = [len(text) for text in user_texts]
    prices = {model: price_of(model, params.prices) for model in {r.model for r in records}}  # a few models
    used = {
        model or "(none)": {"input": price.input, "output": price.output, "price_entry": entry}
        for model, (entry, price) in prices.items()
    }
    cost = 0.0
    for record, (tokens_in, tokens_out) in zip(records, tokens, strict=True):
        price = prices[record.model][1]
        cost += (tokens_in * price.input + tokens_out * price.output) / 1e6
    consistency = _self_consistency(records, shape.format)
    answers = Counter(r.response_text for r in records)
    off_format = _off_format(answers, shape)
    return TaskCard(
        id=task_id,
        name=name,
        count=len(records),
        output_type=output_type,
        system_prompts=[p for p, _ in Counter(r.system_prompt for r in records).most_common() if p],
        labels=list(distribution),
        label_distribution=distribution,
        examples=evenly_spaced(list(dict.fromkeys(map(_shorten, dict.fromkeys(user_texts)))), _EXAMPLES),
        first_seen=first_seen,
        last_seen=last_seen,
        input_tokens=sum(t[0] for t in tokens),
        output_tokens=sum(t[1] for t in tokens),
        models=dict(Counter(r.model for r in records if r.model).most_common()),
        detected_by=detected_by,
        output_format=shape.format,
        json_schema=infer_json_schema([parse_json(a) for a in answers], list(answers.values()))
        if shape.format == "json"
        else None,
        templates=list(templates),
        calls_per_day=round(len(records) / span_days, 2),
        input_tokens_p50=_percentile([t[0] for t in tokens], 50),
        input_tokens_p95=_percentile([t[0] for t in tokens], 95),
        output_tokens_p50=_percentile([t[1] for t in tokens], 50),
        output_tokens_p95=_percentile([t[1] for t in tokens], 95),
        user_tokens_p50=_percentile(user_tokens, 50),
        user_tokens_p95=_percentile(user_tokens, 95),
        monthly_spend_usd=round(cost / span_days * DAYS_PER_MONTH, 4),
        prices=dict(sorted(used.items())),
        representative=_representative(records, lengths, shape),
        edge_cases=_edge_cases(records, lengths, shape, consistency, off_format),
        format_consistency=round(1 - sum(answers[a] for a in off_format) / len(records), 4),
        repeated_inputs=consistency.repeated_inputs,
        self_consistency=None if consistency.agreement is None else round(consistency.agreement, 4),
        inputs="image+text" if any(m.images for r in records for m in r.messages) else "text",
    )
