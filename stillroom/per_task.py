"""Stages that work task by task (train, evaluate, register): the loop the CLI and `dvc repro` run,
and the pieces the flow maps over tasks on its task runner (local threads, Dask, Ray).

Such a stage module defines three functions:

- `task_cards(params, layout) -> list[TaskCard]`: the tasks it can work on now;
- `run_task(params, layout, card) -> dict`: one task's work, written under that task's folders;
- `finish(params, layout, results) -> dict`: the stage summary from `{task name: result}`, merged
  with the last run's so that tasks this run did not touch keep their entries.

It may also define `prepare(params, layout)`, run once before the tasks (register creates the
MLflow store there, so workers in several processes never race to migrate it).

A task that fails is a `{"failed": reason}` result: the others still finish. The loop then raises
`TaskFailures`, so a script or `dvc repro` sees a non-zero exit and DVC records nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from types import ModuleType

from tqdm.auto import tqdm

from stillroom.config import Params
from stillroom.data import Layout, read_json, write_json
from stillroom.schema import TaskCard

FAILED = "failed"


class TaskFailures(RuntimeError):
    """Some tasks failed; the rest of the stage's work was done and written."""

    def __init__(self, stage: str, failures: dict[str, str]):
        self.failures = failures
        listed = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        super().__init__(f"{stage}: {len(failures)} task(s) failed ({listed})")


def failure(error: BaseException) -> dict:
    return {FAILED: f"{type(error).__name__}: {error}"[:2000]}


def failures(results: dict[str, dict]) -> dict[str, str]:
    return {name: result[FAILED] for name, result in results.items() if FAILED in result}


def select(cards: Sequence[TaskCard], only: Collection[str] | None) -> list[TaskCard]:
    """The cards named (by name or id) in `only`; all of them when `only` is None."""
    if only is None:
        return list(cards)
    return [card for card in cards if card.name in only or card.id in only]


def merge_summary(path: Path, cards: Sequence[TaskCard], results: dict[str, dict]) -> dict:
    """This run's results over the last summary; tasks that no longer exist are dropped."""
    names = {card.name for card in cards}
    summary = {name: entry for name, entry in read_json(path).items() if name in names}
    summary.update(results)
    write_json(path, summary)
    return summary


def prepare(module: ModuleType, params: Params, layout: Layout) -> None:
    if hasattr(module, "prepare"):
        module.prepare(params, layout)


def run_each(stage: str, module: ModuleType, params: Params, layout: Layout, only: Collection[str] | None = None):
    """Every task of the stage in turn (the CLI and DVC path); the flow maps `run_task` instead."""
    prepare(module, params, layout)
    results: dict[str, dict] = {}
    for card in tqdm(select(module.task_cards(params, layout), only), desc=stage, unit="task"):
        try:
            results[card.name] = module.run_task(params, layout, card)
        except Exception as error:  # one broken task must not lose the others' work
            results[card.name] = failure(error)
    summary = module.finish(params, layout, results)
    if failed := failures(results):
        raise TaskFailures(stage, failed)
    return summary
