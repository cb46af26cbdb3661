"""The image classifier student at inference: a calibrated linear head on what Pillow reads from an image's
bytes, beside the text around it.

For tasks whose calls carry an image and answer from a closed label set ("does this need converting to
JPEG?"). The image features are facts of the file (format, size, megapixels, bytes per pixel, alpha used,
frames, colour count and luminance entropy, EXIF camera), each also cut at thresholds learnt in training
(so a sharp rule of the teacher's, "at least 6 bits", is a feature the linear head can weigh); the text is
read by the text classifier's TF-IDF. A prompt's image comes as bytes on its `ImageRef`: a served request's
straight from the request, a logged call's from the blob store (`data.attach_image_bytes`), so the server,
the registered MLflow model and evaluation run this same code. An image that is missing or unreadable gets
confidence 0 and `valid: false`: the router sends it to the teacher. Milliseconds; no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix, hstack

from stillroom.content import BadRecord
from stillroom.images import colour_stats, describe
from stillroom.schema import Prediction
from stillroom.students.base import Prompt, last_user_turn, read_manifest
from stillroom.students.classifier import HEAD_FILE, LinearHead, Ngrams

EDGES_FILE = "image_edges.json"
FORMATS = ("image/jpeg", "image/png", "image/webp", "image/heif", "image/gif", "image/bmp", "image/tiff")
# The facts of one image, in the order of its feature vector; the formats are one-hot after them.
FACTS = (
    "log2_width", "log2_height", "megapixels", "bytes_per_pixel", "log2_bytes", "has_alpha", "alpha_used",
    "frames", "animated", "exif", "camera", "log2_colours", "entropy",
)  # fmt: skip
FEATURE_NAMES = (*FACTS, *(f"format={media}" for media in FORMATS), "format=other")


def image_facts(body: bytes) -> np.ndarray:
    """One image's feature vector (FEATURE_NAMES), from its bytes. BadRecord when they are not an image."""
    ref, image = describe(body)
    colours, entropy = colour_stats(image)
    pixels = max(1, (ref.width or 1) * (ref.height or 1))
    facts = [
        math.log2(ref.width or 1),
        math.log2(ref.height or 1),
        pixels / 1e6,
        len(body) / pixels,
        math.log2(len(body) + 1),
        float(bool(ref.has_alpha)),
        float(bool(ref.alpha_used)),
        math.log2(ref.frames or 1),
        float((ref.frames or 1) > 1),
        float(bool(ref.exif)),
        float(bool(ref.camera_make or ref.camera_model)),
        math.log2(colours + 1),
        entropy,
    ]
    formats = [float(ref.media_type == media) for media in FORMATS]
    return np.array([*facts, *formats, float(not any(formats))], dtype=np.float64)


def first_image(prompt: Prompt) -> bytes | None:
    """The bytes of the last user turn's first image (the one the task asks about), if it came with them."""
    for message in reversed(prompt):
        if message.role == "user":
            return message.images[0].body if message.images else None
    return None


def prompt_facts(prompts: Sequence[Prompt]) -> tuple[np.ndarray, np.ndarray]:
    """(facts, readable): a row of image facts per prompt, and whether its image was there and readable."""
    rows, readable = [], []
    for prompt in prompts:
        body = first_image(prompt)
        try:
            rows.append(image_facts(body) if body else np.zeros(len(FEATURE_NAMES)))
            readable.append(body is not None)
        except BadRecord:
            rows.append(np.zeros(len(FEATURE_NAMES)))
            readable.append(False)
    return np.vstack(rows) if rows else np.zeros((0, len(FEATURE_NAMES))), np.array(readable, dtype=bool)


class ImageFeatures:
    """Image facts standardised, each also cut at its learnt thresholds (x >= edge), beside the text's TF-IDF."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, edges: list[list[float]], text: Ngrams):
        self.mean, self.scale, self.edges, self.text = mean, scale, edges, text

    def matrix(self, facts: np.ndarray, texts: list[str]) -> csr_matrix:
        cuts = [facts[:, [column]] >= np.asarray(edges)[None, :] for column, edges in enumerate(self.edges) if edges]
        dense = np.hstack([(facts - self.mean) / self.scale, *cuts]).astype(np.float32)
        return hstack([csr_matrix(dense), self.text.transform(texts)]).tocsr()

    def transform(self, prompts: Sequence[Prompt]) -> tuple[csr_matrix, np.ndarray]:
        facts, readable = prompt_facts(prompts)
        return self.matrix(facts, [last_user_turn(p) for p in prompts]), readable


class ImageClassifier(LinearHead):
    kind = "image_classifier"

    def predict(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[Prediction]:
        x, readable = self.features.transform(prompts)
        probs = self.head_probabilities(x)
        best = probs.argmax(axis=1)
        return [
            Prediction(text=self.labels[i], confidence=float(probs[row, i]) * readable[row], valid=bool(readable[row]))
            for row, i in enumerate(best)
        ]

    @classmethod
    def load(cls, directory: Path) -> ImageClassifier:
        directory = Path(directory)
        manifest = read_manifest(directory)
        head = np.load(directory / HEAD_FILE)
        edges = json.loads((directory / EDGES_FILE).read_text())
        features = ImageFeatures(head["mean"], head["scale"], edges, Ngrams.load(directory, head))
        info = {key: value for key, value in manifest.items() if key not in ("kind", "labels")}
        return cls(features, manifest["labels"], head["weights"], head["bias"], info)
