"""A sentence encoder exported to ONNX (int8 weights by default), run by onnxruntime with no torch.

What the classifier student's embedding and hybrid features read at answer time: about 5 ms
for one request on 2 CPU cores at 64 word pieces, against ~30 ms for the same MiniLM in torch at 256,
and a load of a fraction of a second. The graph takes word-piece ids and returns the unit-length
mean-pooled sentence vector, as sentence-transformers pools. An input longer than the encoder's
window keeps its head and its tail (where a long text's first lines and its sign-off sit), so the
cost is capped whatever the input's length. The export is `embeddings.onnx_encoder`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ONNX_FILE = "encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def head_and_tail(ids: list[int], max_length: int, tail: int) -> list[int]:
    """`ids` (with [CLS] first and [SEP] last) cut to `max_length`: the first pieces and the last `tail`."""
    if len(ids) <= max_length:
        return ids
    body = ids[1:-1]
    tail = min(tail, max_length - 3)  # at least one head piece beside [CLS] and [SEP]
    kept = body[: max_length - 2 - tail] + (body[len(body) - tail :] if tail > 0 else [])
    return [ids[0], *kept, ids[-1]]


def cpu_session(path: Path) -> Any:
    """An onnxruntime session on the CPU, one thread by default (`STILLROOM_ONNX_THREADS`): a small encoder
    gains little from a second, and on 2 busy cores (a server answering several requests, a training run
    beside it) a second spinning thread doubles the latency."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("STILLROOM_ONNX_THREADS", "1"))
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """Texts to unit-length vectors through `encoder.onnx`; speaks SentenceTransformer's `encode`."""

    def __init__(self, directory: str | Path, max_seq_length: int = 64, tail_tokens: int = 16):
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        self.max_seq_length = max_seq_length
        self.tail_tokens = tail_tokens
        self.tokenizer = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.session = cpu_session(self.directory / ONNX_FILE)

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False, **_: object) -> np.ndarray:
        """Unit-length float32 vectors, one row per text. Each text runs alone: int8 quantizes activations
        per run, so a batch's padding and neighbours would shift a text's vector, and a served request
        must get the vector evaluation saw. (SentenceTransformer's other keyword arguments are accepted:
        the vectors are always normalised numpy.)"""
        return self.vectors(self.pieces(texts), show_progress_bar)

    def pieces(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's word-piece ids as the encoder reads them (head and tail kept), shape (1, n)."""
        return [
            np.array([head_and_tail(self.tokenizer.encode(text).ids, self.max_seq_length, self.tail_tokens)])
            for text in texts
        ]

    def vectors(self, pieces: list[np.ndarray], show_progress_bar: bool = False) -> np.ndarray:
        """`pieces` through the graph. onnxruntime releases the GIL while it runs, so another thread's
        Python work (the n-gram count beside it) goes on meanwhile."""
        if show_progress_bar:
            from tqdm.auto import tqdm

            pieces = tqdm(pieces, desc="encode", unit="text")
        vectors = [self._vector(ids) for ids in pieces]
        return np.stack(vectors) if vectors else np.zeros((0, self.dimension), dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    def _vector(self, ids: np.ndarray) -> np.ndarray:
        feeds = dict(zip(INPUT_NAMES, (ids, np.ones_like(ids), np.zeros_like(ids)), strict=True))
        return self.session.run(None, feeds)[0][0].astype(np.float32)
