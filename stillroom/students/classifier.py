"""The student for closed label sets: a calibrated linear head on sentence embeddings, TF-IDF, or both.

Cheap to train (seconds on CPU), milliseconds to answer. Which features it reads is
chosen on the validation split among the candidates in params: frozen MiniLM embeddings
carry meaning, TF-IDF carries the rare topical words a small encoder blurs, and the
hybrid reads both. Probabilities are temperature-scaled on out-of-fold training
predictions, so a confidence of 0.9 means right about 9 times in 10 and routing
thresholds mean what they say. Everything is stored as plain arrays and JSON (no
pickle), with the encoder copied in, so the folder alone answers, offline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from stillroom.config import ClassifierFeatures, ClassifierParams
from stillroom.embeddings import resolve_embedder
from stillroom.schema import DatasetRow, Prediction
from stillroom.students.base import Prompt, Student, last_user_turn, read_manifest, write_manifest

ENCODER_DIR = "encoder"
HEAD_FILE = "head.npz"
VOCABULARY_FILE = "tfidf_vocabulary.json"
TFIDF_OPTIONS: dict[str, Any] = {"sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _load_encoder(name_or_path: str, max_seq_length: int, quantize: bool) -> Any:
    """A private SentenceTransformer (not the shared cached one, whose sequence length we change)."""
    import torch
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(name_or_path, device="cpu")
    encoder.max_seq_length = max_seq_length
    if quantize:  # int8 weights for the linear layers: about twice as fast on CPU, same answers nearly always
        encoder = torch.ao.quantization.quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)
    return encoder


class Features:
    """Turns texts into the matrix a head reads: embeddings, TF-IDF, or both side by side."""

    def __init__(
        self,
        kind: ClassifierFeatures,
        encoder: Any = None,
        tfidf: TfidfVectorizer | None = None,
        encoder_source: str | None = None,
    ):
        self.kind = kind
        self.encoder = encoder
        self.tfidf = tfidf
        self.encoder_source = encoder_source  # where the float weights are, to save a quantized encoder

    def transform(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> Any:
        parts = []
        if self.kind in ("embedding", "hybrid"):
            vectors = self.encoder.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
            parts.append(csr_matrix(vectors) if self.kind == "hybrid" else vectors)
        if self.kind in ("tfidf", "hybrid"):
            parts.append(self.tfidf.transform(list(texts)))
        return parts[0] if len(parts) == 1 else hstack(parts).tocsr()


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of held-out logits."""

    def nll(log_t: float) -> float:
        probs = _softmax(logits / np.exp(log_t))
        return float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def out_of_fold_logits(x: Any, y: np.ndarray, C: float, seed: int, n_labels: int) -> np.ndarray:
    """Each training row's logits from a head that did not see it (what calibration needs)."""
    folds = min(5, int(np.bincount(y).min()))
    logits = np.zeros((len(y), n_labels))
    if folds < 2:
        return logits
    for fit_idx, held_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        head = _fit_head(x[fit_idx], y[fit_idx], C, seed, n_labels)
        logits[held_idx] = _logits(head, x[held_idx])
    return logits


def _fit_head(x: Any, y: np.ndarray, C: float, seed: int, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights (n_labels, dim), bias) with a row for every label, even ones missing from a fold."""
    model = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit(x, y)
    weights = np.zeros((n_labels, x.shape[1]))
    bias = np.full(n_labels, -1e4)  # a label the head never saw gets no probability
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # sklearn keeps one row for binary problems; softmax wants two
        coef, intercept = np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    weights[model.classes_] = coef
    bias[model.classes_] = intercept
    return weights, bias


def _logits(head: tuple[np.ndarray, np.ndarray], x: Any) -> np.ndarray:
    weights, bias = head
    return np.asarray(x @ weights.T) + bias


class EmbeddingClassifier(Student):
    kind = "classifier"

    def __init__(self, features: Features, labels: list[str], weights: np.ndarray, bias: np.ndarray, info: dict):
        self.features = features
        self.labels = labels
        self.weights = weights.astype(np.float32)  # (n_labels, dim)
        self.bias = bias.astype(np.float32)
        self.info = info  # manifest fields: features, temperature, embedder settings

    @property
    def temperature(self) -> float:
        return float(self.info.get("temperature", 1.0))

    @classmethod
    def train(
        cls,
        train: Sequence[DatasetRow],
        params: ClassifierParams,
        seed: int = 0,
        progress: bool = False,
        validation: Sequence[DatasetRow] = (),
    ) -> tuple[EmbeddingClassifier, dict]:
        """Fit one head per candidate feature set, keep the best on validation, calibrate it."""
        rows = list(train)[: params.max_train_examples]
        labels = sorted({row.target for row in rows})
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least two labels in the training data, got {labels}")
        started = time.perf_counter()
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[row.target] for row in rows])
        texts = [row.input_text for row in rows]
        held = [row for row in validation if row.target in index]

        candidates = list(dict.fromkeys(params.features))
        needs_encoder = any(kind in ("embedding", "hybrid") for kind in candidates)
        source = resolve_embedder(params.embedder)
        encoder = _load_encoder(source, params.max_seq_length, params.quantize) if needs_encoder else None
        tfidf = TfidfVectorizer(**TFIDF_OPTIONS).fit(texts) if any(k != "embedding" for k in candidates) else None
        # Embed once; the hybrid reuses the same vectors.
        cache: dict[str, np.ndarray] = {}

        def matrix(kind: ClassifierFeatures, batch: list[str], key: str) -> Any:
            if kind == "tfidf":
                return tfidf.transform(batch)
            if key not in cache:
                cache[key] = Features("embedding", encoder).transform(batch, progress=progress)
            return (
                cache[key] if kind == "embedding" else hstack([csr_matrix(cache[key]), tfidf.transform(batch)]).tocsr()
            )

        scores: dict[str, float | None] = {}
        heads = {}
        for kind in candidates:
            x = matrix(kind, texts, "train")
            heads[kind] = _fit_head(x, y, params.C, seed, len(labels))
            if held:
                predicted = _logits(heads[kind], matrix(kind, [r.input_text for r in held], "validation")).argmax(1)
                scores[kind] = float(np.mean([labels[p] == r.target for p, r in zip(predicted, held, strict=True)]))
            else:
                scores[kind] = None
        # Best validation accuracy; ties (and no validation) go to the earliest candidate listed.
        chosen = max(candidates, key=lambda kind: (scores[kind] or 0.0, -candidates.index(kind)))
        x = matrix(chosen, texts, "train")
        weights, bias = heads[chosen]
        temperature = 1.0
        if params.calibrate:
            temperature = fit_temperature(out_of_fold_logits(x, y, params.C, seed, len(labels)), y)

        features = Features(
            chosen, encoder if chosen != "tfidf" else None, tfidf if chosen != "embedding" else None, source
        )
        info = {
            "features": chosen,
            "temperature": temperature,
            "embedder": params.embedder,
            "max_seq_length": params.max_seq_length,
            "quantize": params.quantize,
        }
        student = cls(features, labels, weights, bias, info)
        train_accuracy = float((_logits(heads[chosen], x).argmax(1) == y).mean())
        stats = {
            "n_train": len(rows),
            "n_validation": len(held),
            "labels": len(labels),
            "features": chosen,
            "validation_accuracy": scores[chosen],
            **{f"validation_accuracy_{kind}": score for kind, score in scores.items() if score is not None},
            "temperature": round(temperature, 4),
            "train_seconds": round(time.perf_counter() - started, 3),
            "train_accuracy": train_accuracy,
        }
        return student, stats

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        x = self.features.transform(texts, batch_size=batch_size)
        return _softmax((np.asarray(x @ self.weights.T) + self.bias) / self.temperature)

    def predict(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[Prediction]:
        probs = self.probabilities([last_user_turn(p) for p in prompts], batch_size=batch_size)
        best = probs.argmax(axis=1)
        return [Prediction(text=self.labels[i], confidence=float(probs[row, i])) for row, i in enumerate(best)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"weights": self.weights, "bias": self.bias}
        if self.features.encoder is not None:
            # Quantization is applied at load, so the folder keeps the float weights.
            encoder = self.features.encoder
            if self.info.get("quantize"):
                encoder = _load_encoder(self.features.encoder_source, self.info["max_seq_length"], quantize=False)
            encoder.save(str(directory / ENCODER_DIR))
        if self.features.tfidf is not None:
            vocabulary = {term: int(i) for term, i in self.features.tfidf.vocabulary_.items()}
            (directory / VOCABULARY_FILE).write_text(json.dumps(vocabulary, ensure_ascii=False))
            arrays["idf"] = self.features.tfidf.idf_.astype(np.float64)
        np.savez(directory / HEAD_FILE, **arrays)
        write_manifest(directory, self.kind, labels=self.labels, **self.info)

    @classmethod
    def load(cls, directory: Path) -> EmbeddingClassifier:
        directory = Path(directory)
        manifest = read_manifest(directory)
        head = np.load(directory / HEAD_FILE)
        kind = manifest.get("features", "embedding")  # folders from before the candidates were embedding-only
        encoder = tfidf = None
        source = str(directory / ENCODER_DIR)
        if kind != "tfidf":
            encoder = _load_encoder(source, manifest.get("max_seq_length", 256), manifest.get("quantize", False))
        if kind != "embedding":
            vocabulary = json.loads((directory / VOCABULARY_FILE).read_text())
            tfidf = TfidfVectorizer(**TFIDF_OPTIONS, vocabulary=vocabulary)
            tfidf.idf_ = head["idf"]
        info = {key: value for key, value in manifest.items() if key not in ("kind", "labels")}
        return cls(Features(kind, encoder, tfidf, source), manifest["labels"], head["weights"], head["bias"], info)
