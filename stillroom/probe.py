"""Measure what running a student costs, in a fresh process: cold load, latency, peak memory.

A fresh process is the only honest place for these numbers: in the evaluating process
the libraries are imported, the weights are in the page cache of this process's
allocator, and its peak memory counts everything evaluation did before.

    python -m stillroom.probe <student folder> <prompts.json> [--samples N] [--batch-size B]
                              [--long-prompts longest.json] [--blobs FOLDER] [--threads T] [--max-seconds S]

prints one JSON object. Each timed series (short inputs, the longest, batches) stops at `--samples`
requests or once it has run `--max-seconds`, whichever comes first, after at least MIN_SAMPLES: a
fast classifier is timed on all its samples, an LM that answers in a second on fewer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage: Linux carries ru_maxrss across exec,
    so a child of a big evaluating process would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3  # kB
    import resource  # not Linux: the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


MIN_SAMPLES = 5  # a series' fewest timings, whatever its time budget: a median needs a few


def _budget_spent(spent_ms: float, timings: int, minimum: int, max_seconds: float | None) -> bool:
    """Whether a series that took `spent_ms` over `timings` runs may stop: its budget is spent and it has `minimum`."""
    return max_seconds is not None and timings >= minimum and spent_ms >= max_seconds * 1000


def _timed_singles(student, chats: list, samples: int, max_seconds: float | None = None) -> list[float]:
    """Milliseconds per request, one request at a time, within the series' time budget."""
    times: list[float] = []
    for chat in chats[:samples]:
        if _budget_spent(sum(times), len(times), MIN_SAMPLES, max_seconds):
            break
        started = time.perf_counter()
        student.predict([chat])
        times.append((time.perf_counter() - started) * 1000)
    return times


def probe(
    model_dir: Path,
    prompts: list,
    samples: int,
    batch_size: int,
    long_prompts: list = (),
    blobs: Path | None = None,
    weights: str | None = None,
    max_seconds: float | None = None,
) -> dict:
    from stillroom.data import attach_image_bytes
    from stillroom.schema import Message
    from stillroom.students.base import load_student

    chats = [[Message(**m) for m in prompt] for prompt in prompts]
    long_chats = [[Message(**m) for m in prompt] for prompt in long_prompts]
    if blobs is not None:  # images come with their bytes, as a served request's do: reading them is not timed
        attach_image_bytes([*chats, *long_chats], blobs)
    # Import what loading needs first, so load_s is the model's load, not Python's imports.
    import_started = time.perf_counter()
    from stillroom.students import KINDS  # noqa: F401
    from stillroom.students.base import import_runtime, read_manifest

    manifest = read_manifest(model_dir)
    if manifest["kind"] == "lm":  # transformers imports lazily: name the classes to pay for them here
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: F401
    elif manifest["kind"] == "image_classifier":
        from stillroom.students import image_classifier  # noqa: F401  (Pillow, pillow-heif, scikit-learn)
    else:
        import_runtime(model_dir)  # the classifier's encoder runtime (onnxruntime, or torch), if it has one
        from tokenizers import Tokenizer  # noqa: F401  (static vectors and the ONNX encoder read word pieces)
    imports_s = time.perf_counter() - import_started
    rss_before = _rss_mb()

    started = time.perf_counter()
    student = load_student(model_dir, weights)
    load_s = time.perf_counter() - started
    rss_loaded = _rss_mb()

    student.predict([chats[0]])  # warm-up: first-call allocations are not a request's latency
    single = _timed_singles(student, chats[1 : samples + 1] or chats, samples, max_seconds)
    long_single = _timed_singles(student, long_chats, samples, max_seconds) if long_chats else []
    batch = (chats * (batch_size // len(chats) + 1))[:batch_size]
    batched: list[float] = []
    for _ in range(3):  # the median of three batches, or fewer when one batch already spent the budget
        if _budget_spent(sum(batched) * len(batch), len(batched), 1, max_seconds):
            break
        started = time.perf_counter()
        student.predict(batch, batch_size=batch_size)
        batched.append((time.perf_counter() - started) * 1000 / len(batch))
    peak_mb = _peak_rss_mb()
    return {
        "load_s": load_s,
        "imports_s": imports_s,
        "p50_ms": statistics.median(single),
        "p95_ms": _percentile(single, 0.95),
        "batch_size": len(batch),
        "batched_ms_per_request": statistics.median(batched),
        "memory_mb": rss_loaded - rss_before,
        "peak_memory_mb": peak_mb,
        "latency_samples": len(single),
        "latency_samples_long": len(long_single),
        "p50_long_ms": statistics.median(long_single) if long_single else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("prompts", type=Path, help="JSON list of prompts, each a list of {role, content}")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--long-prompts", type=Path, help="also time these (the longest inputs): p50_long_ms")
    parser.add_argument("--blobs", type=Path, help="the image bytes the prompts' images name, one file per SHA-256")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads, as the server pins them (default: torch's)"
    )
    parser.add_argument("--weights", help="an LM student's weights (float32, bf16, int8) instead of its manifest's")
    parser.add_argument(
        "--max-seconds", type=float, help=f"time each series at most this long (after {MIN_SAMPLES} requests)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    prompts = json.loads(args.prompts.read_text())
    if not prompts:
        parser.error("no prompts to time")
    long_prompts = json.loads(args.long_prompts.read_text()) if args.long_prompts else []
    measured = probe(
        args.model_dir, prompts, args.samples, args.batch_size, long_prompts, args.blobs, args.weights, args.max_seconds
    )
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
