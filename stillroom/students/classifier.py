"""The classifier student at inference: a calibrated linear head on sentence embeddings, TF-IDF, both,
or static vectors distilled from the encoder.

Milliseconds to answer (static and TF-IDF: about one, whatever the input's length). A student that
reads the encoder may carry an `EarlyExit`: its TF-IDF head answers what it is sure of, and only the
rest pays for the encoder. The folder
holds plain arrays and JSON (no pickle) with the encoder copied in, so it alone answers, offline.
`Features` is also what training fits the head on, so the texts are turned into the same matrix
at fit and answer time. Fitting is `classifier_train`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer

from stillroom.config import ClassifierFeatures
from stillroom.schema import Prediction
from stillroom.students.base import Prompt, Student, last_user_turn, read_manifest
from stillroom.students.onnx_encoder import OnnxEncoder

ENCODER_DIR = "encoder"
STATIC_DIR = "static"
HEAD_FILE = "head.npz"
EXIT_WEIGHTS, EXIT_BIAS = "exit_weights", "exit_bias"  # the early exit's head, in HEAD_FILE
VOCABULARY_FILE = "tfidf_vocabulary.json"
CHAR_VOCABULARY_FILE = "tfidf_char_vocabulary.json"
MAX_CHARS_KEY = "tfidf_max_chars"
TFIDF_OPTIONS: dict[str, Any] = {"sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2}
CHAR_TFIDF_OPTIONS: dict[str, Any] = {
    "sublinear_tf": True,
    "analyzer": "char_wb",
    "ngram_range": (2, 5),
    "min_df": 2,
    "max_features": 50_000,
}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def load_encoder(path: str, settings: dict[str, Any]) -> Any:
    """The encoder a student folder (or the training cache) holds, as its manifest `settings` say: ONNX
    (`encoder_runtime: onnx`), or a sentence-transformers folder in torch (folders from before ONNX)."""
    max_seq_length = int(settings.get("max_seq_length", 256))
    if settings.get("encoder_runtime") == "onnx":
        return OnnxEncoder(path, max_seq_length, int(settings.get("tail_tokens", 0)))
    return load_torch_encoder(path, max_seq_length, bool(settings.get("quantize", False)))


def load_torch_encoder(name_or_path: str, max_seq_length: int, quantize: bool) -> Any:
    """A private SentenceTransformer (not the shared cached one, whose sequence length we change)."""
    import torch
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(name_or_path, device="cpu")
    encoder.max_seq_length = max_seq_length
    if quantize:  # int8 weights for the linear layers: about twice as fast on CPU, same answers nearly always
        encoder = torch.ao.quantization.quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)
    return encoder


class StaticVectors:
    """A text as the mean of its word pieces' static vectors (distilled by `embeddings.static_embedder`).

    Only `tokenizers` and numpy: it loads in milliseconds and reads every piece of the input.
    """

    def __init__(self, directory: str | Path):
        from tokenizers import Tokenizer

        directory = Path(directory)
        self.directory = directory
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.vectors = np.load(directory / "vectors.npy")

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.vectors.shape[1]), dtype=np.float32)
        for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if encoding.ids:
                out[row] = self.vectors[encoding.ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def restore_tfidf(options: dict[str, Any], vocabulary: dict[str, int], idf: np.ndarray) -> TfidfVectorizer:
    """A fitted TF-IDF vectorizer from its stored vocabulary and idf weights (no pickle)."""
    vectorizer = TfidfVectorizer(**options, vocabulary=vocabulary)
    vectorizer.idf_ = idf
    return vectorizer


def clip_text(text: str, max_chars: int | None) -> str:
    """`text` cut to `max_chars`: its first three quarters and its last quarter (a long email's header
    and opening, and its sign-off), so reading it costs the same at any length."""
    if max_chars is None or len(text) <= max_chars:
        return text
    tail = max_chars // 4
    return text[: max_chars - tail] + "\n" + text[len(text) - tail :]


class GramCounts:
    """A fitted vectorizer's known n-grams in a text, counted: (columns, counts) for one text."""

    def __init__(self, vectorizer: TfidfVectorizer):
        self.vocabulary = vectorizer.vocabulary_
        self.analyzer = vectorizer.build_analyzer()

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        counts = Counter(self.analyzer(text))
        found = [(self.vocabulary[gram], count) for gram, count in counts.items() if gram in self.vocabulary]
        return np.array([c for c, _ in found], dtype=np.int64), np.array([n for _, n in found], dtype=np.float64)


class WordCharGramCounts(GramCounts):
    """The same counts for a `char_wb` vectorizer, word by word: its n-grams never cross a space, so a
    text's are its words', and each distinct word's known columns are looked up once and kept. Words
    repeat, in a text and across requests, so a text costs about a lookup per distinct word instead of
    some twenty n-grams per word (3-4 ms for a 1,500-character article, 0.5 once its words are known)."""

    MAX_WORDS = 50_000  # the cache (a few MB) is dropped when it grows past this many words

    def __init__(self, vectorizer: TfidfVectorizer):
        super().__init__(vectorizer)
        self.vectorizer = vectorizer
        self.preprocess = vectorizer.build_preprocessor()
        self.columns: dict[str, np.ndarray] = {}

    def word_columns(self, word: str) -> np.ndarray:
        found = self.columns.get(word)
        if found is None:
            grams = self.vectorizer._char_wb_ngrams(word)  # scikit-learn's own n-grams of one word
            found = np.array([self.vocabulary[g] for g in grams if g in self.vocabulary], dtype=np.int64)
            if len(self.columns) >= self.MAX_WORDS:
                self.columns = {}
            self.columns[word] = found
        return found

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        words = Counter(self.preprocess(self.vectorizer.decode(text)).split())
        if not words:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        parts = [self.word_columns(word) for word in words]
        columns = np.concatenate(parts)
        weights = np.repeat(np.fromiter(words.values(), dtype=np.float64, count=len(words)), [len(p) for p in parts])
        known, at = np.unique(columns, return_inverse=True)
        return known, np.bincount(at, weights=weights, minlength=len(known))


def gram_counts(vectorizer: TfidfVectorizer) -> GramCounts:
    return WordCharGramCounts(vectorizer) if vectorizer.analyzer == "char_wb" else GramCounts(vectorizer)


def tfidf_rows(vectorizer: TfidfVectorizer, counts: GramCounts, texts: Sequence[str]) -> Any:
    """What `vectorizer.transform(texts)` gives (sublinear tf, idf, l2 rows), from `counts` of each text's
    known n-grams: scikit-learn's own transform costs several times as much on one text, and was most of
    a TF-IDF answer's time."""
    if not (vectorizer.sublinear_tf and vectorizer.use_idf and vectorizer.norm == "l2"):
        return vectorizer.transform(texts)
    indptr, columns, values = [0], [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    for text in texts:
        row_columns, row_counts = counts(text)
        row = (np.log(row_counts) + 1.0) * vectorizer.idf_[row_columns]
        norm = np.linalg.norm(row)
        columns.append(row_columns)
        values.append(row / norm if norm else row)
        indptr.append(indptr[-1] + len(row_columns))
    shape = (len(texts), len(vectorizer.vocabulary_))
    matrix = csr_matrix((np.concatenate(values), np.concatenate(columns), indptr), shape=shape)
    matrix.sort_indices()
    return matrix


class Ngrams:
    """Word and character n-gram TF-IDF side by side. Words carry the topic; character n-grams carry what
    a word vocabulary splits or never saw: file extensions, version numbers, typos, names. A text longer
    than `max_chars` is read at its head and tail (`clip_text`), at fit and answer time alike."""

    def __init__(self, word: TfidfVectorizer, char: TfidfVectorizer | None = None, max_chars: int | None = None):
        self.word = word
        self.char = char
        self.max_chars = max_chars
        self.vectorizers = [self.word] if self.char is None else [self.word, self.char]
        self.counts = [gram_counts(vectorizer) for vectorizer in self.vectorizers]

    def blocks(self, texts: Sequence[str]) -> list[Any]:
        """The word block, then the character block if there is one (sparse, one row per text)."""
        texts = [clip_text(text, self.max_chars) for text in texts]
        return [tfidf_rows(v, counts, texts) for v, counts in zip(self.vectorizers, self.counts, strict=True)]

    def transform(self, texts: Sequence[str]) -> Any:
        return side_by_side(self.blocks(texts))

    @classmethod
    def load(cls, directory: Path, head: Any) -> Ngrams:
        word = restore_tfidf(TFIDF_OPTIONS, json.loads((directory / VOCABULARY_FILE).read_text()), head["idf"])
        char = None
        if (directory / CHAR_VOCABULARY_FILE).exists():  # folders from before character n-grams have none
            vocabulary = json.loads((directory / CHAR_VOCABULARY_FILE).read_text())
            char = restore_tfidf(CHAR_TFIDF_OPTIONS, vocabulary, head["char_idf"])
        max_chars = int(head[MAX_CHARS_KEY]) if MAX_CHARS_KEY in head else None  # folders from before the cap
        return cls(word, char, max_chars)


def side_by_side(blocks: list[Any]) -> Any:
    """Feature blocks as one matrix (sparse if any block is), columns in the blocks' order."""
    if len(blocks) == 1:
        return blocks[0]
    return hstack([csr_matrix(block) if isinstance(block, np.ndarray) else block for block in blocks]).tocsr()


# Where a hybrid request's n-grams are counted while its encoder runs (`Features.blocks`).
NGRAM_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stillroom-ngrams")


class Features:
    """Turns texts into the matrix a head reads: embeddings, TF-IDF, or both side by side."""

    def __init__(
        self,
        kind: ClassifierFeatures,
        encoder: Any = None,
        tfidf: Ngrams | None = None,
        encoder_source: str | None = None,
    ):
        self.kind = kind
        self.encoder = encoder
        self.tfidf = tfidf
        self.encoder_source = encoder_source  # where the float weights are, to save a quantized encoder

    def blocks(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> list[Any]:
        """The feature blocks in column order: sentence vectors (dense), then n-grams (sparse).

        With both kinds and an ONNX encoder, the text is cut into word pieces here, the n-grams are
        counted on a worker thread, and onnxruntime (which releases the GIL) runs here meanwhile: on two
        cores a request costs about the slower of the two rather than their sum. The worker starts only
        once this thread needs no Python, so neither waits for the other's turn at the GIL.
        """
        texts = list(texts)
        if self.kind == "static":
            return [self.encoder.transform(texts)]
        if self.kind == "tfidf":
            return self.tfidf.blocks(texts)
        if self.kind == "hybrid" and isinstance(self.encoder, OnnxEncoder):
            pieces = self.encoder.pieces(texts)
            ngrams = NGRAM_THREADS.submit(self.tfidf.blocks, texts)
            return [self.encoder.vectors(pieces, progress), *ngrams.result()]
        vectors = self.vectors(texts, batch_size=batch_size, progress=progress)
        return [vectors, *(self.tfidf.blocks(texts) if self.kind == "hybrid" else [])]

    def vectors(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """The encoder's sentence vectors alone (unit length, one row per text; ONNX or torch alike)."""
        return self.encoder.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )

    def transform(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> Any:
        return side_by_side(self.blocks(texts, batch_size=batch_size, progress=progress))


def linear_probabilities(x: Any, columns: np.ndarray, bias: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of `x @ columns + bias` over `temperature`, where `x` is a feature matrix or its blocks in
    column order (`Features.blocks`), which spares joining them into one sparse matrix per request."""
    blocks = x if isinstance(x, list) else [x]
    logits = np.tile(bias, (blocks[0].shape[0], 1))
    start = 0
    for block in blocks:
        logits += np.asarray(block @ columns[start : start + block.shape[1]])
        start += block.shape[1]
    if start != columns.shape[0]:
        raise ValueError(f"features have {start} columns, the head reads {columns.shape[0]}")
    return softmax(logits / temperature)


class LinearHead(Student):
    """A temperature-scaled linear head over a feature matrix: what the text and image classifiers share."""

    def __init__(self, features: Any, labels: list[str], weights: np.ndarray, bias: np.ndarray, info: dict):
        self.features = features
        self.labels = labels
        self.weights = weights.astype(np.float32)  # (n_labels, dim)
        self.columns = np.ascontiguousarray(self.weights.T)  # (dim, n_labels): a block's rows are contiguous
        self.bias = bias.astype(np.float32)
        self.info = info  # manifest fields: features, temperature, embedder settings

    @property
    def temperature(self) -> float:
        return float(self.info.get("temperature", 1.0))

    def head_probabilities(self, x: Any) -> np.ndarray:
        return linear_probabilities(x, self.columns, self.bias, self.temperature)


@dataclass
class EarlyExit:
    """A TF-IDF head that answers first: where its confidence reaches `threshold` the encoder never runs.

    Training picks the threshold on held-out answers (`classifier_train.early_exit_threshold`) where
    exiting cost no accuracy against the full head, so most requests take the n-grams' milliseconds
    and only the unsure ones pay for the encoder.
    """

    weights: np.ndarray  # (n_labels, n-gram columns)
    bias: np.ndarray
    temperature: float
    threshold: float

    def __post_init__(self) -> None:
        self.columns = np.ascontiguousarray(self.weights.astype(np.float32).T)
        self.bias = self.bias.astype(np.float32)

    def probabilities(self, ngram_blocks: list[Any]) -> np.ndarray:
        return linear_probabilities(ngram_blocks, self.columns, self.bias, self.temperature)


class EmbeddingClassifier(LinearHead):
    kind = "classifier"

    def __init__(self, *args: Any, early_exit: EarlyExit | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.early_exit = early_exit

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if self.early_exit is None:
            return self.head_probabilities(self.features.blocks(texts, batch_size=batch_size))
        texts = list(texts)
        ngrams = self.features.tfidf.blocks(texts)
        probs = self.early_exit.probabilities(ngrams)
        unsure = np.flatnonzero(probs.max(axis=1) < self.early_exit.threshold)
        if len(unsure):
            vectors = self.features.vectors([texts[i] for i in unsure], batch_size=batch_size)
            rest = [block[unsure] for block in ngrams] if self.features.kind == "hybrid" else []
            probs[unsure] = self.head_probabilities([vectors, *rest])
        return probs

    def predict(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[Prediction]:
        probs = self.probabilities([last_user_turn(p) for p in prompts], batch_size=batch_size)
        best = probs.argmax(axis=1)
        return [Prediction(text=self.labels[i], confidence=float(probs[row, i])) for row, i in enumerate(best)]

    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        if manifest.get("features", "embedding") not in ("embedding", "hybrid"):
            return
        if manifest.get("encoder_runtime") == "onnx":
            import onnxruntime  # noqa: F401
        else:
            import sentence_transformers  # noqa: F401  (and torch with it)

    @classmethod
    def load(cls, directory: Path) -> EmbeddingClassifier:
        directory = Path(directory)
        manifest = read_manifest(directory)
        head = np.load(directory / HEAD_FILE)
        kind = manifest.get("features", "embedding")  # folders from before the candidates were embedding-only
        encoder = tfidf = None
        source = str(directory / ENCODER_DIR)
        if kind == "static":
            encoder = StaticVectors(directory / STATIC_DIR)
        elif kind != "tfidf":
            encoder = load_encoder(source, manifest)
        exit_settings = manifest.get("early_exit")  # folders from before early exits have none
        if kind in ("tfidf", "hybrid") or exit_settings:
            tfidf = Ngrams.load(directory, head)
        early_exit = None
        if exit_settings:
            threshold, temperature = float(exit_settings["threshold"]), float(exit_settings["temperature"])
            early_exit = EarlyExit(head[EXIT_WEIGHTS], head[EXIT_BIAS], temperature, threshold)
        info = {key: value for key, value in manifest.items() if key not in ("kind", "labels")}
        features = Features(kind, encoder, tfidf, source)
        return cls(features, manifest["labels"], head["weights"], head["bias"], info, early_exit=early_exit)
