"""Pictures of an evaluation, for people who would rather look than read (logged to MLflow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from stillroom.metrics.scoring import calibration_bins


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


def coverage_plot(
    confidence: Sequence[float],
    agree: Sequence[float],
    path: Path,
    threshold: float | None = None,
    target: float | None = None,
) -> Path:
    """Agreement of the answers the student would keep, against the share of traffic it keeps."""
    conf = np.asarray(confidence, dtype=float)
    order = np.argsort(-conf)
    kept_agreement = np.cumsum(np.asarray(agree, dtype=float)[order]) / np.arange(1, len(order) + 1)
    coverage = np.arange(1, len(order) + 1) / len(order)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(coverage, kept_agreement, label="test split")
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.2f}")
    if threshold is not None and len(conf):
        at = float(np.mean(conf >= threshold))
        ax.axvline(at, color="tab:red", linestyle="--", label=f"threshold {threshold:.3f} (validation)")
    ax.set_xlabel("coverage (share of requests answered by the student)")
    ax.set_ylabel("agreement with the teacher")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Coverage vs agreement, by confidence")
    return _save(fig, path)


def reliability_plot(confidence: Sequence[float], agree: Sequence[float], path: Path, bins: int = 10) -> Path:
    """Is a confidence of 0.9 right 9 times in 10? Bars on the diagonal mean the router can trust it."""
    found = calibration_bins(confidence, agree, bins)
    centers, observed, counts = [b[0] for b in found], [b[2] for b in found], [b[3] for b in found]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(centers, observed, width=0.9 / bins, alpha=0.8, label="agreement in bin")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for x, y, n in zip(centers, observed, counts, strict=True):
        ax.text(x, min(y + 0.02, 1.0), str(n), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("student confidence")
    ax.set_ylabel("agreement with the teacher")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability (test split; numbers are answers per bin)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
