"""Task ids across runs: matched by the calls tasks share; merges and splits written down."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from stillroom.detect.detection import Detection
from stillroom.detect.history import append_history, reconcile
from stillroom.schema import TaskCard


def cards(*ids: str) -> list[TaskCard]:
    # the order given is the age: earlier ids were seen first
    return [
        TaskCard(id=i, name=i, count=1, output_type="text", first_seen=datetime(2026, 9, 1 + n, tzinfo=UTC))
        for n, i in enumerate(ids)
    ]


def assign(**ranges: range) -> dict[str, str | None]:
    """task id -> the record numbers it holds; "none" holds the unassigned ones."""
    return {f"r{n}": (None if task == "none" else task) for task, numbers in ranges.items() for n in numbers}


def detection(ids: list[str], assignments: dict[str, str | None]) -> Detection:
    return Detection(cards=cards(*ids), assignments=assignments)


def test_same_tasks_same_ids_nothing_to_record():
    before = assign(a=range(0, 50), b=range(50, 80), none=range(80, 100))
    now = reconcile(detection(["a", "b"], before), cards("a", "b"), before)
    assert now.assignments == before and now.history == []


def test_a_task_found_another_way_keeps_its_id():
    before = assign(a=range(0, 50), none=range(50, 60))
    after = assign(x=range(0, 48), none=range(48, 60))  # same task; its content id changed
    now = reconcile(detection(["x"], after), cards("a"), before)
    assert [c.id for c in now.cards] == ["a"]
    assert set(now.assignments.values()) == {"a", None} and now.history == []


def test_merge_keeps_the_bigger_older_id_and_records_it():
    before = assign(a=range(0, 40), b=range(40, 70))
    now = reconcile(detection(["m"], assign(m=range(0, 70))), cards("a", "b"), before)
    assert [c.id for c in now.cards] == ["a"]
    assert now.history == [{"event": "merged", "from": ["a", "b"], "to": ["a"]}]


def test_split_records_where_the_calls_went():
    before = assign(a=range(0, 100))
    now = reconcile(detection(["x", "y"], assign(x=range(0, 70), y=range(70, 100))), cards("a"), before)
    assert sorted(c.id for c in now.cards) == ["a", "y"]  # the part holding most of it keeps the id
    assert now.history == [{"event": "split", "from": ["a"], "to": ["a", "y"]}]


def test_new_and_retired_tasks():
    before = assign(a=range(0, 40), none=range(40, 80))
    after = assign(none=range(0, 40), n=range(40, 80))  # a's calls now look like one-offs; a new task
    now = reconcile(detection(["n"], after), cards("a"), before)
    assert now.history == [
        {"event": "retired", "from": ["a"], "to": []},
        {"event": "new", "from": [], "to": ["n"]},
    ]


def test_calls_no_longer_in_the_log_do_not_count():
    before = assign(a=range(0, 40), b=range(40, 80))
    after = assign(b=range(40, 80))  # the log was rotated: a's calls are gone, not moved
    now = reconcile(detection(["b"], after), cards("a", "b"), before)
    assert now.history == [{"event": "retired", "from": ["a"], "to": []}]


def test_history_file_grows_only_when_something_changed(tmp_path):
    path = tmp_path / "history.json"
    append_history(path, [], "2026-10-01")
    assert not path.exists()
    event = {"event": "merged", "from": ["a", "b"], "to": ["a"]}
    append_history(path, [event], "2026-10-01")
    append_history(path, [{"event": "new", "from": [], "to": ["c"]}], "2026-11-01")
    history = json.loads(path.read_text())
    assert [entry["records_through"] for entry in history] == ["2026-10-01", "2026-11-01"]
    assert history[0]["ids"] == {"a": ["a"], "b": ["a"]} and history[0]["events"] == [event]
