"""The student for closed label sets: a linear head on frozen sentence embeddings.

Cheap to train (seconds on CPU), milliseconds to answer, and its softmax gives a
confidence for routing. The head is stored as plain arrays (no pickle), and the encoder
is copied into the student folder so the folder alone answers, offline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from stillroom.config import ClassifierParams
from stillroom.embeddings import load_embedder
from stillroom.schema import DatasetRow, Prediction
from stillroom.students.base import Prompt, Student, last_user_turn, read_manifest, write_manifest

ENCODER_DIR = "encoder"
HEAD_FILE = "head.npz"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class EmbeddingClassifier(Student):
    kind = "classifier"

    def __init__(self, encoder, labels: list[str], weights: np.ndarray, bias: np.ndarray):
        self.encoder = encoder  # a SentenceTransformer
        self.labels = labels
        self.weights = weights  # (n_labels, dim)
        self.bias = bias  # (n_labels,)

    @classmethod
    def train(
        cls,
        train: Sequence[DatasetRow],
        params: ClassifierParams,
        seed: int = 0,
        progress: bool = False,
    ) -> tuple[EmbeddingClassifier, dict]:
        rows = list(train)[: params.max_train_examples]
        labels = sorted({row.target for row in rows})
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least two labels in the training data, got {labels}")
        started = time.perf_counter()
        encoder = load_embedder(params.embedder)
        vectors = encoder.encode(
            [row.input_text for row in rows],
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[row.target] for row in rows])
        head = LogisticRegression(C=params.C, max_iter=2000, random_state=seed)
        head.fit(vectors, y)
        weights, bias = head.coef_, head.intercept_
        if len(labels) == 2:  # sklearn keeps one row for binary problems; softmax wants two
            weights = np.vstack([np.zeros_like(weights[0]), weights[0]])
            bias = np.array([0.0, bias[0]])
        student = cls(encoder, labels, weights.astype(np.float32), bias.astype(np.float32))
        info = {
            "n_train": len(rows),
            "labels": len(labels),
            "train_seconds": round(time.perf_counter() - started, 3),
            "train_accuracy": float(head.score(vectors, y)),
        }
        return student, info

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        vectors = self.encoder.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return _softmax(vectors @ self.weights.T + self.bias)

    def predict(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[Prediction]:
        probs = self.probabilities([last_user_turn(p) for p in prompts], batch_size=batch_size)
        best = probs.argmax(axis=1)
        return [Prediction(text=self.labels[i], confidence=float(probs[row, i])) for row, i in enumerate(best)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save(str(directory / ENCODER_DIR))
        np.savez(directory / HEAD_FILE, weights=self.weights, bias=self.bias)
        write_manifest(directory, self.kind, labels=self.labels)

    @classmethod
    def load(cls, directory: Path) -> EmbeddingClassifier:
        from sentence_transformers import SentenceTransformer

        manifest = read_manifest(directory)
        head = np.load(directory / HEAD_FILE)
        encoder = SentenceTransformer(str(directory / ENCODER_DIR), device="cpu")
        return cls(encoder, manifest["labels"], head["weights"], head["bias"])
