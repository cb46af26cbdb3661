"""Pictures of an evaluation, for people who would rather look than read (logged to MLflow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def confusion_matrix_plot(teacher: Sequence[str], student: Sequence[str], path: Path) -> Path:
    labels = sorted(set(teacher) | set(student))
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    for t, s in zip(teacher, student, strict=True):
        counts[index[t], index[s]] += 1
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("student")
    ax.set_ylabel("teacher")
    for i in range(len(labels)):
        for j in range(len(labels)):
            color = "white" if counts[i, j] > counts.max() / 2 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color)
    ax.set_title("Student vs teacher on the test split")
    return _save(fig, path)


def coverage_plot(confidence: Sequence[float], agree: Sequence[float], path: Path) -> Path:
    """Agreement of the answers the student would keep, against the share of traffic it keeps."""
    order = np.argsort(-np.asarray(confidence))
    kept_agreement = np.cumsum(np.asarray(agree, dtype=float)[order]) / np.arange(1, len(order) + 1)
    coverage = np.arange(1, len(order) + 1) / len(order)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(coverage, kept_agreement)
    ax.set_xlabel("coverage (share of requests answered by the student)")
    ax.set_ylabel("agreement with the teacher")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Coverage vs agreement, by confidence")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
