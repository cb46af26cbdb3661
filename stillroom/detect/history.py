"""Task ids across detect runs: a task keeps its id, merges and splits are written down.

Ids are hashes of what founded a task, which survives re-runs and appended logs; but when
new calls change how a task was found (a template that became common, a small group that
grew into its own), the hash changes though the task did not. Matching the new tasks to the
previous run's by the calls they share keeps such a task's id, and a user whose dashboards
name a task id learns from data/tasks/history.json where a merged or split task went.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from stillroom.data import write_json
from stillroom.detect.detection import Detection
from stillroom.schema import TaskCard

# A task whose calls went this share or more to another task is said to have gone there.
_PART = 0.2


def _members(assignments: dict[str, str | None], present: set[str]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for record, task in assignments.items():
        if task is not None and record in present:
            members.setdefault(task, set()).add(record)
    return members


def _majority(counts: Counter[str], total: int) -> str | None:
    """The key holding more than half of `total`, if any."""
    if not counts:
        return None
    key, n = counts.most_common(1)[0]
    return key if 2 * n > total else None


def reconcile(
    detection: Detection, previous_cards: list[TaskCard], previous_assignments: dict[str, str | None]
) -> Detection:
    """`detection` with each new task that is an old task under the old task's id, and the
    changes since the previous run (merged, split, renamed, retired, new) as events."""
    present = set(detection.assignments)
    old = _members(previous_assignments, present)
    new = _members(detection.assignments, present)
    old_ids = {card.id for card in previous_cards}
    overlap: dict[str, Counter[str]] = {o: Counter() for o in old}  # old id -> new id -> shared calls
    for o, records in old.items():
        overlap[o].update(t for r in records if (t := detection.assignments[r]) is not None)

    # An old task that gave a new one most of the new one's old calls, and sent it most of
    # its own, is the same task: the new one takes its id. Of two merged tasks, the one that
    # gave more calls (then the older one) lends its id.
    age = {card.id: (card.first_seen.timestamp() if card.first_seen else float("-inf")) for card in previous_cards}
    rename: dict[str, str] = {}
    for n in sorted(new.keys() - old_ids):
        sources = [o for o in old if overlap[o][n] and o not in new and o not in rename.values()]
        ranked = sorted(sources, key=lambda o: (-overlap[o][n], age.get(o, float("inf")), o))
        o = next((o for o in ranked if _majority(overlap[o], len(old[o])) == n), None)
        if o is not None:
            rename[n] = o

    cards = [card.model_copy(update={"id": rename.get(card.id, card.id)}) for card in detection.cards]
    assignments = {r: rename.get(t, t) if t is not None else None for r, t in detection.assignments.items()}
    went = {o: Counter({rename.get(n, n): k for n, k in overlap[o].items()}) for o in old}
    new_ids = {card.id for card in cards}

    events = []
    merged_into: dict[str, list[str]] = {}
    for o in sorted(old):
        target = _majority(went[o], len(old[o]))
        if target is not None and target != o:
            merged_into.setdefault(target, []).append(o)
    for target, sources in sorted(merged_into.items()):
        if target in old_ids or len(sources) > 1:
            events.append({"event": "merged", "from": sorted({target} & old_ids) + sources, "to": [target]})
        else:
            events.append({"event": "renamed", "from": sources, "to": [target]})
    for o in sorted(old):
        parts = sorted(n for n, k in went[o].items() if k >= _PART * len(old[o]))
        if len(parts) > 1:
            events.append({"event": "split", "from": [o], "to": parts})
    accounted = {i for event in events for i in event["from"] + event["to"]}
    for o in sorted(old_ids - new_ids - accounted):
        events.append({"event": "retired", "from": [o], "to": []})
    for n in sorted(new_ids - old_ids - accounted):
        events.append({"event": "new", "from": [], "to": [n]})
    forms = detection.form_index
    if forms is not None:
        forms = replace(forms, owners=[rename.get(o, o) for o in forms.owners])
    return replace(detection, cards=cards, assignments=assignments, history=events, form_index=forms)


def append_history(path: Path, events: list[dict], records_through: str | None) -> None:
    """Add this run's events to the file, unless nothing changed (a re-run on the same logs)."""
    if not events:
        return
    history = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    ids = {i: event["to"] for event in events for i in event["from"]}
    history.append({"records_through": records_through, "ids": ids, "events": events})
    write_json(path, history)
