"""Synthesis: near-duplicates never straddle splits, and a real teacher is asked concurrently within budget."""

from __future__ import annotations

import json

from datasketch import MinHash

from stillroom import synthesize
from stillroom.config import Params, SynthesizeParams
from stillroom.data import Layout, load_splits, write_assignments, write_cards, write_jsonl
from stillroom.schema import Distillability, LogRecord, Message, TaskCard
from stillroom.synthesize import _NUM_PERM, _shingles, build_task_dataset, drop_near_duplicates
from stillroom.teachers import ReplayTeacher
from tests.fake_teacher import FakeTeacher

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def article(i: int) -> str:
    """A distinct 40-word text per i."""
    return " ".join(WORDS[(i * 7 + k * (i % 5 + 1)) % len(WORDS)] + str(i * 100 + k // 3) for k in range(40))


def record(i: int, text: str, answer: str = "yes") -> LogRecord:
    return LogRecord(
        id=f"r{i}", system_prompt="Label it.", messages=[Message(role="user", content=text)], response_text=answer
    )


def signature(text: str) -> MinHash:
    minhash = MinHash(num_perm=_NUM_PERM)
    minhash.update_batch(list(_shingles(text)))
    return minhash


def test_one_text_in_three_wordings_is_one_example():
    texts = [article(1), f"Classify this: {article(1)}", f"{article(1)}\n\nTopic?", article(2)]
    kept, dropped = drop_near_duplicates([record(i, t) for i, t in enumerate(texts)], 0.8)
    assert dropped == 2 and [r.user_text for r in kept] == [article(1), article(2)]
    assert drop_near_duplicates([record(0, article(1)), record(1, article(1))], None)[1] == 0  # off: exact only


def test_no_near_duplicate_of_a_test_input_is_in_training():
    records = []
    for i in range(120):  # each text asked in two wordings: without the dedupe, pairs would straddle splits
        records += [record(2 * i, article(i)), record(2 * i + 1, f"Please label: {article(i)}")]
    params = SynthesizeParams(near_duplicate_jaccard=0.8, min_validation_examples=0)
    card = TaskCard(id="t", name="t", count=len(records), output_type="label", labels=["yes"])
    dataset = build_task_dataset(card, records, ReplayTeacher(records), params)
    assert dataset.near_duplicates == 120
    test = [signature(r.input_text) for r in dataset.rows["test"]]
    train = [signature(r.input_text) for r in dataset.rows["train"]]
    assert test and train
    assert max(t.jaccard(r) for t in test for r in train) < 0.8


def labelled_project(tmp_path, n: int) -> Layout:
    layout = Layout(tmp_path)
    records = [record(i, f"message number {i} about {WORDS[i % len(WORDS)]}") for i in range(n)]
    card = TaskCard(
        id="task-a",
        name="label-a",
        count=n,
        output_type="label",
        labels=["yes", "no"],
        distillability=Distillability(score=1, decision="distill_now"),
    )
    write_jsonl(layout.records, records)
    write_cards(layout.cards, [card])
    write_assignments(layout.assignments, {r.id: "task-a" for r in records})
    return layout


def test_the_stage_asks_a_live_teacher_concurrently_and_stops_cleanly_at_the_budget(tmp_path):
    layout = labelled_project(tmp_path, 60)
    with FakeTeacher(lambda messages: "yes" if "1" in messages[-1]["content"] else "no", latency_s=0.02) as server:
        teacher = {"backend": "openai", "base_url": server.base_url, "max_calls": 40, "concurrency": 8}
        params = Params.model_validate({"synthesize": {"teacher": teacher, "cache": "cache"}})
        summary = synthesize.run(params, layout)
        assert len(server.requests) == 40
        task = summary["label-a"]
        assert task["teacher_calls"] == 40 and task["budget_skipped"] == 20 and task["budget_exhausted"]
        assert task["input_tokens"] == 400 and task["output_tokens"] == 80
        assert "budget spent" in summary["teacher"]["stopped"]
        # the log said "yes" everywhere; the live teacher says "yes" only where the input has a 1
        answered = [r for split in load_splits(layout, "task-a").values() for r in split]
        agreed = sum(r.target == "yes" for r in answered)
        assert task["relabel_agreement"] == round(agreed / 40, 4) < 1
        rows = load_splits(layout, "task-a")
        assert sum(len(split) for split in rows.values()) == 40  # what was answered is kept
        assert json.loads(layout.stage_metrics("synthesize").read_text())["label-a"]["teacher_calls"] == 40
        # the next run pays only for what is missing
        again = synthesize.run(params, layout)
        assert again["label-a"]["cache_hits"] == 40 and again["label-a"]["teacher_calls"] == 20
        assert len(server.requests) == 60
