"""Build each task's train/validation/test sets from the teacher's answers.

The logged pairs come first: each distinct input once, answered by the teacher
(`replay` gives the logged answer back). A row's split is a hash of its input, so the
test split stays held out from training on every re-run and as new logs arrive.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from stillroom.answers import normalize_label, parse_json
from stillroom.config import Params, SynthesizeParams
from stillroom.data import (
    Layout,
    group_records,
    read_assignments,
    read_cards,
    read_jsonl,
    write_json,
    write_jsonl,
)
from stillroom.schema import DatasetRow, LogRecord, Split, TaskCard, stable_id
from stillroom.teachers import Teacher, TeacherAnswer, TeacherError, TeacherRequest, make_teacher, request_key

# MinHash permutations: enough for a stable Jaccard estimate around the usual 0.8-0.9 thresholds.
_NUM_PERM = 128


@dataclass
class TaskDataset:
    task_id: str
    rows: dict[Split, list[DatasetRow]] = field(default_factory=lambda: {"train": [], "validation": [], "test": []})
    duplicates: int = 0
    near_duplicates: int = 0
    relabelled: int = 0
    relabel_agreed: int = 0
    off_label: int = 0
    teacher_failures: int = 0
    budget_skipped: int = 0
    teacher_calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    validation_fraction: float = 0.0

    def count(self, outcome: TeacherAnswer) -> None:
        """What one teacher answer cost this task (a cached one costs nothing)."""
        self.budget_skipped += outcome.budget
        self.teacher_failures += outcome.text is None and not outcome.budget
        self.cache_hits += outcome.cached
        if outcome.text is not None and not outcome.cached:
            self.teacher_calls += 1
            self.input_tokens += outcome.input_tokens
            self.output_tokens += outcome.output_tokens
            self.cost_usd += outcome.cost_usd

    def summary(self) -> dict:
        return {
            **{split: len(rows) for split, rows in self.rows.items()},
            "duplicate_inputs": self.duplicates,
            "near_duplicate_inputs": self.near_duplicates,
            "off_label_answers": self.off_label,
            "teacher_failures": self.teacher_failures,
            "budget_exhausted": self.budget_skipped > 0,
            "budget_skipped": self.budget_skipped,
            "teacher_calls": self.teacher_calls,
            "cache_hits": self.cache_hits,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "validation_fraction": round(self.validation_fraction, 4),
            # the teacher asked again agrees with the logged answer this often: a consistency signal for the card
            "relabel_agreement": round(self.relabel_agreed / self.relabelled, 4) if self.relabelled else None,
        }


def split_of(input_text: str, params: SynthesizeParams, validation_fraction: float | None = None) -> Split:
    """Deterministic from the input alone: the same input always lands in the same split.

    The test range of the hash comes first and never moves; a wider validation split
    only takes inputs that would otherwise have been training rows.
    """
    bucket = int(hashlib.sha256(input_text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if validation_fraction is None:
        validation_fraction = params.validation_fraction
    if bucket < params.test_fraction:
        return "test"
    if bucket < params.test_fraction + validation_fraction:
        return "validation"
    return "train"


def widened_validation(n_inputs: int, params: SynthesizeParams) -> float:
    """The validation fraction that yields about `min_validation_examples` rows, within the cap.

    Routing thresholds are picked on the validation split; a few dozen rows make them jump.
    """
    if n_inputs == 0 or params.min_validation_examples == 0:
        return params.validation_fraction
    wanted = params.min_validation_examples / n_inputs
    cap = min(params.max_validation_fraction, 1 - params.test_fraction - 0.05)
    return max(params.validation_fraction, min(wanted, cap))


def _label_lookup(card: TaskCard) -> Callable[[str], str | None]:
    canonical = {normalize_label(label): label for label in card.labels}
    return lambda answer: canonical.get(normalize_label(answer))


def _same_answer(answer: str, logged: str, card: TaskCard) -> bool:
    """Labels by spelling-folded label, JSON by value, text by folded text."""
    if card.answer_format == "json":
        parsed = parse_json(answer)
        return parsed is not None and parsed == parse_json(logged)
    return normalize_label(answer) == normalize_label(logged)


def _shingles(text: str) -> set[bytes]:
    """Word 3-grams of the folded text (the words themselves for a very short text)."""
    words = text.casefold().split()
    grams = [" ".join(words[i : i + 3]) for i in range(len(words) - 2)] or words or [""]
    return {gram.encode() for gram in grams}


def drop_near_duplicates(records: Sequence[LogRecord], threshold: float | None) -> tuple[list[LogRecord], int]:
    """The records whose user turn is not a near-duplicate (MinHash Jaccard >= threshold) of an earlier one's.

    One article asked in three wordings is one example: kept three times, it would sit in
    train and test at once and make the test split easy.
    """
    if threshold is None or len(records) < 2:
        return list(records), 0
    from datasketch import MinHash, MinHashLSH

    index = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM)
    kept = []
    for i, record in enumerate(records):
        signature = MinHash(num_perm=_NUM_PERM)
        signature.update_batch(list(_shingles(record.user_text)))
        if index.query(signature):
            continue
        index.insert(str(i), signature)
        kept.append(record)
    return kept, len(records) - len(kept)


def build_task_dataset(
    card: TaskCard,
    records: Sequence[LogRecord],
    teacher: Teacher,
    params: SynthesizeParams,
    max_failures: float = 0.2,
    progress: bool = False,
) -> TaskDataset:
    """One row per distinct input (near-duplicates dropped); the teacher's answer is the target."""
    dataset = TaskDataset(task_id=card.id)
    by_input: dict[str, LogRecord] = {}
    for record in records:
        key = request_key("", record.prompt(), record.response_format)
        if key in by_input:
            dataset.duplicates += 1
        by_input[key] = record
    unique = sorted(by_input.values(), key=lambda r: r.id)
    random.Random(params.seed).shuffle(unique)
    unique, dataset.near_duplicates = drop_near_duplicates(unique, params.near_duplicate_jaccard)
    unique = unique[: params.max_examples]
    dataset.validation_fraction = widened_validation(len(unique), params)

    requests = [TeacherRequest(record.prompt(), record.response_format) for record in unique]
    outcomes = teacher.answer_many(requests, progress=progress)
    to_label = _label_lookup(card) if card.output_type == "label" else None
    for record, request, outcome in zip(unique, requests, outcomes, strict=True):
        dataset.count(outcome)
        if outcome.text is None:
            continue
        target = outcome.text.strip()
        if teacher.name != "replay":  # relabelled: does the teacher now say what the log said?
            dataset.relabelled += 1
            dataset.relabel_agreed += _same_answer(target, record.response_text, card)
        if to_label is not None:
            label = to_label(target)
            if label is None:
                dataset.off_label += 1
                continue
            target = label
        split = split_of(record.user_text, params, dataset.validation_fraction)
        dataset.rows[split].append(
            DatasetRow(
                id=stable_id(card.id, record.user_text, prefix="row-"),
                task_id=card.id,
                split=split,
                prompt=list(request.prompt),
                input_text=record.user_text,
                target=target,
                source="logged" if teacher.name == "replay" else "teacher",
            )
        )
    asked = len(unique) - dataset.budget_skipped
    if asked and dataset.teacher_failures > max_failures * asked:
        raise TeacherError(
            f"task {card.id}: the teacher failed on {dataset.teacher_failures} of {asked} inputs; "
            "check the teacher settings in params.yaml (synthesize.teacher)"
        )
    return dataset


def run(params: Params, layout: Layout) -> dict:
    """The synthesize stage: records + task cards -> data/datasets/<task>/{train,validation,test}.jsonl."""
    records = list(read_jsonl(layout.records, LogRecord))
    # Only the tasks worth a student (detect's decision), unless only_decisions says otherwise.
    wanted = set(params.synthesize.only_decisions)
    cards = [c for c in read_cards(layout.cards) if c.distillability is None or c.distillability.decision in wanted]
    assignments = read_assignments(layout.assignments)
    groups = group_records(records, assignments)
    teacher = make_teacher(
        params.synthesize.teacher, records, layout.resolve(params.synthesize.cache), params.detect.prices
    )
    if layout.datasets.exists():
        shutil.rmtree(layout.datasets)
    summary: dict = {}
    try:
        for card in tqdm(cards, desc="synthesize", unit="task"):
            dataset = build_task_dataset(
                card, groups.get(card.id, []), teacher, params.synthesize, progress=sys.stderr.isatty()
            )
            for split, rows in dataset.rows.items():
                write_jsonl(layout.dataset(card.id, split), rows)
            summary[card.name] = dataset.summary()
    finally:
        teacher.close()
    summary["teacher"] = teacher.stats()
    if teacher.budget_stops:
        stops = teacher.budget_stops
        summary["teacher"]["stopped"] = f"budget spent: {stops} inputs were not asked; kept what was answered"
    write_json(layout.stage_metrics("synthesize"), summary)
    return summary

