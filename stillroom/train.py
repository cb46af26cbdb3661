"""Pick the rung of the training ladder for each task and train its student.

The ladder, cheapest first: a classifier on sentence embeddings for closed label sets;
SFT of a small instruct LM for extraction, JSON and text (and for labels when forced);
logit distillation from a local teacher LM that shares the student's tokenizer. The
card decides, params.yaml can force a rung per task. Training reads only the train and
validation splits: the test split stays unseen until evaluation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from stillroom.config import Params, TrainParams
from stillroom.data import Layout, load_splits, synthesized_cards, write_json
from stillroom.schema import DatasetRow, Rung, TaskCard
from stillroom.students.base import Student

TRAIN_INFO = "train_info.json"


def choose_rung(card: TaskCard, params: TrainParams) -> tuple[Rung, str]:
    """The rung for this task and why, as recorded with the student."""
    forced = params.rungs.get(card.name) or params.rungs.get(card.id)
    if forced is None and params.rung != "auto":
        forced = params.rung
    if forced is not None:
        if forced == "classifier" and card.output_type != "label":
            raise ValueError(
                f"task {card.name}: the classifier rung needs a closed label set, not {card.answer_format}"
            )
        if forced == "distill" and not params.lm.teacher_model:
            raise ValueError(f"task {card.name}: the distill rung needs train.lm.teacher_model (a local teacher LM)")
        return forced, "forced in params.yaml (train.rung / train.rungs)"
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
    """Train, save to `out_dir` (replacing what was there) and return the student with its training facts."""
    if not train:
        raise ValueError(f"task {card.id} ({card.name}) has no training rows")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    rung, reason = choose_rung(card, params)
    if rung == "classifier":
        from stillroom.students.classifier_train import save_classifier, train_classifier

        student, info = train_classifier(
            train, params.classifier, seed=params.seed, progress=progress, validation=validation
        )
        save_classifier(student, out_dir)
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
    info = {"task_id": card.id, "task": card.name, "kind": student.kind, **info, "rung": rung, "rung_reason": reason}
    (out_dir / TRAIN_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return student, info


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """The train stage: one student per task under data/models/<task>/ (+ metrics/train.json)."""
    cards = synthesized_cards(layout)
    if layout.models.exists():
        shutil.rmtree(layout.models)
    summary = {}
    for card in cards:
        splits = load_splits(layout, card.id, ("train", "validation"))
        _, info = train_task(card, splits["train"], splits["validation"], params.train, layout.model(card.id), progress)
        summary[card.name] = {k: v for k, v in info.items() if isinstance(v, int | float | str)}
    write_json(layout.stage_metrics("train"), summary)
    return summary
