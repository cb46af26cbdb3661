"""The result of detection: task cards plus where every record went."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from stillroom.detect.second_chance import FormIndex
from stillroom.schema import TaskCard


@dataclass
class Detection:
    """Task cards plus where every record went, so later stages and metrics agree."""

    cards: list[TaskCard]
    assignments: dict[str, str | None]
    passes: dict[str, int] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    skeleton_words: frozenset[str] = frozenset()  # the fixed words of skeletons, for the request matcher
    form_index: FormIndex | None = None  # each task's instruction forms, for the matcher's second chance

    def summary(self) -> dict:
        assigned = sum(task is not None for task in self.assignments.values())
        return {
            "records": len(self.assignments),
            "tasks": len(self.cards),
            "assigned": assigned,
            "unassigned": len(self.assignments) - assigned,
            "passes": dict(self.passes),
            "decisions": dict(Counter(c.distillability.decision for c in self.cards if c.distillability)),
            "by_task": {
                c.name: {
                    "count": c.count,
                    "output_type": c.output_type,
                    "output_format": c.output_format,
                    "decision": c.distillability.decision if c.distillability else None,
                }
                for c in self.cards
            },
            "history": self.history,
        }
