"""Training the image classifier student: image facts from the bytes, thresholds learnt on them, TF-IDF on the
text around the image, a logistic-regression head, temperature-scaled like the text classifier's.

The thresholds are the split points of a shallow decision tree fitted on the training rows' facts:
where the teacher draws a sharp line ("a photo has at least 6 bits of entropy") the tree finds it, to the
midpoint between the nearest training images on either side, and the linear head can then put its weight
on that cut. The head is what calibrates: its confidence is temperature-scaled on out-of-fold
predictions, so routing thresholds mean what they say.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from stillroom.config import ClassifierParams
from stillroom.schema import DatasetRow
from stillroom.students.base import write_manifest
from stillroom.students.classifier import HEAD_FILE
from stillroom.students.classifier_train import (
    _fit_head,
    _logits,
    fit_ngrams,
    fit_temperature,
    out_of_fold_logits,
    save_ngrams,
)
from stillroom.students.image_classifier import (
    EDGES_FILE,
    FACTS,
    FEATURE_NAMES,
    ImageClassifier,
    ImageFeatures,
    prompt_facts,
)

_TREE_DEPTH = 6


def learnt_edges(facts: np.ndarray, y: np.ndarray, seed: int) -> list[list[float]]:
    """Per fact (not the one-hot formats, cuts already): the split points a shallow tree puts on it. Only
    those: deciles beside them spread the head's weight over near cuts and blur the teacher's sharp one."""
    tree = DecisionTreeClassifier(max_depth=_TREE_DEPTH, min_samples_leaf=2, random_state=seed).fit(facts, y).tree_
    edges: list[set[float]] = [set() for _ in FEATURE_NAMES]
    for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
        if 0 <= feature < len(FACTS):  # a leaf is -2
            edges[feature].add(float(threshold))  # `>=` at a midpoint between training values equals the tree's `>`
    return [sorted(cuts) for cuts in edges]


def train_image_classifier(
    train: Sequence[DatasetRow], params: ClassifierParams, seed: int = 0, validation: Sequence[DatasetRow] = ()
) -> tuple[ImageClassifier, dict]:
    """Fit the thresholds, the text vocabulary and the head on the training rows whose image is readable."""
    started = time.perf_counter()
    rows = list(train)[: params.max_train_examples]
    facts, readable = prompt_facts([row.prompt for row in rows])
    rows, facts = [row for row, ok in zip(rows, readable, strict=True) if ok], facts[readable]
    labels = sorted({row.target for row in rows})
    if len(labels) < 2:
        raise ValueError(f"an image classifier needs at least two labels among readable images, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[row.target] for row in rows])
    texts = [row.input_text for row in rows]
    scale = facts.std(axis=0)
    features = ImageFeatures(
        facts.mean(axis=0), np.where(scale == 0, 1.0, scale), learnt_edges(facts, y, seed), fit_ngrams(texts)
    )
    x = features.matrix(facts, texts)
    head = _fit_head(x, y, params.C, seed, len(labels))
    temperature = 1.0
    if params.calibrate:
        temperature = fit_temperature(out_of_fold_logits(x, y, params.C, seed, len(labels)), y)
    info = {"temperature": temperature, "features": "image+tfidf", "facts": list(FEATURE_NAMES)}
    student = ImageClassifier(features, labels, head[0], head[1], info)
    held = [row for row in validation if row.target in index]
    predictions = student.predict([row.prompt for row in held]) if held else []
    stats = {
        "n_train": len(rows),
        "n_train_unreadable": int((~readable).sum()),
        "n_validation": len(held),
        "labels": len(labels),
        "features": "image+tfidf",
        "validation_accuracy": (
            float(np.mean([p.text == r.target for p, r in zip(predictions, held, strict=True)])) if held else None
        ),
        "temperature": round(temperature, 4),
        "thresholds": sum(len(edges) for edges in features.edges),
        "train_seconds": round(time.perf_counter() - started, 3),
        "train_accuracy": float((_logits(head, x).argmax(1) == y).mean()),
    }
    return student, stats


def save_image_classifier(student: ImageClassifier, directory: Path) -> None:
    """Write the folder `ImageClassifier.load` reads: arrays and JSON, no pickle."""
    directory.mkdir(parents=True, exist_ok=True)
    features = student.features
    arrays = {"weights": student.weights, "bias": student.bias, "mean": features.mean, "scale": features.scale}
    save_ngrams(features.text, directory, arrays)
    np.savez(directory / HEAD_FILE, **arrays)
    (directory / EDGES_FILE).write_text(json.dumps(features.edges))
    write_manifest(directory, student.kind, labels=student.labels, **student.info)
