"""Find the repeated tasks in a log without anyone naming them.

Programs that call an LLM for one job send the same system prompt and response_format
every time, and people who type a task by hand repeat a few instruction templates, so
pass 1 groups calls by structure and by mined user-turn template: string counting, no
model, so a million calls cost seconds. Structure is too strict when a prompt is
reworded over time or one job is asked several ways, so pass 2 compares meaning on the
few distinct prompts and templates only: it merges structural groups whose prompts and
answers agree, clusters the templates of free-form calls, and joins a hand-typed cluster
to the programmatic task it repeats. Everything not shown to be repeated stays
unassigned: a student for a one-off prompt would be wasted work.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import DBSCAN

from stillroom.config import DetectParams, Params
from stillroom.data import (
    Layout,
    read_assignments,
    read_cards,
    read_records,
    write_assignments,
    write_cards,
    write_json,
)
from stillroom.detect.cards import AnswerShape, build_card, evenly_spaced
from stillroom.detect.detection import Detection
from stillroom.detect.distillability import assess
from stillroom.detect.fingerprints import canonical_format, is_generic_prompt, same_output, structure_key
from stillroom.detect.history import append_history, reconcile
from stillroom.detect.matcher import build_index, write_index
from stillroom.detect.second_chance import FormIndex, instruction_forms, place
from stillroom.detect.templates import (
    WILDCARD,
    TurnForms,
    distinct_support,
    mine,
    skeleton,
    skeleton_vocabulary,
)
from stillroom.embeddings import embed
from stillroom.schema import DetectedBy, LogRecord, TaskCard, stable_id

EmbedFn = Callable[[list[str]], np.ndarray]

# Characters of a user turn embedded to judge a group's cohesion; the model reads ~256 tokens anyway.
_MAX_EMBED_CHARS = 1000
# DBSCAN core points need this many calls within cluster_similarity (themselves included);
# a template used less often than this cannot name a task's id either.
_CORE_NEIGHBOURS = 3
# A template is embedded (and clustered) when this many distinct turns carry it.
_EMBED_SUPPORT = 3
_NAME_WORDS = 3
_TEMPLATES_ON_CARD = 5
_CARD_TEMPLATE_SAMPLE = 4000
# Calls of a task whose instruction forms make its second-chance index (a spread sample of a large task).
_FORM_SAMPLE = 4000


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_TASK_VERBS = _wordset(
    "classify categorize categorise label tag extract summarize summarise translate detect identify rate "
    "score rewrite paraphrase generate write correct fix convert parse list find determine decide assign "
    "predict grade moderate review describe explain count redact anonymize normalize"
)
# Verbs a program's instruction starts with; a persona prompt starts with "you are".
_OPERATIONS = _TASK_VERBS | _wordset("give state return output name provide produce create compose draft suggest")
_STOPWORDS = _wordset(
    "a an the and or but of to in on at for from by with into onto about as is are was were be been being "
    "you your yours we our us i me my it its this that these those there here which who whom whose what when "
    "where how why all any each every some one two only just exactly please answer reply respond return "
    "output give say using use following below above given provided text input user assistant helpful "
    "nothing else single word words lowercase uppercase if not no yes do does than then them they their "
    "will would should must can could may might read json format"
)


def _cohesion(vectors: np.ndarray, weights: np.ndarray) -> float:
    """Mean cosine over all pairs of calls (unit vectors, each repeated `weight` times)."""
    n = float(weights.sum())
    if n < 2:
        return 1.0
    total = (vectors * weights[:, None]).sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


@dataclass
class _Group:
    """Calls believed to be one task, in time order; `key` is what its id is made from."""

    records: list[LogRecord]
    detected_by: DetectedBy
    key: tuple[str, ...]
    topic: str  # what its meaning is judged by: the main system prompt, or the main template
    shape: AnswerShape


def _time_key(record: LogRecord) -> tuple[float, str]:
    return (record.timestamp.timestamp() if record.timestamp else float("-inf"), record.id)


def _main_prompt(records: Sequence[LogRecord]) -> str:
    return Counter(r.system_prompt for r in records).most_common(1)[0][0]


def _structure_group(records: list[LogRecord], params: DetectParams) -> _Group:
    first = records[0]
    key = structure_key(first.system_prompt, canonical_format(first.response_format))
    return _Group(records, "structure", key, _main_prompt(records), AnswerShape.of(records, params))


def _structure_groups(records: Sequence[LogRecord], params: DetectParams) -> tuple[list[_Group], list[LogRecord]]:
    """Pass 1: calls sharing a specific system prompt and response_format. Calls with no
    or a generic system prompt go to the free-form pool."""
    by_key: dict[tuple[str, ...], list[LogRecord]] = {}
    pool = []
    for record in records:
        if is_generic_prompt(record.system_prompt):
            pool.append(record)
        else:
            key = structure_key(record.system_prompt, canonical_format(record.response_format))
            by_key.setdefault(key, []).append(record)
    return [_structure_group(rs, params) for rs in by_key.values()], pool


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.root(j)] = self.root(i)


def _merge_reworded(groups: list[_Group], params: DetectParams, embed_fn: EmbedFn) -> list[_Group]:
    """Pass 2a: one task whose system prompt was edited, or that two programs ask for in
    their own words, is several structural groups; join those whose prompts mean the same,
    answer in one output shape (one response_format, or a JSON schema and JSON answers with
    its keys) and answer alike.

    Runs before the size threshold so a recent rewording with few calls still joins its task.
    """
    if len(groups) < 2:
        return groups
    vectors = embed_fn([g.topic for g in groups])
    similar = vectors @ vectors.T >= params.merge_similarity
    sets = _UnionFind(len(groups))
    for i, j in zip(*np.nonzero(np.triu(similar, k=1)), strict=True):
        a, b = groups[i], groups[j]
        if same_output(a.key[2], a.shape.json_keys, b.key[2], b.shape.json_keys) and a.shape.compatible(b.shape):
            sets.join(i, j)
    members: dict[int, list[LogRecord]] = {}
    for i, group in enumerate(groups):
        members.setdefault(sets.root(i), []).extend(group.records)
    if len(members) == len(groups):
        return groups
    merged = []
    for records in members.values():
        records.sort(key=_time_key)
        merged.append(_structure_group(records, params))
    return merged


def _instruction(text: str) -> str | None:
    """The first sentence that tells the model what to do with each input ("Write a headline
    for ...", "Summarize ..."), as a program's prompt does and a persona's ("You are the
    support bot of ...; help customers") does not."""
    for sentence in re.split(r"[.!?\n]+", text.casefold()):
        words = sentence.split()
        if words[:1] == ["please"]:
            words = words[1:]
        if words and words[0] in _OPERATIONS:
            return " ".join(words)
    return None


def _consistent(group: _Group, params: DetectParams, embed_fn: EmbedFn, turns: TurnForms) -> bool:
    """A shared system prompt is not enough: a chatbot persona gets unrelated questions.
    One task answers in one shape (labels, short answers, one JSON schema) or is asked in
    one way: a prompt that names an operation, a user-turn template most calls share, or
    user turns that are about one thing (a sample of them is cohesive)."""
    if group.shape.mostly_short or group.shape.json_keys is not None or _instruction(group.topic):
        return True
    template, uses = Counter(mine([r.user_text for r in group.records], forms=turns)).most_common(1)[0]
    if template is not None and 2 * uses > len(group.records):
        return True
    return _turns_cohesive(group.records, params, embed_fn)


def _turns_cohesive(records: Sequence[LogRecord], params: DetectParams, embed_fn: EmbedFn) -> bool:
    """The user turns (a sample of them) are about one thing."""
    picks = np.unique(np.linspace(0, len(records) - 1, params.embed_sample).round().astype(int))
    sample = Counter(records[i].user_text[:_MAX_EMBED_CHARS] for i in picks)
    unique = list(sample)
    weights = np.array([sample[u] for u in unique], dtype=np.float64)
    return _cohesion(embed_fn(unique), weights) >= params.cluster_min_cohesion


def _small_but_sure(group: _Group, params: DetectParams) -> bool:
    """A group with fewer calls than min_task_records, or a cluster found by skeletons, needs
    more evidence: enough distinct inputs (the same message sent again is no task) and answers
    in one shape (a chat's replies are not)."""
    return len({r.user_text for r in group.records}) >= params.min_cluster_records and group.shape.one_shape


@dataclass
class _Cluster:
    """Free-form calls whose templates mean the same."""

    group: _Group
    vector: np.ndarray  # the mean of its templates' vectors, weighted by calls
    cohesion: float
    by_skeleton: bool  # some of its calls share only a skeleton, no exact template


def _cluster_pool(
    pool: Sequence[LogRecord], params: DetectParams, embed_fn: EmbedFn, vocabulary: frozenset[str], turns: TurnForms
) -> tuple[list[_Cluster], dict[str, tuple[str, str]]]:
    """Pass 2b: hand-typed repeated tasks among free-form calls, found by clustering their
    mined templates (or, second chance, skeletons over `vocabulary`). A call with no template
    or skeleton shared by another call is a one-off. Also returns each templated call's
    (response_format, template), for `_adopt_strays`."""
    partitions: dict[str, list[LogRecord]] = {}
    for record in pool:
        partitions.setdefault(canonical_format(record.response_format), []).append(record)
    found = []
    forms: dict[str, tuple[str, str]] = {}
    for response_format, records in partitions.items():
        texts = [r.user_text for r in records]
        templates = mine(texts, vocabulary=vocabulary, forms=turns)
        forms.update((r.id, (response_format, t)) for r, t in zip(records, templates, strict=True) if t is not None)
        # only templates that distinct turns repeat are embedded: rarer ones (a typo, payload words two
        # turns happen to share) grow with the log, and the second chance places their calls without a model
        support = distinct_support(texts, templates)
        counts = Counter(t for t in templates if t is not None and support[t] >= _EMBED_SUPPORT)
        if not counts:
            continue
        unique = list(counts)
        weights = np.array([counts[u] for u in unique], dtype=np.float64)
        vectors = embed_fn(unique)
        labels = DBSCAN(
            eps=1 - params.cluster_similarity, min_samples=_CORE_NEIGHBOURS, metric="cosine", algorithm="brute"
        ).fit_predict(vectors, sample_weight=weights)
        cluster_of = dict(zip(unique, labels.tolist(), strict=True))
        members: dict[int, list[tuple[LogRecord, str]]] = {}
        for record, template in zip(records, templates, strict=True):
            if cluster_of.get(template, -1) != -1:
                members.setdefault(cluster_of[template], []).append((record, template))
        for cluster, calls in sorted(members.items()):
            inside = labels == cluster
            # records are in time order; the earliest call of a template used at least
            # _CORE_NEIGHBOURS times names the cluster, so one stray early call cannot change its id
            first = next((t for _, t in calls if counts[t] >= _CORE_NEIGHBOURS), calls[0][1])
            group_records = [r for r, _ in calls]
            top = Counter(t for _, t in calls).most_common(1)[0][0]
            group = _Group(
                group_records,
                "embedding",
                ("embedding", first, response_format),
                top,
                AnswerShape.of(group_records, params),
            )
            mean = (vectors[inside] * weights[inside, None]).sum(axis=0)
            cohesion = _cohesion(vectors[inside], weights[inside])
            by_skeleton = any(WILDCARD in t for _, t in calls)
            found.append(_Cluster(group, mean / np.linalg.norm(mean), cohesion, by_skeleton))
    return found, forms


def _adopt_strays(
    tasks: list[_Group],
    pool: Sequence[LogRecord],
    forms: dict[str, tuple[str, str]],
    vocabulary: frozenset[str],
    turns: TurnForms,
) -> int:
    """A free-form call left out of clustering (DBSCAN noise) whose template, or skeleton, the
    calls of one task carry, and no other task's, is a call of that task. The request matcher
    names a task by the same fingerprints, so serve and detect agree. Returns how many calls
    were adopted."""
    owner_of = {r.id: i for i, task in enumerate(tasks) for r in task.records}
    owners: dict[tuple[str, str], Counter[int]] = {}
    for record in pool:
        if record.id in owner_of and record.id in forms:
            owners.setdefault(forms[record.id], Counter())[owner_of[record.id]] += 1
    adopted: dict[int, list[LogRecord]] = {}
    for record in pool:
        if record.id in owner_of:
            continue
        form = skeleton(record.user_text, vocabulary, turns)
        keys = [forms.get(record.id), (canonical_format(record.response_format), form) if form else None]
        holders = next((h for key in keys if key and (h := owners.get(key)) and len(h) == 1), None)
        if holders:
            adopted.setdefault(next(iter(holders)), []).append(record)
    return _add_calls(tasks, adopted)


def _add_calls(tasks: list[_Group], calls: dict[int, list[LogRecord]]) -> int:
    """Calls joined to tasks by index, each task kept in time order; returns how many joined."""
    for i, records in calls.items():
        tasks[i].records = sorted(tasks[i].records + records, key=_time_key)
    return sum(len(rs) for rs in calls.values())


def _second_chance(
    tasks: list[_Group], pool: Sequence[LogRecord], params: DetectParams, turns: TurnForms
) -> tuple[int, FormIndex]:
    """Pass 3: every free-form call still unplaced joins the task its instruction form is
    nearest (see second_chance.py), when its answer fits that task's answers. The index holds the
    forms of the tasks' free-form calls as they were before this pass (of a spread sample of a
    large task's: its common forms show in any sample), which is what the matcher gets, so both
    compare a call with the same forms."""
    placed_ids = {r.id for task in tasks for r in task.records}
    free_form = {r.id for r in pool}
    index = FormIndex.build(
        {
            str(i): instruction_forms(
                [r.user_text for r in evenly_spaced([r for r in task.records if r.id in free_form], _FORM_SAMPLE)],
                turns.mask,
            )
            for i, task in enumerate(tasks)
        }
    )
    strays = [r for r in pool if r.id not in placed_ids]
    found = place(
        [r.user_text for r in strays], index, params.second_chance_similarity, params.second_chance_margin, turns.mask
    )
    joined: dict[int, list[LogRecord]] = {}
    for record, task in zip(strays, found, strict=True):
        if task is not None and tasks[int(task)].shape.fits(record.response_text):
            joined.setdefault(int(task), []).append(record)
    return _add_calls(tasks, joined), index


def _join_wordings(clusters: list[_Cluster], params: DetectParams) -> list[_Cluster]:
    """Pass 2d: hand-typed clusters that ask the same in other words and answer alike are one
    task (a low-volume task typed two ways is too small in either wording); each must be
    answered in one shape, so a chat cluster never drags a task down. The merged task
    keeps the id of its earliest wording, so a new wording never changes it."""
    if len(clusters) < 2:
        return clusters
    similar = np.stack([c.vector for c in clusters]) @ np.stack([c.vector for c in clusters]).T
    sets = _UnionFind(len(clusters))
    for i, j in zip(*np.nonzero(np.triu(similar >= params.attach_similarity, k=1)), strict=True):
        a, b = clusters[i].group, clusters[j].group
        if a.key[2] == b.key[2] and a.shape.one_shape and b.shape.one_shape and a.shape.compatible(b.shape):
            sets.join(i, j)
    parts: dict[int, list[_Cluster]] = {}
    for i, cluster in enumerate(clusters):
        parts.setdefault(sets.root(i), []).append(cluster)
    joined = []
    for members in parts.values():
        if len(members) == 1:
            joined.append(members[0])
            continue
        first = min(members, key=lambda c: _time_key(c.group.records[0]))
        records = sorted((r for c in members for r in c.group.records), key=_time_key)
        weights = np.array([len(c.group.records) for c in members], dtype=np.float64)
        mean = (np.stack([c.vector for c in members]) * weights[:, None]).sum(axis=0)
        group = _Group(records, "embedding", first.group.key, first.group.topic, AnswerShape.of(records, params))
        joined.append(
            _Cluster(
                group,
                mean / np.linalg.norm(mean),
                min(c.cohesion for c in members),
                any(c.by_skeleton for c in members),
            )
        )
    return joined


def _attach(clusters: list[_Cluster], tasks: list[_Group], params: DetectParams, embed_fn: EmbedFn) -> list[_Cluster]:
    """Pass 2c: a hand-typed cluster that asks what a programmatic task asks, and is
    answered in the same shape, is that task asked another way: its calls join the task
    (which keeps its id). Returns the clusters that joined none."""
    if not clusters or not tasks:
        return clusters
    similarity = np.stack([c.vector for c in clusters]) @ embed_fn([t.topic for t in tasks]).T
    alone = []
    joined: dict[int, list[LogRecord]] = {}
    for i, cluster in enumerate(clusters):
        fits = [j for j, task in enumerate(tasks) if cluster.group.shape.compatible(task.shape)]
        best = max(fits, key=lambda j: similarity[i, j], default=None)
        if best is not None and similarity[i, best] >= params.attach_similarity:
            joined.setdefault(best, []).extend(cluster.group.records)
        else:
            alone.append(cluster)
    for j, records in joined.items():
        task = tasks[j]
        task.records = sorted(task.records + records, key=_time_key)
        task.shape = AnswerShape.of(task.records, params)
    return alone


def _is_task(cluster: _Cluster, params: DetectParams) -> bool:
    """The size threshold, applied once wordings are joined: a cluster of min_task_records
    cohesive templates is a task; a smaller one, or one found by skeletons or by an instruction
    line over a payload, needs the stronger evidence of `_small_but_sure` (its user turns are
    mostly payload, so their meaning says little)."""
    size = len(cluster.group.records)
    if size < params.min_cluster_records or cluster.cohesion < params.cluster_min_cohesion:
        return False
    if size >= params.min_task_records and not cluster.by_skeleton:
        return True
    return _small_but_sure(cluster.group, params)


def _slug(text: str) -> str:
    """A readable name from the words that say what the task does ("classify-article-topic")."""
    text = re.sub(r"<\w+>", " ", text.casefold())  # a template's masked slots name nothing
    words = [w for w in re.findall(r"[a-z]+", text) if len(w) > 2 and w not in _STOPWORDS]
    start = next((i for i, w in enumerate(words) if w in _TASK_VERBS), 0)
    return "-".join(list(dict.fromkeys(words[start:]))[:_NAME_WORDS]) or "task"


def _name(group: _Group) -> str:
    """From the earliest wording that states the task as an instruction, else from what
    founded the task: earliest first, so a name is as stable as the id."""
    wordings = dict.fromkeys(r.system_prompt for r in group.records if r.system_prompt)
    stated = next((i for w in [*wordings, group.key[1]] if (i := _instruction(w))), None)
    return _slug(stated or group.key[1])


def _card(group: _Group, params: DetectParams, vocabulary: frozenset[str], turns: TurnForms) -> TaskCard:
    # the templates on the card, from calls spread over the task's life: the common ones show in any sample
    texts = [r.user_text for r in evenly_spaced(group.records, _CARD_TEMPLATE_SAMPLE)]
    templates = Counter(t for t in mine(texts, _CORE_NEIGHBOURS, vocabulary, turns) if t is not None)
    card = build_card(
        group.records,
        task_id=stable_id(*group.key, prefix="task-"),
        name=_name(group),
        detected_by=group.detected_by,
        templates=[t for t, _ in templates.most_common(_TEMPLATES_ON_CARD)],
        params=params,
    )
    card.distillability = assess(card, params.distill)
    return card


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


def _memoized(embed_fn: EmbedFn) -> EmbedFn:
    """Each distinct text embedded once per run: prompts are compared in more than one pass."""
    cache: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, embed_fn(missing), strict=True))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)

    return cached


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

    embed_fn = _memoized(embed_fn)
    turns = TurnForms()
    ordered = sorted(records, key=_time_key)
    groups, pool = _structure_groups(ordered, params)
    merged = _merge_reworded(groups, params, embed_fn)
    tasks: list[_Group] = []
    rejected: Counter[str] = Counter()
    for group in merged:
        small = len(group.records) < params.min_task_records
        if small and len(group.records) < params.min_cluster_records:
            rejected["small_groups"] += 1
            pool.extend(group.records)
        elif not _consistent(group, params, embed_fn, turns) or (small and not _small_but_sure(group, params)):
            rejected["small_groups" if small else "inconsistent_groups"] += 1
            pool.extend(group.records)
        else:
            tasks.append(group)
    structure_tasks = len(tasks)
    pool.sort(key=_time_key)
    vocabulary = skeleton_vocabulary((r.user_text for r in pool), turns)
    clusters, forms = _cluster_pool(pool, params, embed_fn, vocabulary, turns)
    unattached = _attach(clusters, tasks, params, embed_fn)
    alone = _join_wordings(unattached, params)
    tasks += [c.group for c in alone if _is_task(c, params)]
    adopted = _adopt_strays(tasks, pool, forms, vocabulary, turns)
    second_chance, form_index = _second_chance(tasks, pool, params, turns)

    cards = [_card(group, params, vocabulary, turns) for group in tasks]
    form_index.owners = [cards[int(i)].id for i in form_index.owners]
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
        "template_clusters": len(clusters),
        "attached_clusters": len(clusters) - len(unattached),
        "joined_wordings": len(unattached) - len(alone),
        "adopted_calls": adopted,
        "second_chance_calls": second_chance,
        "embedding_tasks": len(tasks) - structure_tasks,
    }
    cards.sort(key=lambda c: (-c.count, c.id))
    return Detection(
        cards=cards, assignments=assignments, passes=passes, skeleton_words=vocabulary, form_index=form_index
    )


def run(params: Params, layout: Layout) -> dict:
    """The detect stage: data/records.jsonl -> data/tasks/{cards.json,assignments.jsonl,history.json,index.json}.

    Cards from an earlier run, when present, let a task keep its id through a re-cluster
    and record merges and splits (see history.py). The index is what the request matcher loads."""
    started = time.perf_counter()
    records = read_records(layout)
    embed_fn = _memoized(lambda texts: embed(texts, params.detect.embedder))
    detection = detect_tasks(records, params.detect, embed_fn)
    if layout.cards.exists() and layout.assignments.exists():
        detection = reconcile(detection, read_cards(layout.cards), read_assignments(layout.assignments))
        stamps = [r.timestamp for r in records if r.timestamp is not None]
        append_history(layout.tasks_dir / "history.json", detection.history, str(max(stamps, default="")) or None)
    write_cards(layout.cards, detection.cards)
    write_assignments(layout.assignments, detection.assignments)
    index = build_index(
        records,
        detection.assignments,
        detection.cards,
        embed_fn,
        params.detect.cluster_similarity,
        detection.skeleton_words,
        detection.form_index,
        (params.detect.second_chance_similarity, params.detect.second_chance_margin),
    )
    write_index(layout.task_index, index)
    summary = detection.summary() | {"seconds": round(time.perf_counter() - started, 2)}
    write_json(layout.stage_metrics("detect"), summary)
    return summary
