"""Is a task worth a student now? A score, a decision and the reasons, from its card.

Training a student costs CPU time and a person's attention, so the flow trains only tasks
that clear every bar: an output space a small model can cover, inputs that fit what the
student reads, enough calls to train and test on, a teacher that agrees with itself, and a
spend that pays the training back. The reasons are spelled out so a person can overrule
the decision knowingly (`synthesize.only_decisions`).
"""

from __future__ import annotations

import math

from stillroom.answers import DAYS_PER_MONTH
from stillroom.config import DistillParams
from stillroom.metrics.scoring import wilson_interval
from stillroom.schema import Distillability, TaskCard

# How much each factor weighs in the score; the decision also has hard bars (see assess).
WEIGHTS = {"output_space": 0.25, "context": 0.2, "volume": 0.2, "consistency": 0.15, "break_even": 0.2}
# A closed label set is the easiest thing to distil; free text the hardest.
_FORMAT_SCORE = {"label": 1.0, "json": 0.9, "short_text": 0.8, "long_text": 0.5}
# When no input was answered twice the teacher's consistency is unknown: neither good nor bad.
_UNKNOWN_CONSISTENCY = 0.75
# Break-even within this many days counts fully; it scores less up to max_break_even_days.
_QUICK_PAYBACK_DAYS = 30


def _output_space(card: TaskCard, params: DistillParams) -> tuple[float, str, str | None]:
    fmt = card.answer_format
    share = f"{card.format_consistency:.0%} of answers in that format"
    score = _FORMAT_SCORE[fmt] * card.format_consistency
    if fmt == "label":
        return score, f"closed set of {len(card.labels)} labels ({share}): a classifier covers it", None
    if fmt == "json":
        schema = card.json_schema or {}
        if schema.get("type") == "array":
            items = (schema.get("items") or {}).get("type", "any")
            return score, f"JSON arrays of {items} ({share}): the LM student learns one schema", None
        keys = ", ".join(schema.get("properties", {})) or "-"
        return score, f"JSON with keys {keys} ({share}): the LM student learns one schema", None
    if fmt == "short_text":
        return score, f"short free text (median {card.output_tokens_p50} tokens): harder to match exactly", None
    reason = f"long free text (median {card.output_tokens_p50} tokens): the widest output space"
    if card.output_tokens_p50 > params.max_long_text_tokens:
        return score, reason, f"answers are longer than {params.max_long_text_tokens} tokens for a small student"
    return score, reason, None


def _context(card: TaskCard, params: DistillParams) -> tuple[float, str, str | None]:
    """The classifier reads the user turn's first N word pieces, so long inputs are cut but
    still classified; the LM must fit prompt and answer in its context or it cannot answer."""
    if card.output_type == "label":
        limit, p50, p95 = params.classifier_max_tokens, card.user_tokens_p50, card.user_tokens_p95
        if p95 <= limit:
            return 1.0, f"user turns (p95 {p95} tokens) fit the classifier's {limit} word pieces", None
        if p50 <= limit:
            return 0.75, f"most user turns fit the classifier's {limit} word pieces (p95 {p95}: longest cut)", None
        return 0.5, f"most user turns (p50 {p50} tokens) are cut to the classifier's first {limit} word pieces", None
    limit = params.lm_context_tokens
    p50 = card.input_tokens_p50 + card.output_tokens_p50
    p95 = card.input_tokens_p95 + card.output_tokens_p95
    if p95 <= limit:
        return 1.0, f"prompt and answer (p95 {p95} tokens) fit the LM's {limit}-token context", None
    if p50 <= limit:
        return 0.6, f"most calls fit the LM's {limit}-token context, the longest 5% (p95 {p95}) do not", None
    reason = f"a typical call (p50 {p50} tokens) overflows the LM's {limit}-token context"
    return 0.0, reason, "inputs do not fit the student's context"


def _volume(card: TaskCard, params: DistillParams) -> tuple[float, str, str | None]:
    rate = f"{card.count} calls, {card.calls_per_day:g} a day"
    if card.count < params.min_records:
        days = math.ceil((params.min_records - card.count) / card.calls_per_day) if card.calls_per_day else None
        wait = f"; ~{days} more days at this rate" if days is not None else ""
        return 0.0, f"{rate}: fewer than the {params.min_records} needed to train and test{wait}", "too few calls"
    spread = math.log(params.target_records / params.min_records) if params.target_records > params.min_records else 1
    score = min(1.0, 0.5 + 0.5 * math.log(card.count / params.min_records) / spread)
    return score, f"{rate}: enough to train and hold out a test split", None


def _consistency(card: TaskCard, params: DistillParams) -> tuple[float, str, str | None]:
    if card.self_consistency is None:
        return _UNKNOWN_CONSISTENCY, "no input was answered twice, so the teacher's consistency is unknown", None
    reason = (
        f"the teacher gave its most common answer {card.self_consistency:.0%} of the time "
        f"on {card.repeated_inputs} repeated inputs"
    )
    # A veto needs evidence: two inputs asked twice say little, so the share's 95% upper bound (Wilson,
    # over the repeated inputs) must be under the minimum; below it on few inputs only lowers the score.
    upper = wilson_interval(card.self_consistency * card.repeated_inputs, card.repeated_inputs)[1]
    if upper < params.min_consistency:
        return card.self_consistency, reason, f"the teacher agrees with itself less than {params.min_consistency:.0%}"
    if card.self_consistency < params.min_consistency:
        reason += f" (too few to rule the task out: up to {upper:.0%} is possible)"
    return card.self_consistency, reason, None


def break_even_days(card: TaskCard, params: DistillParams) -> float | None:
    """Days of the task's current spend that pay for training its student; None if it costs nothing."""
    daily = card.monthly_spend_usd / DAYS_PER_MONTH
    return params.training_cost_usd[card.output_type] / daily if daily > 0 else None


def _break_even(card: TaskCard, params: DistillParams) -> tuple[float, str, str | None]:
    cost = params.training_cost_usd[card.output_type]
    days = break_even_days(card, params)
    spend = f"${card.monthly_spend_usd:.4g}/month now, training ~${cost:g}"
    if days is None:
        return 0.0, f"{spend}: the calls cost nothing, so a student saves nothing", "no spend to save"
    reason = f"{spend}: pays back in {days:.0f} days"
    if days > params.max_break_even_days:
        return 0.0, reason, f"pays back only after {params.max_break_even_days:g} days"
    if days <= _QUICK_PAYBACK_DAYS:
        return 1.0, reason, None
    return 1 - (days - _QUICK_PAYBACK_DAYS) / max(params.max_break_even_days - _QUICK_PAYBACK_DAYS, 1), reason, None


_FACTORS = {
    "output_space": _output_space,
    "context": _context,
    "volume": _volume,
    "consistency": _consistency,
    "break_even": _break_even,
}


def assess(card: TaskCard, params: DistillParams) -> Distillability:
    """not_a_fit when something a student cannot overcome stands in the way, collect_more
    when only volume is missing or the score is low, else distill_now."""
    factors, reasons, blockers = {}, [], {}
    for name, factor in _FACTORS.items():
        score, reason, blocker = factor(card, params)
        factors[name] = round(score, 3)
        reasons.append(f"{name.replace('_', ' ')}: {reason}")
        if blocker:
            blockers[name] = blocker
    score = round(sum(WEIGHTS[name] * factors[name] for name in WEIGHTS), 3)
    unfit = {name: why for name, why in blockers.items() if name != "volume"}
    if unfit:
        decision, why = "not_a_fit", "; ".join(unfit.values())
    elif blockers:
        decision, why = "collect_more", blockers["volume"]
    elif score < params.distill_score:
        decision, why = "collect_more", f"score {score:.2f} is below {params.distill_score:g}"
    else:
        decision, why = "distill_now", f"score {score:.2f} ≥ {params.distill_score:g} and nothing stands in the way"
    days = break_even_days(card, params)
    return Distillability(
        score=score,
        decision=decision,
        reasons=[f"decision {decision}: {why}", *reasons],
        factors=factors,
        break_even_days=None if days is None else round(days, 1),
    )
