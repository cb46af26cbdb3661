"""Build each task's train/validation/test sets from the teacher's answers.

The logged pairs come first: each distinct input once, answered by the teacher
(`replay` gives the logged answer back). A row's split is a hash of its input, so the
test split stays held out from training on every re-run and as new logs arrive.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from stillroom.answers import normalize_label, parse_json
from stillroom.config import AugmentParams, Params, SynthesizeParams
from stillroom.data import (
    Layout,
    group_records,
    read_assignments,
    read_cards,
    read_jsonl,
    write_json,
    write_jsonl,
)
from stillroom.schema import DatasetRow, LogRecord, Message, Split, TaskCard, stable_id
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
    generated: int = 0
    rejected: Counter = field(default_factory=Counter)  # generated inputs turned away, by reason
    decision: str | None = None  # set when augmentation re-decided a collect_more task
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
            "real_train": sum(row.source != "generated" for row in self.rows["train"]),
            "generated_train": self.generated,
            "generated_rejected": dict(self.rejected),
            **({"decision": self.decision} if self.decision else {}),
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

    # Only turns about the same images can be near-duplicates: one question asked of many photos is many inputs.
    # The bands are worked out once (datasketch integrates for them: ~70 ms an index): 700 records cost 50 s
    # when every record built its own index.
    bands = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM)
    indexes: dict[str, MinHashLSH] = {}
    kept = []
    for i, record in enumerate(records):
        signature = MinHash(num_perm=_NUM_PERM)
        signature.update_batch(list(_shingles(record.user_text)))
        images = record.user_input[len(record.user_text) :]
        index = indexes.get(images)
        if index is None:
            index = indexes[images] = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM, params=(bands.b, bands.r))
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
        split = split_of(record.user_input, params, dataset.validation_fraction)
        dataset.rows[split].append(
            DatasetRow(
                id=stable_id(card.id, record.user_input, prefix="row-"),
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


_GENERATION_ROUNDS = 3
GENERATE = """(Batch {batch}.) Here are real inputs of one task{steer}:

{examples}

Write {n} new inputs of the same kind{target}. Vary topic, length and wording as real users would; \
do not copy or lightly edit the examples. Answer with a JSON array of {n} strings and nothing else."""


def _generation_request(examples: Sequence[DatasetRow], n: int, label: str | None, batch: int) -> TeacherRequest:
    """n new inputs like the examples; the batch number keeps every request (and its cache entry) apart."""
    listed = "\n".join(f"{i}. {json.dumps(row.input_text, ensure_ascii=False)}" for i, row in enumerate(examples, 1))
    steer = f", each answered {json.dumps(label)}" if label else ""
    target = f" that the task would answer {json.dumps(label)}" if label else ""
    text = GENERATE.format(batch=batch, steer=steer, examples=listed, n=n, target=target)
    return TeacherRequest([Message(role="user", content=text)])


def _augmentation_targets(card: TaskCard, dataset: TaskDataset, params: AugmentParams) -> list[tuple[str | None, int]]:
    """(label or None, inputs wanted): rare labels up to min_per_label, a small task up to min_records."""
    train = dataset.rows["train"]
    if card.output_type == "label":
        counts = Counter(row.target for row in train)
        # labels the task has shown (a generator needs real examples of each), rarest first filled
        wants = [(label, max(0, params.min_per_label - counts[label])) for label in card.labels if counts[label] > 0]
        short = params.min_records - len(train) - sum(n for _, n in wants)
        if short > 0 and wants:
            wants = [(label, n + -(-short // len(wants))) for label, n in wants]
        return [(label, n) for label, n in wants if n > 0]
    return [(None, params.min_records - len(train))] if len(train) < params.min_records else []


def _valid_answer(card: TaskCard, answer: str) -> str | None:
    """The target a generated input's answer gives, or the reason it is rejected."""
    if card.answer_format == "json" and card.json_schema:
        from jsonschema import Draft202012Validator

        parsed = parse_json(answer)
        return None if parsed is not None and Draft202012Validator(card.json_schema).is_valid(parsed) else "schema"
    return None


def _worth_a_student(card: TaskCard, dataset: TaskDataset, params: SynthesizeParams) -> bool:
    """A collect_more task goes on to training only once augmentation filled it up; the others always do."""
    decision = card.distillability.decision if card.distillability else None
    if decision != "collect_more" or decision in params.only_decisions:
        return True
    if len(dataset.rows["train"]) >= params.augment.min_records:
        dataset.decision = "distill_now after augmentation (the gate still judges real test rows only)"
        return True
    return False


def augment(
    card: TaskCard, dataset: TaskDataset, teacher: Teacher, params: AugmentParams, jaccard: float, seed: int
) -> None:
    """Generated training inputs for rare labels and small tasks, answered by the teacher and checked.

    The teacher writes new inputs from real training examples (steered to the rare label), then
    answers them as the task. An input is rejected when its answer is off the label set or fails
    the schema, or when it nearly duplicates a test input or another input. Generated rows go to
    train only: validation and test stay real, so thresholds and gates are judged on real traffic.
    """
    from datasketch import MinHash, MinHashLSH

    wants = _augmentation_targets(card, dataset, params)
    train = dataset.rows["train"]
    if not wants or not train:
        return
    rng = random.Random(seed)
    seen = MinHashLSH(threshold=jaccard, num_perm=_NUM_PERM)

    def signature(text: str) -> MinHash:
        minhash = MinHash(num_perm=_NUM_PERM)
        minhash.update_batch(list(_shingles(text)))
        return minhash

    for i, row in enumerate(dataset.rows["test"] + dataset.rows["validation"] + train):
        seen.insert(f"real{i}", signature(row.input_text))
    budget = params.max_generated_per_task
    batch = 0
    for label, wanted in wants:
        pool = [row for row in train if label is None or row.target == label]
        kept = 0
        for _ in range(_GENERATION_ROUNDS):  # rejected inputs are made up for in the next round
            needed = min(wanted - kept, budget)
            if needed <= 0:
                break
            calls = -(-needed // params.inputs_per_request)
            generation = []
            for _ in range(calls):
                batch += 1
                shown = rng.sample(pool, min(len(pool), params.examples_per_request))
                generation.append(_generation_request(shown, params.inputs_per_request, label, batch))
            texts = []
            for outcome in teacher.answer_many(generation):
                parsed = parse_json(outcome.text) if outcome.text else None
                if not isinstance(parsed, list):
                    dataset.rejected["unparsable"] += 1
                    continue
                texts += [item.strip() for item in parsed if isinstance(item, str) and item.strip()]
            fresh = []
            for text in texts[:needed]:
                minhash = signature(text)
                if seen.query(minhash):
                    dataset.rejected["near_duplicate"] += 1
                    continue
                seen.insert(f"gen{batch}-{len(fresh)}", minhash)
                fresh.append(text)
            added = _answer_generated(card, dataset, teacher, pool[0].prompt, fresh)
            kept += added
            budget -= added


def _answer_generated(
    card: TaskCard, dataset: TaskDataset, teacher: Teacher, template: Sequence[Message], texts: Sequence[str]
) -> int:
    """Have the teacher answer generated inputs as the task (the template's turns, the input last); keep the valid."""
    to_label = _label_lookup(card) if card.output_type == "label" else None
    requests = [TeacherRequest([*template[:-1], Message(role="user", content=text)]) for text in texts]
    kept = 0
    for request, text, outcome in zip(requests, texts, teacher.answer_many(requests), strict=True):
        if outcome.text is None:
            dataset.rejected["teacher_failed"] += 1
            continue
        target: str | None = outcome.text.strip()
        if to_label is not None:
            target = to_label(target)
            if target is None:
                dataset.rejected["off_label"] += 1
                continue
        elif (reason := _valid_answer(card, target)) is not None:
            dataset.rejected[reason] += 1
            continue
        dataset.rows["train"].append(
            DatasetRow(
                id=stable_id(card.id, text, prefix="gen-"),
                task_id=card.id,
                split="train",
                prompt=list(request.prompt),
                input_text=text,
                target=target,
                source="generated",
            )
        )
        dataset.generated += 1
        kept += 1
    return kept


def run(params: Params, layout: Layout) -> dict:
    """The synthesize stage: records + task cards -> data/datasets/<task>/{train,validation,test}.jsonl."""
    records = list(read_jsonl(layout.records, LogRecord))
    # Only the tasks worth a student (detect's decision), unless only_decisions says otherwise; with a live
    # teacher and augmentation on, tasks that only lack calls get the chance to be filled up.
    settings = params.synthesize
    augmenting = settings.augment.enabled and settings.teacher.backend != "replay"
    wanted = set(settings.only_decisions) | ({"collect_more"} if augmenting else set())
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
            dataset = build_task_dataset(card, groups.get(card.id, []), teacher, settings, progress=sys.stderr.isatty())
            if augmenting:
                augment(card, dataset, teacher, settings.augment, settings.near_duplicate_jaccard or 0.9, settings.seed)
            if not _worth_a_student(card, dataset, settings):
                dataset.decision = "collect_more: still too few real and generated examples"
                summary[card.name] = dataset.summary()
                continue
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
