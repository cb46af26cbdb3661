"""Pick the rung of the training ladder for each task and train its student.

The ladder, cheapest first: a classifier on sentence embeddings for closed label sets (on what
Pillow reads from the image, beside the text, when the task's calls carry images);
a span tagger for extraction whose JSON answers are all copied from the input (milliseconds, and
no answer it gives can be a misspelt or invented copy), kept when its validation agreement reaches
`train.span.accept`, else compared with the LM on the same validation rows;
SFT of a small instruct LM for extraction, JSON and text (and for labels when forced);
logit distillation from a local teacher LM that shares the student's tokenizer. The
card decides, params.yaml can force a rung per task. Training reads only the train and
validation splits: the test split stays unseen until evaluation.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

from stillroom.answers import parse_json
from stillroom.config import Params, TrainParams
from stillroom.data import TRAIN_INFO_FILE, Layout, load_splits, synthesized_cards
from stillroom.per_task import merge_summary, run_each
from stillroom.schema import DatasetRow, Rung, TaskCard
from stillroom.students.base import Student

FORCED = "forced in params.yaml (train.rung / train.rungs)"


def choose_rung(card: TaskCard, params: TrainParams) -> tuple[Rung, str]:
    """The rung for this task and why, as recorded with the student. An `lm` task may still end on the
    span rung: it is tried first when the answers allow it (`span_applies`, `span_or_lm`)."""
    forced = params.rungs.get(card.name) or params.rungs.get(card.id)
    if forced is None and params.rung != "auto":
        forced = params.rung
    if forced is not None:
        if forced in ("classifier", "image_classifier") and card.output_type != "label":
            raise ValueError(
                f"task {card.name}: the classifier rung needs a closed label set, not {card.answer_format}"
            )
        if forced == "distill" and not params.lm.teacher_model:
            raise ValueError(f"task {card.name}: the distill rung needs train.lm.teacher_model (a local teacher LM)")
        return forced, FORCED
    if card.output_type == "label" and card.inputs == "image+text":
        return "image_classifier", f"closed label set of {len(card.labels)} labels over image inputs"
    if card.output_type == "label":
        return "classifier", f"closed label set of {len(card.labels)} labels"
    if params.lm.teacher_model:
        return "distill", f"{card.answer_format} answers; local teacher {params.lm.teacher_model} shares the tokenizer"
    return "lm", f"{card.answer_format} answers need a generator"


def span_applies(card: TaskCard, train: Sequence[DatasetRow], params: TrainParams) -> bool:
    """A JSON task whose answers the span tagger can write: arrays of strings or objects of string and
    string-array fields, nearly every value copied from the input (checked again, exactly, as it trains)."""
    if not params.span.enabled or card.answer_format != "json" or card.inputs == "image+text":
        return False
    from stillroom.students.json_answers import copied_share
    from stillroom.students.span_train import answer_slots

    answers = [parse_json(row.target) for row in train]
    if answer_slots(answers) is None:
        return False
    copied = copied_share((row.input_text, answer) for row, answer in zip(train, answers, strict=True))
    return copied is not None and copied >= params.span.min_aligned


def span_or_lm(
    card: TaskCard,
    train: Sequence[DatasetRow],
    validation: Sequence[DatasetRow],
    params: TrainParams,
    out_dir: Path,
    progress: bool,
) -> tuple[Rung, str, Student, dict]:
    """The span tagger first. The LM is trained only when the tagger's validation agreement falls short of
    `span.accept`; then the better of the two on the same validation rows is kept, the tagger (tens of times
    faster) while it is within `span.tolerance` of the LM."""
    from stillroom.students.span_train import train_span, validation_agreement

    span, span_info = train_span(train, validation, params.span, out_dir, params.seed, progress, card.json_schema)
    span_agreement = span_info["validation_agreement"]
    if span_agreement is None or span_agreement >= params.span.accept:
        said = "no validation rows" if span_agreement is None else f"validation agreement {span_agreement:.3f}"
        return (
            "span",
            f"answers are spans of the input; the span tagger's {said} (accept {params.span.accept})",
            span,
            span_info,
        )
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".lm-") as scratch:
        lm, lm_info = train_lm_student(card, train, validation, params, Path(scratch) / "lm", "lm", progress)
        lm_agreement = validation_agreement(lm, validation, card.answer_format)
        compared = {"span_validation_agreement": span_agreement, "lm_validation_agreement": lm_agreement}
        said = f"span tagger {span_agreement:.3f} vs LM {lm_agreement:.3f} on validation"
        if span_agreement >= lm_agreement - params.span.tolerance:
            return (
                "span",
                f"{said} (the tagger within {params.span.tolerance} of the LM is kept)",
                span,
                {**span_info, **compared},
            )
        shutil.rmtree(out_dir)
        shutil.move(Path(scratch) / "lm", out_dir)
    return "lm", f"{said}: the LM is kept", lm, {**lm_info, **compared}


def train_lm_student(
    card: TaskCard,
    train: Sequence[DatasetRow],
    validation: Sequence[DatasetRow],
    params: TrainParams,
    out_dir: Path,
    rung: Rung,
    progress: bool,
) -> tuple[Student, dict]:
    from stillroom.students.lm_train import train_lm

    lm_params = params.lm.model_copy(
        update={
            "teacher_model": params.lm.teacher_model if rung == "distill" else None,
            # SFT keeps the start of prompt + answer: a row cut before its answer teaches nothing.
            "max_length": max(params.lm.max_length, fitted_length(card)),
        }
    )
    return train_lm(
        list(train),
        list(validation),
        lm_params,
        out_dir,
        seed=params.seed,
        progress=progress,
        labels=card.labels if card.output_type == "label" else None,
        json_schema=card.json_schema if card.answer_format == "json" else None,
    )


def fitted_length(card: TaskCard, context: int = 2048) -> int:
    """Tokens that hold the task's long (p95) prompts with their answers, within the model's context."""
    return min(context, card.input_tokens_p95 + card.output_tokens_p95 + 16)


def train_task(
    card: TaskCard,
    train: Sequence[DatasetRow],
    validation: Sequence[DatasetRow],
    params: TrainParams,
    out_dir: Path,
    progress: bool = True,
) -> tuple[Student, dict]:
    """Train, save to `out_dir` (replacing what was there) and return the student with its training facts.

    The old folder goes first, so a task that fails here never leaves the last student looking current."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if not train:
        raise ValueError(f"task {card.id} ({card.name}) has no training rows")
    rung, reason = choose_rung(card, params)
    if rung == "classifier":
        from stillroom.students.classifier_train import save_classifier, train_classifier

        student, info = train_classifier(
            train, params.classifier, seed=params.seed, progress=progress, validation=validation
        )
        save_classifier(student, out_dir)
    elif rung == "image_classifier":
        from stillroom.students.image_classifier_train import save_image_classifier, train_image_classifier

        student, info = train_image_classifier(train, params.classifier, seed=params.seed, validation=validation)
        save_image_classifier(student, out_dir)
    elif rung == "span":
        from stillroom.students.span_train import train_span

        student, info = train_span(train, validation, params.span, out_dir, params.seed, progress, card.json_schema)
    elif rung == "lm" and reason != FORCED and span_applies(card, train, params):
        rung, reason, student, info = span_or_lm(card, train, validation, params, out_dir, progress)
    else:
        student, info = train_lm_student(card, train, validation, params, out_dir, rung, progress)
    info = {
        "task_id": card.id,
        "task": card.name,
        "task_records": card.count,  # what the watch flow counts new traffic from
        "kind": student.kind,
        **info,
        "rung": rung,
        "rung_reason": reason,
    }
    (out_dir / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return student, info


def task_cards(params: Params, layout: Layout) -> list[TaskCard]:
    return synthesized_cards(layout)


def run_task(params: Params, layout: Layout, card: TaskCard) -> dict:
    """One task's student under data/models/<task>/; the summary keeps its scalar training facts."""
    progress = sys.stderr.isatty()  # training bars for a person watching, not for logs
    splits = load_splits(layout, card.id, ("train", "validation"))
    _, info = train_task(card, splits["train"], splits["validation"], params.train, layout.model(card.id), progress)
    return {k: v for k, v in info.items() if isinstance(v, int | float | str)}


def finish(params: Params, layout: Layout, results: dict[str, dict]) -> dict:
    """metrics/train.json; the folders of tasks that no longer exist are removed."""
    cards = synthesized_cards(layout)
    current = {card.id for card in cards}
    if layout.models.exists():
        for folder in layout.models.iterdir():
            if folder.is_dir() and folder.name not in current:
                shutil.rmtree(folder)
    return merge_summary(layout.stage_metrics("train"), cards, results)


def run(params: Params, layout: Layout, only: Collection[str] | None = None) -> dict:
    """The train stage: one student per task under data/models/<task>/ (+ metrics/train.json)."""
    return run_each("train", sys.modules[__name__], params, layout, only)
