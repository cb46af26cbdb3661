"""Per-example scores of a student's answer against the teacher's, by answer format.

Plain functions, shared by the `evaluate` modules beside this file, the bootstrap in
evaluation and the champion comparison in register, so every number that gates a model
is computed one way. `agreement` is always the mean of a per-example score, which is
what makes a bootstrap interval over examples meaningful for every format.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from stillroom.metrics.text_agreement import normalize
from stillroom.schema import OutputFormat

_SPACE = re.compile(r"\s+")


def normalize_value(value: object) -> str:
    """Case and spacing do not make two extracted values different."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return _SPACE.sub(" ", text).strip().casefold()


def parse_json(text: str) -> dict | None:
    """The answer as a JSON object, or None when it is not one."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def json_items(obj: dict) -> Counter:
    """(field, value) pairs; a list contributes one pair per element, so each extracted entity counts once."""
    items: Counter = Counter()
    for key, value in obj.items():
        for element in value if isinstance(value, list) else [value]:
            items[(key, normalize_value(element))] += 1
    return items


def field_counts(prediction: str, reference: str) -> tuple[int, int, int]:
    """True positives, false positives and false negatives over (field, value) pairs.

    An answer that is not a JSON object extracts nothing: every reference pair is missed.
    """
    ref = parse_json(reference)
    pred = parse_json(prediction)
    ref_items = json_items(ref) if ref is not None else Counter()
    pred_items = json_items(pred) if pred is not None else Counter()
    true_positive = sum((ref_items & pred_items).values())
    return true_positive, sum(pred_items.values()) - true_positive, sum(ref_items.values()) - true_positive


def f1_from_counts(true_positive: float, false_positive: float, false_negative: float) -> float:
    if true_positive == 0:
        return 1.0 if false_positive == 0 and false_negative == 0 else 0.0
    return 2 * true_positive / (2 * true_positive + false_positive + false_negative)


def json_exact(prediction: str, reference: str) -> bool:
    pred, ref = parse_json(prediction), parse_json(reference)
    return pred is not None and ref is not None and json_items(pred) == json_items(ref) and pred.keys() == ref.keys()


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on lowercased word tokens (punctuation dropped), as rouge_score computes it unstemmed."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred and not ref:
        return 1.0
    common = _lcs(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def example_agreement(output_format: OutputFormat, prediction: str, reference: str) -> float:
    """How much one answer agrees with the teacher's, in [0, 1]: the score gates and routing are built on."""
    if output_format == "label":
        return float(prediction == reference)
    if output_format == "json":
        return f1_from_counts(*field_counts(prediction, reference))
    return rouge_l(prediction, reference)


def per_example_agreement(
    output_format: OutputFormat, predictions: Sequence[str], references: Sequence[str]
) -> list[float]:
    return [example_agreement(output_format, p, r) for p, r in zip(predictions, references, strict=True)]


AGREEMENT_NAME = {"label": "accuracy", "json": "mean field F1", "short_text": "ROUGE-L", "long_text": "ROUGE-L"}
