"""Find the repeated tasks in a log without anyone naming them.

Programs that call an LLM for one job send the same system prompt and response_format
every time, so most tasks show up by structure alone (pass 1). Structure is too strict
when a prompt is reworded over time and too weak when people type the instruction into
the user turn themselves, so a second pass compares meaning: it merges structural groups
whose prompts and answers agree, and clusters the remaining free-form turns by what they
ask for (pass 2). Everything not shown to be repeated stays unassigned: a student for a
one-off prompt would be wasted work.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.cluster import DBSCAN

from stillroom.config import DetectParams, Layout, Params
from stillroom.embeddings import embed
from stillroom.schema import (
    LogRecord,
    OutputType,
    TaskCard,
    read_jsonl,
    stable_id,
    write_assignments,
    write_cards,
    write_json,
)

EmbedFn = Callable[[list[str]], np.ndarray]
DetectedBy = Literal["structure", "embedding"]

# Share of a group's answers that must agree on one shape (short, or JSON with one key
# set) for the group to count as one task; the rest is teacher noise.
_SHAPE_SHARE = 0.9
# A closed label set repeats itself: each label is used this often on average, and
# answers off the set (said once, or too long: names, refusals) are at most the noise share.
_MIN_RECORDS_PER_LABEL = 3
# Two groups' short answers "overlap" when this share of the smaller set is in the other.
_MIN_LABEL_OVERLAP = 0.5
# A user-turn segment longer than this is content, not a typed instruction.
_MAX_INSTRUCTION_WORDS = 12
# Characters of a free-form turn embedded; the model reads ~256 tokens anyway.
_MAX_EMBED_CHARS = 1000
# DBSCAN core points need this many calls within cluster_similarity (themselves included).
_CORE_NEIGHBOURS = 3
_EXAMPLES = 5
_EXAMPLE_CHARS = 200
_NAME_WORDS = 3

# Sentences that set a tone but name no task: a prompt made only of these is generic.
_GENERIC_SENTENCE = re.compile(
    r"(you are|you're|act as) (an? |the )?"
    r"((very|helpful|friendly|useful|smart|kind|honest|harmless|polite|respectful|knowledgeable|intelligent"
    r"|concise|general-purpose|virtual|personal|large|language|ai|and) ){0,6}"
    r"(assistant|chatbot|bot|ai|model)( trained by [\w ]+)?"
    r"|you are chatgpt( a large language model trained by openai)?"
    r"|(knowledge cutoff|current date)\b.*"
    r"|(please )?(be|answer|respond|reply)( as)? (helpful|concise|concisely|brief|briefly|polite)( as possible)?"
)


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_TASK_VERBS = _wordset(
    "classify categorize categorise label tag extract summarize summarise translate detect identify rate "
    "score rewrite paraphrase generate write correct fix convert parse list find determine decide assign "
    "predict grade moderate review describe explain count redact anonymize normalize"
)
_STOPWORDS = _wordset(
    "a an the and or but of to in on at for from by with into onto about as is are was were be been being "
    "you your yours we our us i me my it its this that these those there here which who whom whose what when "
    "where how why all any each every some one two only just exactly please answer reply respond return "
    "output give say using use following below above given provided text input user assistant helpful "
    "nothing else single word words lowercase uppercase if not no yes do does than then them they their "
    "will would should must can could may might read json format"
)


def normalize_label(text: str) -> str:
    """One spelling per answer, so "Sport", "sport." and " sport" count as the same label
    here, in the dataset and in evaluation."""
    return " ".join(text.split()).casefold().rstrip(".").rstrip()


def _fold(text: str) -> str:
    """Whitespace, case and digits folded: dates, counters and ids inside a prompt
    template must not split one task into many."""
    return re.sub(r"\d+", "0", " ".join(text.split()).casefold())


def _canonical_format(response_format: dict | None) -> str:
    if not response_format or response_format == {"type": "text"}:
        return ""
    return json.dumps(response_format, sort_keys=True, separators=(",", ":"))


def is_generic_prompt(system_prompt: str) -> bool:
    """A prompt that could front any request ("You are a helpful assistant.") says nothing
    about the task, so it must not make unrelated calls one group."""
    sentences = (s.strip(" ,;:-'\"") for s in re.split(r"[.!?\n]+", _fold(system_prompt)))
    return all(_GENERIC_SENTENCE.fullmatch(re.sub(r"[,;]", "", s)) for s in sentences if s)


def _segments(text: str) -> list[str]:
    """Where a person types the instruction: before a colon on the first line, or as the
    first or last paragraph, when that part is short enough to be an instruction."""
    text = text.strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    head = re.match(r"([^\n]+?):(?:\s|$)", text)
    candidates = [head.group(1) if head else ""]
    if len(paragraphs) > 1:
        candidates += [paragraphs[0], paragraphs[-1]]
    return [c for c in candidates if c and len(c.split()) <= _MAX_INSTRUCTION_WORDS]


def instructions(texts: Sequence[str]) -> list[str]:
    """Per user turn, the part that says what to do: the segment it shares with the most
    other turns (a typed template such as "summarize this:"), else the whole turn.

    Embedding the whole turn would compare the articles being summarized, not the request.
    """
    segments = [[_fold(s) for s in _segments(text)] for text in texts]
    shared = Counter(s for candidates in segments for s in set(candidates))
    picked = []
    for text, candidates in zip(texts, segments, strict=True):
        best = max(candidates, key=lambda s: shared[s], default="")
        picked.append(best if shared[best] > 1 else _fold(text)[:_MAX_EMBED_CHARS])
    return picked


def _cohesion(vectors: np.ndarray, weights: np.ndarray) -> float:
    """Mean cosine over all pairs of calls (unit vectors, each repeated `weight` times)."""
    n = float(weights.sum())
    if n < 2:
        return 1.0
    total = (vectors * weights[:, None]).sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def _embed_cohesion(texts: Sequence[str], embed_fn: EmbedFn) -> float:
    counts = Counter(instructions(texts))
    unique = list(counts)
    return _cohesion(embed_fn(unique), np.array([counts[u] for u in unique], dtype=np.float64))


@dataclass
class _Answers:
    """What a group's answers look like, to tell a label task from text and to keep
    different tasks with similar prompts apart."""

    short: set[str]  # distinct normalized answers of at most label_max_words words
    labels: dict[str, int]  # the short answers given more than once, with their counts
    mostly_short: bool
    closed: bool  # a label set: few recurring short answers cover nearly every call
    json_keys: frozenset[str] | None  # the key set nearly every answer has, if JSON

    @classmethod
    def of(cls, records: Sequence[LogRecord], params: DetectParams) -> _Answers:
        total = len(records)
        counts = Counter(normalize_label(r.response_text) for r in records)
        short = {a for a in counts if len(a.split()) <= params.label_max_words}
        labels = {a: n for a, n in counts.most_common() if a in short and n > 1}
        on_label = sum(labels.values())
        keys: Counter[frozenset[str]] = Counter()
        for record in records:
            try:
                parsed = json.loads(record.response_text)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                keys[frozenset(parsed)] += 1
        top = keys.most_common(1)
        return cls(
            short=short,
            labels=labels,
            mostly_short=sum(counts[a] for a in short) >= _SHAPE_SHARE * total,
            closed=0 < len(labels) <= params.max_labels
            and len(labels) * _MIN_RECORDS_PER_LABEL <= total
            and on_label >= _SHAPE_SHARE * total,
            json_keys=top[0][0] if top and top[0][1] >= _SHAPE_SHARE * total else None,
        )

    def compatible(self, other: _Answers) -> bool:
        """Could both groups be one task? Answer shapes agree, label sets overlap."""
        if self.json_keys != other.json_keys or self.mostly_short != other.mostly_short:
            return False
        if self.closed or other.closed:
            overlap = len(self.short & other.short)
            return overlap >= _MIN_LABEL_OVERLAP * min(len(self.short), len(other.short))
        return True


@dataclass
class _Group:
    """Calls believed to be one task, in time order; `key` is what its id is made from."""

    records: list[LogRecord]
    detected_by: DetectedBy
    key: tuple[str, ...]

    @property
    def earliest(self) -> LogRecord:
        return self.records[0]


def _time_key(record: LogRecord) -> tuple[float, str]:
    return (record.timestamp.timestamp() if record.timestamp else float("-inf"), record.id)


def _structure_key(record: LogRecord) -> tuple[str, ...]:
    return ("structure", _fold(record.system_prompt), _canonical_format(record.response_format))


@dataclass
class Detection:
    """Task cards plus where every record went, so later stages and metrics agree."""

    cards: list[TaskCard]
    assignments: dict[str, str | None]
    passes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        assigned = sum(task is not None for task in self.assignments.values())
        return {
            "records": len(self.assignments),
            "tasks": len(self.cards),
            "assigned": assigned,
            "unassigned": len(self.assignments) - assigned,
            "passes": dict(self.passes),
            "by_task": {c.name: {"count": c.count, "output_type": c.output_type} for c in self.cards},
        }


def _structure_groups(records: Sequence[LogRecord]) -> tuple[list[_Group], list[LogRecord]]:
    """Pass 1: calls sharing a specific system prompt and response_format. Calls with no
    or a generic system prompt go to the free-form pool."""
    by_key: dict[tuple[str, ...], list[LogRecord]] = {}
    pool = []
    for record in records:
        if is_generic_prompt(record.system_prompt):
            pool.append(record)
        else:
            by_key.setdefault(_structure_key(record), []).append(record)
    return [_Group(rs, "structure", key) for key, rs in by_key.items()], pool


def _merge_reworded(groups: list[_Group], params: DetectParams, embed_fn: EmbedFn) -> list[_Group]:
    """Pass 2a: one task whose system prompt was edited is several structural groups; join
    those whose prompts mean the same, share a response_format and answer alike.

    Runs before the size threshold so a recent rewording with few calls still joins its task.
    """
    if len(groups) < 2:
        return groups
    prompts = [Counter(r.system_prompt for r in g.records).most_common(1)[0][0] for g in groups]
    vectors = embed_fn(prompts)
    similar = vectors @ vectors.T >= params.merge_similarity
    answers = [_Answers.of(g.records, params) for g in groups]
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(similar, k=1)), strict=True):
        if groups[i].key[2] == groups[j].key[2] and answers[i].compatible(answers[j]):
            parent[root(j)] = root(i)
    members: dict[int, list[LogRecord]] = {}
    for i, group in enumerate(groups):
        members.setdefault(root(i), []).extend(group.records)
    merged = []
    for records in members.values():
        records.sort(key=_time_key)
        merged.append(_Group(records, "structure", _structure_key(records[0])))
    return merged


def _consistent(group: _Group, params: DetectParams, embed_fn: EmbedFn) -> bool:
    """A shared system prompt is not enough: a chatbot persona gets unrelated questions.
    One task answers in one shape (labels, short answers, one JSON schema) or is asked in
    one way (a sample of user turns is cohesive)."""
    answers = _Answers.of(group.records, params)
    if answers.mostly_short or answers.json_keys is not None:
        return True
    picks = np.unique(np.linspace(0, len(group.records) - 1, params.embed_sample).round().astype(int))
    sample = [group.records[i].user_text for i in picks]
    return _embed_cohesion(sample, embed_fn) >= params.cluster_min_cohesion


def _cluster_pool(pool: Sequence[LogRecord], params: DetectParams, embed_fn: EmbedFn) -> list[_Group]:
    """Pass 2b: hand-typed repeated tasks among free-form calls, found by clustering what
    each turn asks for. Only dense, cohesive clusters of enough calls become tasks, so
    one-off prompts stay unassigned."""
    partitions: dict[str, list[LogRecord]] = {}
    for record in pool:
        partitions.setdefault(_canonical_format(record.response_format), []).append(record)
    found = []
    for response_format, records in partitions.items():
        if len(records) < params.min_task_records:
            continue
        asks = instructions([r.user_text for r in records])
        counts = Counter(asks)
        unique = list(counts)
        weights = np.array([counts[u] for u in unique], dtype=np.float64)
        vectors = embed_fn(unique)
        labels = DBSCAN(
            eps=1 - params.cluster_similarity, min_samples=_CORE_NEIGHBOURS, metric="cosine", algorithm="brute"
        ).fit_predict(vectors, sample_weight=weights)
        members: dict[int, list[LogRecord]] = {}
        cluster_of = dict(zip(unique, labels.tolist(), strict=True))
        for record, ask in zip(records, asks, strict=True):
            members.setdefault(cluster_of[ask], []).append(record)
        for cluster in sorted(members.keys() - {-1}):
            inside = labels == cluster
            if weights[inside].sum() < params.min_task_records:
                continue
            if _cohesion(vectors[inside], weights[inside]) < params.cluster_min_cohesion:
                continue
            # records are in time order, so a cluster's first member is its earliest call
            key = ("embedding", asks[records.index(members[cluster][0])], response_format)
            found.append(_Group(members[cluster], "embedding", key))
    return found


def _slug(text: str) -> str:
    """A readable name from the words that say what the task does ("classify-article-topic")."""
    words = [w for w in re.findall(r"[a-z]+", text.casefold()) if len(w) > 2 and w not in _STOPWORDS]
    start = next((i for i, w in enumerate(words) if w in _TASK_VERBS), 0)
    return "-".join(list(dict.fromkeys(words[start:]))[:_NAME_WORDS]) or "task"


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1].rstrip() + "…"


def _examples(records: Sequence[LogRecord]) -> list[str]:
    """A few distinct user turns spread over the task's life, not just its first day."""
    distinct = list(dict.fromkeys(_shorten(r.user_text) for r in records))
    return [distinct[i] for i in np.linspace(0, len(distinct) - 1, min(len(distinct), _EXAMPLES)).round().astype(int)]


def _spelled(records: Sequence[LogRecord], labels: dict[str, int]) -> dict[str, int]:
    """Label counts with each label in the spelling the teacher used most ("Sport", not "sport")."""
    spellings: dict[str, Counter[str]] = {label: Counter() for label in labels}
    for record in records:
        spelling = " ".join(record.response_text.split()).rstrip(".").rstrip()
        if normalize_label(spelling) in spellings:
            spellings[normalize_label(spelling)][spelling] += 1
    return {spellings[label].most_common(1)[0][0]: n for label, n in labels.items()}


def _card(group: _Group, params: DetectParams) -> TaskCard:
    records = group.records
    answers = _Answers.of(records, params)
    output_type: OutputType = "label" if answers.closed else "text"
    distribution = _spelled(records, answers.labels) if answers.closed else {}
    stamps = [r.timestamp for r in records if r.timestamp is not None]
    named_by = group.earliest.system_prompt if group.detected_by == "structure" else group.key[1]
    return TaskCard(
        id=stable_id(*group.key, prefix="task-"),
        name=_slug(named_by),
        count=len(records),
        output_type=output_type,
        system_prompts=[p for p, _ in Counter(r.system_prompt for r in records).most_common() if p],
        labels=list(distribution),
        label_distribution=distribution,
        examples=_examples(records),
        first_seen=min(stamps, default=None),
        last_seen=max(stamps, default=None),
        input_tokens=sum(r.usage.input_tokens for r in records),
        output_tokens=sum(r.usage.output_tokens for r in records),
        models=dict(Counter(r.model for r in records if r.model).most_common()),
        detected_by=group.detected_by,
    )


def _unique_names(cards: list[TaskCard]) -> None:
    """Older tasks keep the plain name, so a new task never renames an existing one."""
    taken: set[str] = set()
    for card in sorted(cards, key=lambda c: (c.first_seen.timestamp() if c.first_seen else float("-inf"), c.id)):
        name, n = card.name, 1
        while name in taken:
            n += 1
            name = f"{card.name}-{n}"
        card.name = name
        taken.add(name)


def detect_tasks(
    records: list[LogRecord],
    params: DetectParams,
    embed_fn: EmbedFn | None = None,
    progress: bool = False,
) -> Detection:
    """Repeated tasks in `records`, largest first; ids depend only on the calls themselves."""
    if embed_fn is None:

        def embed_fn(texts: list[str]) -> np.ndarray:
            return embed(texts, params.embedder, progress=progress)

    ordered = sorted(records, key=_time_key)
    groups, pool = _structure_groups(ordered)
    merged = _merge_reworded(groups, params, embed_fn)
    tasks: list[_Group] = []
    rejected: Counter[str] = Counter()
    for group in merged:
        if len(group.records) < params.min_task_records:
            rejected["small_groups"] += 1
            pool.extend(group.records)
        elif not _consistent(group, params, embed_fn):
            rejected["inconsistent_groups"] += 1
            pool.extend(group.records)
        else:
            tasks.append(group)
    structure_tasks = len(tasks)
    pool.sort(key=_time_key)
    tasks += _cluster_pool(pool, params, embed_fn)

    cards = [_card(group, params) for group in tasks]
    _unique_names(cards)
    assignments: dict[str, str | None] = dict.fromkeys((r.id for r in ordered), None)
    for group, card in zip(tasks, cards, strict=True):
        for record in group.records:
            assignments[record.id] = card.id
    passes = {
        "structure_groups": len(groups),
        "merged_away": len(groups) - len(merged),
        "structure_tasks": structure_tasks,
        "small_groups": rejected["small_groups"],
        "inconsistent_groups": rejected["inconsistent_groups"],
        "free_form_records": len(pool),
        "embedding_tasks": len(tasks) - structure_tasks,
    }
    cards.sort(key=lambda c: (-c.count, c.id))
    return Detection(cards=cards, assignments=assignments, passes=passes)


def run(params: Params, layout: Layout) -> dict:
    """The detect stage: data/records.jsonl -> data/tasks/{cards.json,assignments.jsonl}."""
    started = time.perf_counter()
    records = list(read_jsonl(layout.records, LogRecord))
    detection = detect_tasks(records, params.detect)
    write_cards(layout.cards, detection.cards)
    write_assignments(layout.assignments, detection.assignments)
    summary = detection.summary() | {"seconds": round(time.perf_counter() - started, 2)}
    write_json(layout.stage_metrics("detect"), summary)
    return summary
