"""Training the classifier student: fit a head per candidate feature set, keep the best, calibrate, save.

Cheap to train (seconds on CPU). Which features it reads is chosen among the candidates in params on
held-out answers: 5-fold out-of-fold answers on the training rows, plus the validation split (a run
without validation keeps the first candidate). Frozen MiniLM embeddings carry meaning, TF-IDF
carries the rare topical words a small encoder blurs, the hybrid reads both, and static vectors
(distilled from the same encoder, in the manner of model2vec) carry some meaning at the cost of
TF-IDF. The cheapest candidate within `selection_tolerance` of the best wins. Probabilities are
temperature-scaled on out-of-fold training predictions, so a confidence of 0.9 means right about 9
times in 10 and routing thresholds mean what they say. When an encoder candidate wins, the TF-IDF
candidate's head becomes its early exit wherever held-out answers show exiting costs nothing
(`early_exit_threshold`).
"""

from __future__ import annotations

import json
import shutil
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
from stillroom.embeddings import onnx_encoder, resolve_embedder, static_embedder
from stillroom.schema import DatasetRow
from stillroom.students.base import write_manifest
from stillroom.students.classifier import (
    CHAR_TFIDF_OPTIONS,
    CHAR_VOCABULARY_FILE,
    ENCODER_DIR,
    EXIT_BIAS,
    EXIT_WEIGHTS,
    HEAD_FILE,
    MAX_CHARS_KEY,
    STATIC_DIR,
    TFIDF_OPTIONS,
    VOCABULARY_FILE,
    EarlyExit,
    EmbeddingClassifier,
    Features,
    Ngrams,
    StaticVectors,
    clip_text,
    load_encoder,
    load_torch_encoder,
    softmax,
)


def train_classifier(
    train: Sequence[DatasetRow],
    params: ClassifierParams,
    seed: int = 0,
    progress: bool = False,
    validation: Sequence[DatasetRow] = (),
) -> tuple[EmbeddingClassifier, dict]:
    """Fit one head per candidate feature set, keep the cheapest near the best held out, calibrate it."""
    rows = list(train)[: params.max_train_examples]
    labels = sorted({row.target for row in rows})
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least two labels in the training data, got {labels}")
    started = time.perf_counter()
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[row.target] for row in rows])
    texts = [row.input_text for row in rows]
    held = [row for row in validation if row.target in index]

    candidates = candidate_names(params)
    windows = sorted({window for name in candidates if (window := window_of(name))})
    source = encoder_folder(params) if windows else resolve_embedder(params.embedder)
    encoders = {window: load_encoder(source, encoder_settings(params, window)) for window in windows}
    static_source = static_embedder(params.embedder, params.static_dims) if "static" in candidates else None
    static = StaticVectors(static_source) if static_source else None
    reads_ngrams = any(kind_of(name) in ("tfidf", "hybrid") for name in candidates)
    tfidf = fit_ngrams(texts, params.char_ngrams, params.tfidf_max_chars) if reads_ngrams else None
    # Each split is embedded once per window and read by TF-IDF once; the hybrids reuse both.
    cache: dict[tuple[int | str, str], Any] = {}

    def ngrams(batch: list[str], split: str) -> Any:
        if ("tfidf", split) not in cache:
            cache["tfidf", split] = tfidf.transform(batch)
        return cache["tfidf", split]

    def matrix(name: str, batch: list[str], split: str) -> Any:
        kind, window = kind_of(name), window_of(name)
        if kind == "tfidf":
            return ngrams(batch, split)
        if kind == "static":
            return static.transform(batch)
        if (window, split) not in cache:
            cache[window, split] = Features("embedding", encoders[window]).transform(batch, progress=progress)
        vectors = cache[window, split]
        return vectors if kind == "embedding" else hstack([csr_matrix(vectors), ngrams(batch, split)]).tocsr()

    # A candidate is judged on every held-out answer there is: each training row answered by a head
    # fitted without it (5-fold), then the validation rows. On a small task validation alone is a few
    # dozen rows, and a lucky draw there picked a candidate that was 25 points worse on test.
    scores: dict[str, float | None] = {}
    validation_scores: dict[str, float] = {}
    heads, fold_logits = {}, {}
    can_fold = int(np.bincount(y).min()) >= 2
    for name in candidates:
        x = matrix(name, texts, "train")
        heads[name] = _fit_head(x, y, params.C, seed, len(labels))
        right = []
        if can_fold:
            fold_logits[name] = out_of_fold_logits(x, y, params.C, seed, len(labels))
            right.append(fold_logits[name].argmax(1) == y)
        if held:
            predicted = _logits(heads[name], matrix(name, [r.input_text for r in held], "validation")).argmax(1)
            right.append(np.array([labels[p] == r.target for p, r in zip(predicted, held, strict=True)]))
            validation_scores[name] = float(right[-1].mean())
        scores[name] = float(np.concatenate(right).mean()) if held and right else None
    chosen_name = cheapest_within_tolerance(candidates, scores, params.selection_tolerance)
    chosen, window = kind_of(chosen_name), window_of(chosen_name)
    x = matrix(chosen_name, texts, "train")
    weights, bias = heads[chosen_name]
    temperature = 1.0
    if params.calibrate and can_fold:
        temperature = fit_temperature(fold_logits[chosen_name], y)

    early_exit, exit_stats = None, {}
    if params.early_exit and chosen in ("embedding", "hybrid") and "tfidf" in heads and can_fold:
        # Held-out logits as for selection: out-of-fold on the training rows, then the validation rows.
        held_texts, held_y = [r.input_text for r in held], np.array([index[r.target] for r in held], dtype=int)
        held_out = {
            name: np.concatenate([fold_logits[name], _logits(heads[name], matrix(name, held_texts, "validation"))])
            for name in ("tfidf", chosen_name)
        }
        full = softmax(held_out[chosen_name] / temperature)
        labels_held = np.concatenate([y, held_y])
        early_exit, share = fit_early_exit(heads["tfidf"], held_out["tfidf"], full, labels_held, len(y), params)
        exit_stats = {"early_exit_threshold": early_exit and early_exit.threshold, "early_exit_held_out_share": share}

    chosen_encoder = {"static": static, "tfidf": None}.get(chosen, encoders.get(window))
    chosen_source = str(static_source) if chosen == "static" else source
    reads_tfidf = chosen in ("tfidf", "hybrid") or early_exit is not None
    features = Features(chosen, chosen_encoder, tfidf if reads_tfidf else None, chosen_source)
    settings = encoder_settings(params, window or max(params.encoder_windows))
    info = {"features": chosen, "temperature": temperature, "embedder": params.embedder, **settings}
    if early_exit is not None:
        info["early_exit"] = {"threshold": early_exit.threshold, "temperature": early_exit.temperature}
    student = EmbeddingClassifier(features, labels, weights, bias, info, early_exit=early_exit)
    train_accuracy = float((_logits(heads[chosen_name], x).argmax(1) == y).mean())
    stats = {
        "n_train": len(rows),
        "n_validation": len(held),
        "labels": len(labels),
        "features": chosen,
        "candidate": chosen_name,
        "validation_accuracy": validation_scores.get(chosen_name),
        **{f"validation_accuracy_{name}": score for name, score in validation_scores.items()},
        **{f"held_out_accuracy_{name}": round(score, 4) for name, score in scores.items() if score is not None},
        "temperature": round(temperature, 4),
        **exit_stats,
        "train_seconds": round(time.perf_counter() - started, 3),
        "train_accuracy": train_accuracy,
        "unseen_train_ids": [row.id for row in list(train)[params.max_train_examples :]],  # held out: see evaluate
    }
    return student, stats


def candidate_names(params: ClassifierParams) -> list[str]:
    """Each feature set in params, the encoder's once per window: `static`, `tfidf`, `embedding_64`,
    `hybrid_128`, ... A short window answers in half the time, a long one reads more of a text, which
    matters most when there are few training rows; held-out accuracy decides which is worth it."""
    names = []
    for kind in dict.fromkeys(params.features):
        encoded = kind in ("embedding", "hybrid")
        names += [f"{kind}_{window}" for window in sorted(set(params.encoder_windows))] if encoded else [kind]
    return names


def kind_of(name: str) -> ClassifierFeatures:
    return name.partition("_")[0]  # type: ignore[return-value]


def window_of(name: str) -> int | None:
    """The word pieces an encoder candidate reads (None for static vectors and TF-IDF)."""
    window = name.partition("_")[2]
    return int(window) if window else None


def encoder_settings(params: ClassifierParams, window: int) -> dict[str, Any]:
    """What a student's manifest records of its encoder, and `load_encoder` reads back: a window of
    `window` word pieces, a quarter of them (`tail_share`) from the input's end."""
    return {
        "encoder_runtime": params.encoder_runtime,
        "max_seq_length": window,
        "tail_tokens": round(window * params.tail_share),
        "quantize": params.quantize,
    }


def encoder_folder(params: ClassifierParams) -> str:
    """Where the encoder the student reads is: its ONNX export (cached), or the sentence-transformers folder."""
    if params.encoder_runtime == "onnx":
        return str(onnx_encoder(params.embedder, params.quantize))
    return resolve_embedder(params.embedder)


# What each feature set costs to answer, cheapest first: static vectors and n-grams about a millisecond
# at any length (character n-grams a few on long texts), then the encoder by its window (about 5 ms
# at 64 word pieces, 9 at 128), the hybrid a TF-IDF's time more than the encoder alone.
_COST = {"static": 0, "tfidf": 1, "embedding": 2, "hybrid": 3}


def cheapest_within_tolerance(candidates: Sequence[str], scores: dict[str, float | None], tolerance: float) -> str:
    """The cheapest candidate whose held-out accuracy is within `tolerance` of the best one's
    (without validation: the first listed)."""
    if not any(score is not None for score in scores.values()):
        return candidates[0]
    best = max(score or 0.0 for score in scores.values())
    good = [name for name in candidates if (scores[name] or 0.0) >= best - tolerance - 1e-12]
    return min(good, key=lambda name: (window_of(name) or 0, _COST[kind_of(name)], candidates.index(name)))


def fit_early_exit(
    head: tuple[np.ndarray, np.ndarray],
    logits: np.ndarray,
    full: np.ndarray,
    y: np.ndarray,
    n_fold: int,
    params: ClassifierParams,
) -> tuple[EarlyExit | None, float]:
    """The TF-IDF `head` as an early exit, from its held-out `logits` beside the full head's held-out
    probabilities `full` (the `n_fold` out-of-fold training rows first, then validation; labels `y`),
    and the share of those rows it answers. Calibrated on the out-of-fold rows, as the full head is."""
    temperature = fit_temperature(logits[:n_fold], y[:n_fold]) if params.calibrate else 1.0
    cheap = softmax(logits / temperature)
    threshold = early_exit_threshold(cheap, full, y, params.early_exit_tolerance)
    if threshold is None:
        return None, 0.0
    return EarlyExit(*head, temperature, threshold), round(float((cheap.max(axis=1) >= threshold).mean()), 4)


def early_exit_threshold(cheap: np.ndarray, full: np.ndarray, y: np.ndarray, tolerance: float) -> float | None:
    """The lowest confidence of the cheap head's from which its answers can stand for the full head's.

    On held-out answers (probabilities, one row per example, labels `y`), the rows the cheap head is at
    least this sure of are ones where it is wrong no more often than the full head, and where the two
    differ on at most `tolerance` of them: exiting there costs no held-out accuracy and changes almost
    no answer. Cuts fall between distinct confidences. None when no confidence qualifies.
    """
    confidence = cheap.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    sure, cheap_answer, full_answer, truth = confidence[order], cheap.argmax(1)[order], full.argmax(1)[order], y[order]
    kept = np.arange(1, len(sure) + 1)
    cheap_wrong = np.cumsum(cheap_answer != truth)
    full_wrong = np.cumsum(full_answer != truth)
    differ = np.cumsum(cheap_answer != full_answer)
    cut_ok = np.append(sure[1:] < sure[:-1], True)
    good = np.flatnonzero((cheap_wrong <= full_wrong) & (differ <= tolerance * kept) & cut_ok)
    return float(sure[good.max()]) if len(good) else None


def fit_ngrams(texts: list[str], chars: bool = True, max_chars: int | None = None) -> Ngrams:
    """Word (and character) n-gram TF-IDF fitted on the training texts (each clipped to `max_chars`)."""
    texts = [clip_text(text, max_chars) for text in texts]
    word = TfidfVectorizer(**TFIDF_OPTIONS).fit(texts)
    return Ngrams(word, TfidfVectorizer(**CHAR_TFIDF_OPTIONS).fit(texts) if chars else None, max_chars)


def save_classifier(student: EmbeddingClassifier, directory: Path) -> None:
    """Write the student folder `EmbeddingClassifier.load` reads: head arrays, encoder, TF-IDF vocabulary, manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"weights": student.weights, "bias": student.bias}
    if student.features.kind == "static":
        shutil.copytree(student.features.encoder_source, directory / STATIC_DIR, dirs_exist_ok=True)
    elif student.info.get("encoder_runtime") == "onnx" and student.features.encoder is not None:
        shutil.copytree(student.features.encoder_source, directory / ENCODER_DIR, dirs_exist_ok=True)
    elif student.features.encoder is not None:
        # torch quantizes at load, so the folder keeps the float weights.
        source, length = student.features.encoder_source, student.info["max_seq_length"]
        load_torch_encoder(source, length, quantize=False).save(str(directory / ENCODER_DIR))
    if student.features.tfidf is not None:
        save_ngrams(student.features.tfidf, directory, arrays)
    if student.early_exit is not None:
        arrays[EXIT_WEIGHTS], arrays[EXIT_BIAS] = student.early_exit.weights, student.early_exit.bias
    np.savez(directory / HEAD_FILE, **arrays)
    write_manifest(directory, student.kind, labels=student.labels, **student.info)


def save_ngrams(ngrams: Ngrams, directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """The vocabularies as JSON in the folder and their idf weights into `arrays` (the head file), as
    `Ngrams.load` reads them back."""
    parts = ((ngrams.word, VOCABULARY_FILE, "idf"), (ngrams.char, CHAR_VOCABULARY_FILE, "char_idf"))
    for vectorizer, file, key in parts:
        if vectorizer is not None:
            vocabulary = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
            (directory / file).write_text(json.dumps(vocabulary, ensure_ascii=False))
            arrays[key] = vectorizer.idf_.astype(np.float64)
    if ngrams.max_chars is not None:
        arrays[MAX_CHARS_KEY] = np.array(ngrams.max_chars)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of held-out logits."""

    def nll(log_t: float) -> float:
        probs = softmax(logits / np.exp(log_t))
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
    # Newton-CG: a few exact steps; lbfgs took 3x as long on 60k TF-IDF columns for the same answers.
    model = LogisticRegression(C=C, solver="newton-cg", max_iter=3000, random_state=seed).fit(x, y)
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
