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


def generating_teacher(messages: list[dict]) -> str:
    """Writes new inputs when asked to (steered to the label asked for), and labels inputs by their words."""
    text = messages[-1]["content"]
    if "JSON array" in text:
        count = next(n for n in range(20, 0, -1) if f"Write {n} new inputs" in text)
        label = "rare" if '"rare"' in text else "common"
        seed = sum(map(ord, text)) % 997
        items = [
            f"{label} generated input {seed} {k} {WORDS[k % len(WORDS)]} {WORDS[(k * 3) % len(WORDS)]}"
            for k in range(count)
        ]
        items[0] = items[1]  # one near-duplicate to turn away
        items[-1] = "nonsense that no label fits"
        return json.dumps(items)
    if "nonsense" in text:
        return "maybe"
    return "rare" if "rare" in text else "common"


def augmenting_params(server: FakeTeacher, **augment) -> Params:
    teacher = {"backend": "openai", "base_url": server.base_url}
    settings = {"enabled": True, "min_per_label": 20, "min_records": 30, "inputs_per_request": 10} | augment
    return Params.model_validate(
        {"synthesize": {"teacher": teacher, "cache": "cache", "augment": settings, "min_validation_examples": 0}}
    )


def test_rare_labels_get_generated_training_inputs_and_test_stays_real(tmp_path):
    layout = Layout(tmp_path)
    texts = [(f"rare event {i} {article(i)}", "rare") for i in range(6)] + [
        (f"common thing {i} {article(i + 50)}", "common") for i in range(60)
    ]
    records = [record(i, text, answer) for i, (text, answer) in enumerate(texts)]
    card = TaskCard(
        id="task-r",
        name="rare-or-common",
        count=len(records),
        output_type="label",
        labels=["rare", "common"],
        distillability=Distillability(score=1, decision="distill_now"),
    )
    write_jsonl(layout.records, records)
    write_cards(layout.cards, [card])
    write_assignments(layout.assignments, {r.id: card.id for r in records})
    with FakeTeacher(generating_teacher) as server:
        summary = synthesize.run(augmenting_params(server), layout)["rare-or-common"]
    rows = load_splits(layout, "task-r")
    generated = [r for r in rows["train"] if r.source == "generated"]
    assert generated and all(r.target == "rare" for r in generated)
    assert summary["generated_train"] == len(generated)
    assert summary["generated_rejected"]["near_duplicate"] >= 1 and summary["generated_rejected"]["off_label"] >= 1
    assert sum(r.target == "rare" for r in rows["train"]) == 20  # rejected inputs were made up for
    assert all(r.source != "generated" for r in rows["test"] + rows["validation"])


def test_a_small_task_filled_up_by_augmentation_goes_on_to_training(tmp_path):
    layout = labelled_project(tmp_path, 12)
    cards = [
        card.model_copy(update={"distillability": Distillability(score=0.4, decision="collect_more")})
        for card in [TaskCard(id="task-a", name="label-a", count=12, output_type="label", labels=["rare", "common"])]
    ]
    write_cards(layout.cards, cards)
    with FakeTeacher(generating_teacher) as server:
        too_little = synthesize.run(augmenting_params(server, min_records=1000, max_generated_per_task=5), layout)
        assert "collect_more" in too_little["label-a"]["decision"] and not layout.datasets.joinpath("task-a").exists()
        enough = synthesize.run(augmenting_params(server, min_per_label=1, min_records=24), layout)
    assert enough["label-a"]["decision"].startswith("distill_now after augmentation")
    assert enough["label-a"]["real_train"] + enough["label-a"]["generated_train"] >= 24
    assert layout.dataset("task-a", "train").exists()
