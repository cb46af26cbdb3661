"""Training the span student: find each answer value in its input, tag the word pieces, fine-tune the encoder.

A task qualifies when its answers are an array of strings or an object of string and string-array
fields (`answer_slots`), and nearly every value is a span of its input (`align_answers`). A value
may occur more than once in the input (a name in the text and again in a list); the answers of an
array are matched in order, either each at its first place after the last (`first`) or each at its
last place before the next (`last`). The task keeps the way whose matched spans sit in the more
regular surroundings (`context_entropy`): they are what the tagger has to learn to tell apart.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stillroom.answers import parse_json
from stillroom.config import SpanParams
from stillroom.embeddings import quantize_int8, resolve_embedder, trace_to_onnx
from stillroom.metrics.scoring import per_example_agreement
from stillroom.schema import DatasetRow, OutputFormat, Prediction
from stillroom.students.base import Student, write_manifest
from stillroom.students.json_answers import items_never_repeat
from stillroom.students.span import (
    ENCODER_DIR,
    ONNX_FILE,
    SHAPES,
    SHAPES_FILE,
    TOKENIZER_FILE,
    OnnxTagger,
    SpanStudent,
    TorchTagger,
    Windows,
    at_token_edge,
    head_to_read,
    line_end,
    tag_logits,
    tag_names,
    window_tokenizer,
)

log = logging.getLogger(__name__)

Span = tuple[int, int]
NEARLY_ALL = 0.98  # of the training values a fact about them must hold for (whole tokens, to a line's end) ...
EVIDENCE = 20  # ... over at least this many, before predicted spans are grown to match
POWER_BOUND = 6.0  # the confidence power is fitted within e^-6 .. e^6


def answer_slots(answers: Sequence[Any]) -> tuple[str, list[dict]] | None:
    """("array", [one slot]) when every answer is an array of strings; ("object", slots) when every answer is an
    object whose fields are strings or arrays of strings, the same fields throughout; else None."""
    if not answers:
        return None
    if all(isinstance(a, list) and all(isinstance(v, str) for v in a) for a in answers):
        return "array", [{"key": None, "many": True}]
    if not all(isinstance(a, dict) and a for a in answers):
        return None
    keys = list(answers[0])
    if any(list(a) != keys for a in answers):
        return None
    slots = []
    for key in keys:
        values = [a[key] for a in answers]
        if all(isinstance(v, str) for v in values):
            slots.append({"key": key, "many": False})
        elif all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in values):
            slots.append({"key": key, "many": True})
        else:
            return None
    return "object", slots


def slot_values(answer: Any, shape: str, slots: Sequence[dict]) -> list[list[str]]:
    if shape == "array":
        return [list(answer)]
    return [list(answer[s["key"]]) if s["many"] else [answer[s["key"]]] for s in slots]


def find_in(text: str, value: str, input_is_json: bool) -> list[Span]:
    """Every place the value is written in the text (JSON-escaped, when the input is JSON and it is not found as is)."""
    forms = [value] + ([json.dumps(value, ensure_ascii=False)[1:-1]] if input_is_json else [])
    for form in forms:
        if not form:
            continue
        places, at = [], text.find(form)
        while at >= 0:
            places.append((at, at + len(form)))
            at = text.find(form, at + 1)
        if places:
            return places
    return []


def match_in_order(places: Sequence[Sequence[Span]], way: str) -> list[Span] | None:
    """One place per value, in the values' order and not overlapping: each value's first place after the
    previous one (`first`) or, from the end, each value's last place before the next one (`last`)."""
    chosen: list[Span] = []
    if way == "first":
        end = 0
        for options in places:
            pick = next((p for p in options if p[0] >= end), None)
            if pick is None:
                return None
            chosen.append(pick)
            end = pick[1]
        return chosen
    start = math.inf
    for options in reversed(places):
        pick = next((p for p in reversed(options) if p[1] <= start), None)
        if pick is None:
            return None
        chosen.append(pick)
        start = pick[0]
    return chosen[::-1]


def context_entropy(texts: Sequence[str], spans: Sequence[Sequence[Span]], width: int = 3) -> float:
    """Entropy (bits) of the characters around the matched spans: lower means the spans sit in regular places."""
    around = Counter(
        (text[max(0, a - width) : a], text[b : b + width])
        for text, row in zip(texts, spans, strict=True)
        for a, b in row
    )
    total = sum(around.values())
    return -sum(n / total * math.log2(n / total) for n in around.values()) if total else 0.0


def matched_spans(texts: Sequence[str], rows: Sequence[list[list[Span]] | None]) -> list[tuple[str, list[Span]]]:
    """Each matched row's text with all its spans, whatever the slot; rows left unmatched are left out."""
    return [(text, [s for slot in row for s in slot]) for text, row in zip(texts, rows, strict=True) if row is not None]


def align_answers(
    texts: Sequence[str], answers: Sequence[Any], shape: str, slots: Sequence[dict], input_is_json: bool
) -> tuple[list[list[list[Span]] | None], str]:
    """Each row's spans per slot (None for a row whose values are not all found), with the way chosen."""
    found = [
        [[find_in(text, value, input_is_json) for value in values] for values in slot_values(answer, shape, slots)]
        for text, answer in zip(texts, answers, strict=True)
    ]
    best: tuple[float, str, list] | None = None
    for way in ("first", "last"):
        rows = []
        for places in found:
            row = [match_in_order(slot, way) for slot in places]
            rows.append(None if any(r is None for r in row) else row)
        kept = matched_spans(texts, rows)
        entropy = context_entropy([t for t, _ in kept], [s for _, s in kept])
        score = (-len(kept), entropy)
        if best is None or score < best[0]:
            best = (score, way, rows)
    assert best is not None
    return best[2], best[1]


READ_EVIDENCE = 20  # matched training rows before the tagger may read only the inputs' heads


def nearly_always(facts: Sequence[bool]) -> bool:
    """Whether a fact about the teacher's values (one per matched value: is it whole tokens of the input, does
    it run to its line's end) holds nearly always, over enough values to tell."""
    return len(facts) >= EVIDENCE and sum(facts) >= NEARLY_ALL * len(facts)


def characters_to_read(matched: Sequence[tuple[str, Sequence[Span]]]) -> int | None:
    """How much of an input's head the tagger reads: the furthest end of any training answer and half as much
    again (at least 300 characters), when that is under half the median training input (the answers sit in
    long inputs' first lines); else None, read everything. The furthest answer, not a percentile: one answer
    in a signature at the end is enough to keep reading whole inputs."""
    if len(matched) < READ_EVIDENCE:
        return None
    furthest = max((b for _, spans in matched for _, b in spans), default=0)
    limit = furthest + max(300, furthest // 2)
    return limit if limit < 0.5 * float(np.median([len(text) for text, _ in matched])) else None


def word_tags(windows: Windows, spans: Sequence[Sequence[Span]]) -> dict[int, int]:
    """The tag of every word a span covers (by its characters): B for the first, I after."""
    tags: dict[int, int] = {}
    for slot, slot_spans in enumerate(spans):
        for a, b in slot_spans:
            covered = [k for k, (start, end) in enumerate(windows.words) if start < b and end > a]
            for n, word in enumerate(covered):
                tags[word] = 1 + 2 * slot + (1 if n else 0)
    return tags


def window_examples(windows: Windows, tags: dict[int, int]) -> list[tuple[list[int], list[int], list[int]]]:
    """(input ids, case ids, tag ids) per window: a word's first piece carries its tag, the other pieces
    and the special tokens -100 (no loss)."""
    return [
        (ids, shapes, [tags.get(first[t], 0) if t in first else -100 for t in range(len(ids))])
        for ids, shapes, first in zip(windows.input_ids, windows.shapes, windows.first_pieces, strict=True)
    ]


def train_span(
    train: Sequence[DatasetRow],
    validation: Sequence[DatasetRow],
    params: SpanParams,
    out_dir: Path,
    seed: int = 0,
    progress: bool = False,
    json_schema: dict | None = None,
) -> tuple[SpanStudent, dict[str, Any]]:
    """Fine-tune the encoder to tag the answers' spans, keep the epoch with the best validation agreement, save."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    answers = [parse_json(row.target) for row in train]
    layout = answer_slots(answers)
    if layout is None:
        raise ValueError("the span rung needs answers that are arrays of strings or objects of string fields")
    shape, slots = layout
    texts = [row.input_text for row in train]
    input_is_json = all(parse_json(t) is not None for t in texts)
    spans, way = align_answers(texts, answers, shape, slots, input_is_json)
    aligned = sum(s is not None for s in spans)
    if aligned < params.min_aligned * len(train):
        raise ValueError(f"only {aligned} of {len(train)} training answers are spans of their inputs")
    values = [value for answer in answers for slot in slot_values(answer, shape, slots) for value in slot]
    matched = matched_spans(texts, spans)
    # Per slot: is each matched value a whole whitespace-delimited token run of its input? Does it run on to
    # its line's end (an email's subject does, a sender's name in `"Jane Doe" <jd@...>` does not)?
    slot_edges: list[list[bool]] = [[] for _ in slots]
    slot_line_ends: list[list[bool]] = [[] for _ in slots]
    for text, row_spans in zip(texts, spans, strict=True):
        for index, slot_spans in enumerate(row_spans or []):
            slot_edges[index] += [
                at_token_edge(text, a - 1, input_is_json) and at_token_edge(text, b, input_is_json)
                for a, b in slot_spans
            ]
            slot_line_ends[index] += [line_end(text, b) == b for _, b in slot_spans]
    edges = [edge for each in slot_edges for edge in each]
    slots = [
        {**slot, "whole_tokens": nearly_always(each), "to_line_end": nearly_always(ends)}
        for slot, each, ends in zip(slots, slot_edges, slot_line_ends, strict=True)
    ]
    for slot in slots:  # a single value (an object's string field) the teacher always gave: never answered empty
        if not slot["many"]:
            slot["required"] = all(answer[slot["key"]] != "" for answer in answers)
    info: dict[str, Any] = {
        "encoder": params.encoder,
        "answer_shape": shape,
        "slots": slots,
        "tags": tag_names(slots),
        "input_is_json": input_is_json,
        "unique_items": items_never_repeat(answers),
        "json_schema": json_schema,
        "max_length": params.max_length,
        "stride": params.stride,
        "alignment": way,
        # The teacher copies whole whitespace-delimited tokens (nearly always, over enough values): spans are grown
        # to them. People in tweets are not (`Levin,` gives `Levin`: 73%); first words of a JSON list are (99.6%).
        # Each slot also says it for itself: an email's subject line is whole tokens, its sender's quoted name not.
        "whole_tokens": nearly_always(edges),
        "read_chars": characters_to_read(matched),
        # No value holds a line break: a tagged run across one is two spans (a subject line never runs on into
        # the body).
        "one_line_values": len(values) >= EVIDENCE and not any("\n" in value for value in values),
    }
    torch.manual_seed(seed)
    path = resolve_embedder(params.encoder)
    pieces = AutoTokenizer.from_pretrained(path).backend_tokenizer.to_str()
    tokenizer = window_tokenizer(pieces, params.max_length, params.stride)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the new tag head as "missing": that is the point
    try:
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(info["tags"]))
    finally:
        hf_logging.set_verbosity(verbosity)
    shape_embedding = torch.nn.Embedding(len(SHAPES), model.config.hidden_size)
    torch.nn.init.zeros_(shape_embedding.weight)
    student = SpanStudent(TorchTagger(model, shape_embedding), tokenizer, info)

    examples = []
    for text, row_spans in zip(texts, spans, strict=True):
        if row_spans is not None:
            windows = Windows(student.tokenizer, head_to_read(text, info["read_chars"]))
            examples += window_examples(windows, word_tags(windows, row_spans))
    started = time.perf_counter()
    curve, budget = fit(student, examples, validation, params, seed, progress)
    best = max(curve, key=lambda c: c["agreement"])
    stats = {
        "rung": "span",
        "n_train": len(train),
        "n_aligned": aligned,
        "alignment": way,
        "n_windows": len(examples),
        "batch_size": batch_size_for(len(examples), params),
        "train_seconds": round(time.perf_counter() - started, 1),
        "chosen_epoch": best["epoch"],
        "validation_agreement": best["agreement"] if validation else None,
        **budget,
        "curve": curve,  # by step, as register logs LM curves: the epoch's mean loss and validation agreement
        "agreement_curve": curve if validation else [],
    }
    save_span(student, out_dir)
    answers: list[Prediction] = []  # the served tagger's on validation, confidence unscaled (no power yet)
    if params.runtime == "onnx":
        student, export, answers = export_or_keep_torch(student, out_dir, validation, params.export_tolerance)
        stats.update(export)  # flat scalars, so the stage summary and the registry keep them
        if student.info.get("runtime") == "onnx":
            stats["validation_agreement"] = export["validation_agreement_onnx"]
    if validation:
        answers = answers or student.predict([row.prompt for row in validation])
        agreement = per_example_agreement("json", [a.text for a in answers], [row.target for row in validation])
        power = confidence_power([math.log(max(a.confidence, 1e-300)) for a in answers], agreement)
        student.info["confidence_power"] = stats["confidence_power"] = power
        write_manifest(out_dir, student.kind, **student.info)
    return student, stats


def confidence_power(log_probabilities: Sequence[float], agreement: Sequence[float]) -> float:
    """The power that calibrates the answers' probabilities (`span.decode`) on validation: each
    answer's agreement with the teacher fitted by its probability raised to it, with a standard normal prior
    on the power's log (the tagger's own probabilities are right within a factor of e or so). One number, so
    the order the router reads stays the tagger's own and a small set cannot overfit it.

    Words read as independent make long inputs look unsure (an email-header tagger's right answers topped out
    at 0.98, under the router's 99%) and noisy labels look sure; the power corrects either way. The prior
    matters when validation has no miss: the likelihood alone would then make every answer sure (a tagger
    right on 60 of 60 emails went on to route 98% of test emails at 0.975), the prior keeps the answers it
    doubts doubtful (62% routed at 1.0)."""
    from scipy.optimize import minimize_scalar

    logs, right = np.asarray(log_probabilities, dtype=float), np.asarray(agreement, dtype=float)

    def loss(log_power: float) -> float:
        chance = np.clip(np.exp(np.exp(log_power) * logs), 1e-12, 1 - 1e-12)
        return float(-np.sum(right * np.log(chance) + (1 - right) * np.log(1 - chance)) + log_power**2 / 2)

    fitted = minimize_scalar(loss, bounds=(-POWER_BOUND, POWER_BOUND), method="bounded")
    return round(float(np.exp(fitted.x)), 6)


def padded(examples: Sequence[tuple[list[int], list[int], list[int]]]) -> tuple[Any, Any, Any, Any]:
    """input ids, case ids, tags (-100 on padding) and attention mask of a batch, as tensors."""
    import torch

    longest = max(len(ids) for ids, _, _ in examples)

    def pad(rows: Sequence[list[int]], value: int) -> Any:
        return torch.tensor([row + [value] * (longest - len(row)) for row in rows])

    ids, shapes, tags = zip(*examples, strict=True)
    return pad(ids, 0), pad(shapes, 0), pad(tags, -100), pad([[1] * len(row) for row in ids], 0)


def batch_size_for(n_examples: int, params: SpanParams) -> int:
    """`batch_size`, made smaller (down to 4) for a small set so an epoch still makes `min_steps_per_epoch`
    updates: on 180 email windows, batches of 16 reached 0.75 validation agreement in 12 epochs and
    batches of 8 0.975 in 9, at the same learning rate."""
    return max(4, min(params.batch_size, n_examples // params.min_steps_per_epoch))


class LinearDecay:
    """The learning rate's factor: a warm-up over `warmup` steps times a line from 1 down to zero at `horizon`.
    `end_at` moves the zero nearer from a given step on, continuing from the factor reached there, so a run
    the time budget shortens still ends annealed instead of cut off at a high rate."""

    def __init__(self, warmup: int, horizon: int):
        self.warmup, self.horizon = warmup, horizon
        self.from_step, self.from_factor = 0, 1.0

    def decay(self, step: int) -> float:
        return max(0.0, self.from_factor * (1 - (step - self.from_step) / max(1, self.horizon - self.from_step)))

    def end_at(self, step: int, horizon: int) -> None:
        self.from_step, self.from_factor, self.horizon = step, self.decay(step), horizon

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) * self.decay(step)


def epochs_within_budget(seconds: float, elapsed: float, epochs_done: int, planned: int) -> int:
    """How many epochs start within `seconds`, at the mean time the `epochs_done` so far took (their judging on
    validation included): at least those done, at most `planned`. The last may end past the budget by up to
    an epoch: stopping an epoch short instead cost the email-header task 3 of 60 test emails."""
    per_epoch = elapsed / max(1, epochs_done)
    return max(epochs_done, min(planned, epochs_done + math.ceil(max(0.0, seconds - elapsed) / per_epoch)))


def fit(
    student: SpanStudent,
    examples: list[tuple[list[int], list[int], list[int]]],
    validation: Sequence[DatasetRow],
    params: SpanParams,
    seed: int,
    progress: bool = False,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """AdamW with warm-up and linear decay; after each epoch the student answers the validation rows, and
    the epoch with the best agreement is put back at the end. Training stops `patience` epochs after the
    best (never before `min_epochs`: a tagger first learns that nearly every word is O) or at `max_minutes`:
    after each epoch the epochs that can still start within it are counted, and when fewer than planned can,
    the rate decays to zero at the end of the last of them (`LinearDecay`). A step an epoch's time past the
    budget (any step past it in the first epoch) ends its epoch, which is judged like the others. Returns the
    curve and what the budget did."""
    import torch
    from tqdm.auto import tqdm

    model, shapes = student.tagger.model, student.tagger.shape_embedding
    # The new parts (tag head, case vectors) learn at head_learning_rate: at the encoder's rate a small set
    # spends its first epochs tagging every word O.
    head = [p for name, p in model.named_parameters() if name.startswith("classifier.")]
    encoder = [p for name, p in model.named_parameters() if not name.startswith("classifier.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder, "lr": params.learning_rate},
            {"params": [*head, *shapes.parameters()], "lr": params.head_learning_rate},
        ],
        weight_decay=0.01,
    )
    batch_size = batch_size_for(len(examples), params)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * params.max_epochs
    rate = LinearDecay(max(1, total // 10), total)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    seconds, last_epoch, out_of_time = params.max_minutes * 60, params.max_epochs, False
    per_epoch = 0.0  # the mean time an epoch took so far, its judging included
    rng, started = random.Random(seed), time.perf_counter()
    curve: list[dict[str, float]] = []
    best_state, best = None, -math.inf
    epochs = tqdm(range(1, params.max_epochs + 1), desc="span epochs", unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        rng.shuffle(examples)
        losses = []
        for start in range(0, len(examples), batch_size):
            input_ids, shape_ids, tags, mask = padded(examples[start : start + batch_size])
            logits = tag_logits(model, shapes, input_ids, shape_ids, mask)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tags.flatten(), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if time.perf_counter() - started > seconds + per_epoch:  # an epoch's time past the budget: stop now
                out_of_time = True
                break
        model.eval()
        mean_loss = float(np.mean(losses))
        agreement = validation_agreement(student, validation) if validation else -mean_loss
        curve.append({"step": schedule.last_epoch, "epoch": epoch, "loss": mean_loss, "agreement": agreement})
        epochs.set_postfix(loss=f"{mean_loss:.4f}", agreement=f"{agreement:.3f}")
        if agreement > best:
            best = agreement
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}, shapes.weight.detach().clone()
        elapsed = time.perf_counter() - started
        per_epoch = elapsed / epoch
        fitting = epochs_within_budget(seconds, elapsed, epoch, params.max_epochs)
        if fitting < last_epoch:
            if last_epoch == params.max_epochs:
                log.warning(
                    "span training planned %d epochs, %d can start within train.span.max_minutes (%g): the "
                    "learning rate now decays to zero at the end of epoch %d",
                    params.max_epochs,
                    fitting,
                    params.max_minutes,
                    fitting,
                )
            last_epoch = fitting
            rate.end_at(schedule.last_epoch, last_epoch * steps_per_epoch)
        waited = epoch - max(curve, key=lambda c: c["agreement"])["epoch"]
        if (epoch >= params.min_epochs and waited >= params.patience) or out_of_time or epoch >= last_epoch:
            break
    assert best_state is not None
    model.load_state_dict(best_state[0])
    shapes.weight.data.copy_(best_state[1])
    model.eval()
    budget = {
        "max_minutes": params.max_minutes,
        "planned_epochs": params.max_epochs,
        "budget_epochs": last_epoch,  # the epochs that could start within max_minutes (planned_epochs: all)
        "stopped_at_budget": out_of_time or (last_epoch < params.max_epochs and len(curve) >= last_epoch),
    }
    return curve, budget


def validation_agreement(student: Student, rows: Sequence[DatasetRow], output_format: OutputFormat = "json") -> float:
    """Mean agreement of the student's answers with the teacher's on the rows: what the ladder compares."""
    answers = [p.text for p in student.predict([row.prompt for row in rows])]
    return float(np.mean(per_example_agreement(output_format, answers, [row.target for row in rows])))


def save_span(student: SpanStudent, directory: Path) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    student.tagger.model.save_pretrained(directory / ENCODER_DIR)
    (directory / ENCODER_DIR / TOKENIZER_FILE).write_text(student.tokenizer.to_str(), encoding="utf-8")
    save_file({"weight": student.tagger.shape_embedding.weight.detach().contiguous()}, directory / SHAPES_FILE)
    write_manifest(directory, student.kind, **student.info)


def export_onnx(tagger: TorchTagger, target: Path) -> None:
    """The tagger (case vectors included) as a float32 ONNX graph: word pieces, attention mask and case ids
    in, tag logits out."""
    import torch

    class Tagger(torch.nn.Module):
        def __init__(self, model: Any, shape_embedding: Any):
            super().__init__()
            self.model, self.shape_embedding = model, shape_embedding

        def forward(self, input_ids: Any, attention_mask: Any, shape_ids: Any) -> Any:
            return tag_logits(self.model, self.shape_embedding, input_ids, shape_ids, attention_mask)

    example = torch.tensor([[101, 2019, 2742, 102]])
    inputs = (example, torch.ones_like(example), torch.zeros_like(example))
    names = ["input_ids", "attention_mask", "shape_ids"]
    output = ("logits", {0: "batch", 1: "pieces"})
    trace_to_onnx(Tagger(tagger.model, tagger.shape_embedding), inputs, names, output, target)


def export_or_keep_torch(
    student: SpanStudent, directory: Path, validation: Sequence[DatasetRow], tolerance: float
) -> tuple[SpanStudent, dict[str, Any], list[Prediction]]:
    """Serve the tagger as an ONNX graph (the torch weights leave the folder) when its validation agreement
    is within `tolerance` of the torch model's: int8 weights scaled per output channel first (a third of
    torch's time per input, a quarter of its size), else the float32 graph (torch's answers, still without
    torch at answer time), else the folder stays in torch. On the people task (112 validation rows) per-tensor
    int8 scales cost 2.8 points and changed 9% of answers; per channel 0.6-1.2 points and 2.7-3.6%. Without
    validation rows nothing can vouch for an export, so torch stays. Also returns the kept tagger's
    validation answers."""
    if not validation:
        return student, {"runtime": "torch", "export_reason": "no validation rows to check an export on"}, []
    target = directory / ENCODER_DIR / ONNX_FILE
    float_graph = target.with_name("float.onnx")
    export_onnx(student.tagger, float_graph)
    prompts, targets = [row.prompt for row in validation], [row.target for row in validation]
    torch_predictions = student.predict(prompts)
    torch_answers = [p.text for p in torch_predictions]
    report: dict[str, Any] = {
        "runtime": "torch",
        "validation_agreement_torch": float(np.mean(per_example_agreement("json", torch_answers, targets))),
    }
    for weights in ("int8", "float32"):
        if weights == "int8":
            quantize_int8(float_graph, target, per_channel=True)
        else:
            float_graph.replace(target)
        exported = SpanStudent(
            OnnxTagger(target), student.tokenizer, {**student.info, "runtime": "onnx", "onnx_weights": weights}
        )
        onnx_predictions = exported.predict(prompts)
        onnx_answers = [p.text for p in onnx_predictions]
        agreement = float(np.mean(per_example_agreement("json", onnx_answers, targets)))
        report[f"validation_agreement_onnx_{weights}"] = agreement
        if agreement >= report["validation_agreement_torch"] - tolerance:
            same = float(np.mean([a == b for a, b in zip(torch_answers, onnx_answers, strict=True)]))
            report.update(runtime="onnx", onnx_weights=weights, export_same_answers=same)
            report["validation_agreement_onnx"] = agreement
            float_graph.unlink(missing_ok=True)
            for torch_weights in (directory / ENCODER_DIR).glob("*.safetensors"):
                torch_weights.unlink()  # the graph holds them
            write_manifest(directory, exported.kind, **exported.info)
            return exported, report, onnx_predictions
        target.unlink()
    return student, report, torch_predictions
