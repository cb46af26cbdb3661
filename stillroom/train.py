"""Pick the rung of the training ladder for each task and train its student.

The ladder, cheapest first: a classifier on sentence embeddings for closed label sets (on what
Pillow reads from the image, beside the text, when the task's calls carry images);
SFT of a small instruct LM for extraction, JSON and text (and for labels when forced);
logit distillation from a local teacher LM that shares the student's tokenizer. The
card decides, params.yaml can force a rung per task. Training reads only the train and
validation splits: the test split stays unseen until evaluation.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from stillroom.config import Params, TrainParams
from stillroom.data import TRAIN_INFO_FILE, Layout, load_splits, synthesized_cards
from stillroom.per_task import merge_summary, run_each
from stillroom.schema import DatasetRow, Rung, TaskCard
from stillroom.students.base import Student


def choose_rung(card: TaskCard, params: TrainParams) -> tuple[Rung, str]:
    """The rung for this task and why, as recorded with the student."""
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
        return forced, "forced in params.yaml (train.rung / train.rungs)"
    if card.output_type == "label" and card.inputs == "image+text":
        return "image_classifier", f"closed label set of {len(card.labels)} labels over image inputs"
    if card.output_type == "label":
        return "classifier", f"closed label set of {len(card.labels)} labels"
    if params.lm.teacher_model:
        return "distill", f"{card.answer_format} answers; local teacher {params.lm.teacher_model} shares the tokenizer"
    return "lm", f"{card.answer_format} answers need a generator"


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
    else:
        from stillroom.students.lm_train import train_lm

        lm_params = params.lm.model_copy(
            update={
                "teacher_model": params.lm.teacher_model if rung == "distill" else None,
                # SFT keeps the start of prompt + answer: a row cut before its answer teaches nothing.
                "max_length": max(params.lm.max_length, fitted_length(card)),
            }
        )
        student, info = train_lm(
            list(train),
            list(validation),
            lm_params,
            out_dir,
            seed=params.seed,
            progress=progress,
            labels=card.labels if card.output_type == "label" else None,
            json_schema=card.json_schema if card.answer_format == "json" else None,
        )
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
