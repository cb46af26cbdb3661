"""Per-example scores of a student's answer against the teacher's, by answer format.

Plain functions, shared by the bootstrap in evaluation, the routing threshold and the
champion comparison in register, so every number that gates a model
is computed one way. `agreement` is always the mean of a per-example score, which is
what makes a bootstrap interval over examples meaningful for every format.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

from stillroom.answers import fold_case_and_spacing
from stillroom.answers import parse_json as parse_any_json
from stillroom.schema import OutputFormat


def normalize_value(value: object) -> str:
    """Case and spacing do not make two extracted values different."""
    return fold_case_and_spacing(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> list[str]:
    """Lowercased word tokens with punctuation dropped: what ROUGE-L and token F1 compare."""
    return _PUNCT.sub(" ", text.lower()).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token overlap F1."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def parse_json(text: str) -> dict | list | None:
    """A JSON answer: an object or an array (`["Ann", "Bo"]`); anything else is not one."""
    value = parse_any_json(text)
    return value if isinstance(value, dict | list) else None


def json_items(answer: dict | list) -> Counter:
    """(field, value) pairs; a list contributes one pair per element, so each extracted entity counts once.

    A top-level array is scored like one field: its items are the pairs (field None), so its F1 is the
    F1 over the set of items, whatever their order, and it never matches an object's field.
    """
    items: Counter = Counter()
    for key, value in answer.items() if isinstance(answer, dict) else [(None, answer)]:
        for element in value if isinstance(value, list) else [value]:
            items[(key, normalize_value(element))] += 1
    return items


def field_counts(prediction: str, reference: str) -> tuple[int, int, int]:
    """True positives, false positives and false negatives over (field, value) pairs.

    An answer that is not a JSON object or array extracts nothing: every reference pair is missed.
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
    return float(2 * true_positive / (2 * true_positive + false_positive + false_negative))


def json_exact(prediction: str, reference: str) -> bool:
    """Every pair right and nothing extra: the same keys (an array for an array), items in any order."""
    pred, ref = parse_json(prediction), parse_json(reference)
    if pred is None or ref is None or type(pred) is not type(ref) or json_items(pred) != json_items(ref):
        return False
    return not isinstance(pred, dict) or pred.keys() == ref.keys()


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


# ------------------------------------------------------------------ metrics over a set of examples
#
# Each metric is computed from per-example arrays, so a bootstrap resample is an index array
# and the point estimate is the same function over all indices.


def schema_valid(text: str, schema: dict | None) -> bool:
    """A JSON object or array that matches the task's schema (any of them when the task has none)."""
    import jsonschema

    obj = parse_json(text)
    if obj is None:
        return False
    if not schema:
        return True
    try:
        jsonschema.validate(obj, schema)
    except (jsonschema.ValidationError, jsonschema.SchemaError):
        return False
    return True


def example_arrays(
    output_format: OutputFormat, predictions: Sequence[str], references: Sequence[str], schema: dict | None = None
) -> dict[str, np.ndarray]:
    """Per-example numbers every metric of the format is built from."""
    pairs = list(zip(predictions, references, strict=True))
    arrays: dict[str, np.ndarray] = {
        "agreement": np.array([example_agreement(output_format, p, r) for p, r in pairs], dtype=float)
    }
    if output_format == "label":
        labels = sorted({r for _, r in pairs} | {p for p, _ in pairs})
        index = {label: i for i, label in enumerate(labels)}
        arrays["pred"] = np.array([index[p] for p, _ in pairs], dtype=int)
        arrays["ref"] = np.array([index[r] for _, r in pairs], dtype=int)
        arrays["labels"] = np.array(labels, dtype=object)
    elif output_format == "json":
        counts = np.array([field_counts(p, r) for p, r in pairs], dtype=float).reshape(-1, 3)
        arrays["tp"], arrays["fp"], arrays["fn"] = counts[:, 0], counts[:, 1], counts[:, 2]
        arrays["exact"] = np.array([json_exact(p, r) for p, r in pairs], dtype=float)
        arrays["valid"] = np.array([schema_valid(p, schema) for p, _ in pairs], dtype=float)
    else:
        arrays["exact"] = np.array([normalize(p) == normalize(r) for p, r in pairs], dtype=float)
        arrays["token_f1"] = np.array([token_f1(p, r) for p, r in pairs], dtype=float)
    return arrays


def _label_f1(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    true_positive = float(np.sum((pred == label) & (ref == label)))
    return f1_from_counts(
        true_positive, float(np.sum(pred == label)) - true_positive, float(np.sum(ref == label)) - true_positive
    )


def aggregate(output_format: OutputFormat, arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    """The format's metrics over the examples at `idx` (all of them, or a bootstrap resample)."""
    if len(idx) == 0:
        return {"agreement": 0.0}
    out = {"agreement": float(arrays["agreement"][idx].mean())}
    if output_format == "label":
        pred, ref = arrays["pred"][idx], arrays["ref"][idx]
        out["accuracy"] = out["agreement"]
        present = np.unique(ref)  # macro-F1 over the teacher's labels, as sklearn does with labels=refs
        out["macro_f1"] = float(np.mean([_label_f1(pred, ref, label) for label in present]))
    elif output_format == "json":
        out["field_f1_mean"] = out["agreement"]
        out["field_f1"] = f1_from_counts(arrays["tp"][idx].sum(), arrays["fp"][idx].sum(), arrays["fn"][idx].sum())
        out["exact_match"] = float(arrays["exact"][idx].mean())
        out["schema_validity"] = float(arrays["valid"][idx].mean())
    else:
        out["rouge_l"] = out["agreement"]
        out["exact_match"] = float(arrays["exact"][idx].mean())
        out["token_f1"] = float(arrays["token_f1"][idx].mean())
    return out


def per_label_f1(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    pred, ref = arrays["pred"], arrays["ref"]
    return {str(name): _label_f1(pred, ref, i) for i, name in enumerate(arrays["labels"]) if np.any(ref == i)}


def with_intervals(
    output_format: OutputFormat, arrays: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Every metric with a 95% interval, as `<name>`, `<name>_low`, `<name>_high`.

    The agreement (and its aliases) gets the interval suited to it: Wilson for a proportion of
    right labels, BCa for a mean score. The other metrics (macro-F1, pooled field F1) are not
    means over examples, so they keep the percentile bootstrap of the whole computation.
    """
    n = len(arrays["agreement"])
    point = aggregate(output_format, arrays, np.arange(n))
    if n == 0:
        return {**point, **{f"{k}_low": 0.0 for k in point}, **{f"{k}_high": 0.0 for k in point}}
    rng = np.random.default_rng(seed)
    draws = [aggregate(output_format, arrays, rng.integers(0, n, size=n)) for _ in range(resamples)]
    out = dict(point)
    for name in point:
        low, high = np.percentile([draw[name] for draw in draws], [2.5, 97.5])
        out[f"{name}_low"], out[f"{name}_high"] = float(low), float(high)
    low, high = agreement_interval(output_format, arrays["agreement"], resamples, seed)
    for name in ("agreement", "accuracy", "field_f1_mean", "rouge_l"):  # the names `aggregate` gives the agreement
        if name in point:
            out[f"{name}_low"], out[f"{name}_high"] = low, high
    return out


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest at the edges (all agree, or few answers),
    where the bootstrap collapses to [1, 1] and the normal interval leaves [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_mean_interval(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% BCa bootstrap interval of a mean of scores in [0, 1] (ROUGE-L, field F1).

    When every score is the same (18 of 18 perfect), the bootstrap has nothing to resample and
    would claim [1, 1]; the Wilson interval of the summed scores is used instead. It is
    conservative for any score in [0, 1], whose variance is at most that of a coin with that mean.
    """
    scores = np.asarray(values, dtype=float)
    if len(scores) == 0:
        return 0.0, 1.0
    if len(scores) < 3 or np.ptp(scores) == 0:
        return wilson_interval(float(scores.sum()), len(scores))
    result = stats.bootstrap(
        (scores,), np.mean, n_resamples=resamples, method="BCa", random_state=np.random.default_rng(seed)
    )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return wilson_interval(float(scores.sum()), len(scores))
    return float(max(0.0, low)), float(min(1.0, high))


def agreement_interval(
    output_format: OutputFormat, agreement: Sequence[float], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """The interval of a mean agreement: Wilson for labels (each answer agrees or not), BCa otherwise."""
    if output_format == "label":
        return wilson_interval(float(np.sum(agreement)), len(agreement))
    return bootstrap_mean_interval(agreement, resamples, seed)


def calibration_bins(
    confidence: Sequence[float], agreement: Sequence[float], bins: int = 10
) -> list[tuple[float, float, float, int]]:
    """(bin centre, mean confidence, mean agreement, answers) for each non-empty confidence bin."""
    conf, agree = np.asarray(confidence, dtype=float), np.asarray(agreement, dtype=float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(((b + 0.5) / bins, float(conf[mask].mean()), float(agree[mask].mean()), int(mask.sum())))
    return out


def expected_calibration_error(confidence: Sequence[float], agreement: Sequence[float], bins: int = 10) -> float:
    """Mean gap between confidence and agreement over the bins, weighted by how many answers each holds."""
    n = len(confidence)
    return float(sum(abs(c - a) * k / n for _, c, a, k in calibration_bins(confidence, agreement, bins)))
