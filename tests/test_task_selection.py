"""The flow trains only the tasks detect marked distill_now, unless only_decisions says otherwise."""

from __future__ import annotations

from stillroom import evaluate, synthesize, train
from stillroom.config import Params
from stillroom.data import Layout, write_assignments, write_cards, write_jsonl
from stillroom.schema import Distillability, LogRecord, Message, TaskCard


def project(tmp_path) -> Layout:
    """Two label tasks of 30 calls each: one worth a student now, one that needs more calls."""
    layout = Layout(tmp_path)
    records, assignments, cards = [], {}, []
    for task, decision in (("task-now", "distill_now"), ("task-later", "collect_more")):
        for i in range(30):
            record = LogRecord(
                id=f"{task}-{i}",
                system_prompt=f"Label the message for {task}.",
                messages=[Message(role="user", content=f"message {i} for {task}")],
                response_text=("yes", "no")[i % 2],
            )
            records.append(record)
            assignments[record.id] = task
        verdict = Distillability(score=0.5, decision=decision, reasons=[f"decision {decision}: test"])
        cards.append(
            TaskCard(id=task, name=task, count=30, output_type="label", labels=["yes", "no"], distillability=verdict)
        )
    write_jsonl(layout.records, records)
    write_cards(layout.cards, cards)
    write_assignments(layout.assignments, assignments)
    return layout


def test_synthesize_builds_datasets_for_distill_now_tasks_only(tmp_path):
    layout = project(tmp_path)
    summary = synthesize.run(Params(), layout)
    assert set(summary) == {"task-now", "teacher"}
    assert sorted(p.name for p in layout.datasets.iterdir()) == ["task-now"]


def test_only_decisions_can_ask_for_more(tmp_path):
    layout = project(tmp_path)
    params = Params.model_validate({"synthesize": {"only_decisions": ["distill_now", "collect_more"]}})
    synthesize.run(params, layout)
    assert sorted(p.name for p in layout.datasets.iterdir()) == ["task-later", "task-now"]


def test_later_stages_skip_tasks_without_a_dataset(tmp_path):
    layout = project(tmp_path)
    assert train.run(Params(), layout) == {}
    assert evaluate.run(Params(), layout) == {}
