"""Distillability: the decision follows the card's numbers, and every factor says why."""

from __future__ import annotations

import pytest

from stillroom.config import DistillParams
from stillroom.detect.distillability import WEIGHTS, assess, break_even_days
from stillroom.schema import TaskCard

PARAMS = DistillParams()


def card(**fields) -> TaskCard:
    """A healthy label task: 600 calls at 20 a day, $3 a month, short inputs, a consistent teacher."""
    base = {
        "id": "task-1",
        "name": "classify-ticket",
        "count": 600,
        "output_type": "label",
        "output_format": "label",
        "labels": ["a", "b", "c"],
        "calls_per_day": 20.0,
        "monthly_spend_usd": 3.0,
        "user_tokens_p50": 80,
        "user_tokens_p95": 200,
        "input_tokens_p50": 150,
        "input_tokens_p95": 300,
        "output_tokens_p50": 2,
        "output_tokens_p95": 3,
        "repeated_inputs": 40,
        "self_consistency": 0.97,
    }
    return TaskCard(**(base | fields))


def test_a_healthy_label_task_is_distilled_now():
    verdict = assess(card(), PARAMS)
    assert verdict.decision == "distill_now"
    assert verdict.factors == {
        "output_space": 1.0,
        "context": 1.0,
        "volume": 1.0,
        "consistency": 0.97,
        "break_even": 1.0,
    }
    assert verdict.score == pytest.approx(1 - WEIGHTS["consistency"] * 0.03, abs=1e-3)
    assert verdict.break_even_days == pytest.approx(0.1)  # $0.01 of training against $0.10 a day
    assert verdict.reasons[0].startswith("decision distill_now")
    assert [r.split(":")[0] for r in verdict.reasons[1:]] == [
        "output space",
        "context",
        "volume",
        "consistency",
        "break even",
    ]


def test_too_few_calls_means_collect_more_and_says_how_long():
    verdict = assess(card(count=60, calls_per_day=4.0), PARAMS)
    assert verdict.decision == "collect_more"
    assert verdict.factors["volume"] == 0.0
    assert "fewer than the 100 needed" in verdict.reasons[3] and "~10 more days" in verdict.reasons[3]


def test_an_inconsistent_teacher_is_not_a_fit():
    verdict = assess(card(self_consistency=0.6), PARAMS)
    assert verdict.decision == "not_a_fit"
    assert "agrees with itself less than 80%" in verdict.reasons[0]


def test_two_inconsistent_repeats_lower_the_score_but_do_not_rule_the_task_out():
    verdict = assess(card(repeated_inputs=2, self_consistency=0.5), PARAMS)
    assert verdict.decision == "distill_now" and verdict.factors["consistency"] == 0.5
    assert "too few to rule the task out" in verdict.reasons[4]
    assert assess(card(repeated_inputs=40, self_consistency=0.5), PARAMS).decision == "not_a_fit"


def test_unknown_consistency_is_neutral():
    verdict = assess(card(repeated_inputs=0, self_consistency=None), PARAMS)
    assert verdict.factors["consistency"] == 0.75
    assert verdict.decision == "distill_now"


def test_lm_context_overflow_is_not_a_fit_but_a_long_classifier_input_is_only_cut():
    text = {"output_type": "text", "output_format": "short_text", "labels": []}
    assert assess(card(**text, input_tokens_p50=2500, input_tokens_p95=4000), PARAMS).decision == "not_a_fit"
    partly = assess(card(**text, input_tokens_p50=900, input_tokens_p95=2400), PARAMS)
    assert partly.factors["context"] == 0.6 and partly.decision == "distill_now"
    cut = assess(card(user_tokens_p50=400, user_tokens_p95=600), PARAMS)
    assert cut.factors["context"] == 0.5 and cut.decision == "distill_now"
    assert "cut to the classifier's first 256 word pieces" in cut.reasons[2]


def test_break_even_against_current_spend():
    assert break_even_days(card(monthly_spend_usd=0.3, output_type="text"), PARAMS) == pytest.approx(5.0)
    slow = assess(card(monthly_spend_usd=0.0006), PARAMS)  # $0.01 / $0.00002 a day = 500 days
    assert slow.decision == "not_a_fit" and slow.break_even_days == pytest.approx(500)
    assert "pays back only after 365 days" in slow.reasons[0]
    middling = assess(card(monthly_spend_usd=0.002), PARAMS)  # 150 days: scored down, not blocked
    assert middling.factors["break_even"] == pytest.approx(1 - 120 / 335, abs=1e-3)
    assert middling.decision == "distill_now"
    free = assess(card(monthly_spend_usd=0.0), PARAMS)
    assert free.decision == "not_a_fit" and free.break_even_days is None


def test_long_free_text_is_a_wide_output_space():
    long_text = {"output_type": "text", "output_format": "long_text", "labels": []}
    verdict = assess(card(**long_text, output_tokens_p50=300, output_tokens_p95=500), PARAMS)
    assert verdict.factors["output_space"] == 0.5
    assert assess(card(**long_text, output_tokens_p50=600, output_tokens_p95=900), PARAMS).decision == "not_a_fit"


def test_a_low_score_alone_means_collect_more():
    strict = DistillParams(distill_score=0.99)
    verdict = assess(card(self_consistency=0.9), strict)
    assert verdict.decision == "collect_more" and "below 0.99" in verdict.reasons[0]


def test_training_cost_is_needed_for_every_student_kind():
    with pytest.raises(ValueError, match=r"training_cost_usd needs an entry for \['text'\]"):
        DistillParams(training_cost_usd={"label": 0.01})
