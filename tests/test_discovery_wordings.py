"""Hand-typed wordings with no colon or blank line, one JSON job from two programs, and small
tasks: each kind is found as one task, while one-off prompts stay unassigned."""

from __future__ import annotations

import json
import random

import pytest
from test_detect import PARAMS, PASSAGES, _one_offs, _record

from stillroom.detect.matcher import TaskMatcher, build_index
from stillroom.detect.pipeline import _memoized, detect_tasks
from stillroom.embeddings import embed
from stillroom.schema import LogRecord

# Payload words: many, so none of them repeats often enough to look like part of an instruction.
WORDS = sorted({w.strip(".,").lower() for p in PASSAGES for w in p.split() if len(w) > 3})
NAMES = ["Ann", "Bo", "Cy", "Dita", "Ezra", "Flo", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]


@pytest.fixture(scope="module")
def embed_fn():
    return _memoized(lambda texts: embed(texts, PARAMS.embedder))


def _log(calls: list[tuple[str, str, str, dict | None]], seed: int, first: int = 0) -> list[LogRecord]:
    """The calls among one-off prompts, shuffled; record numbers (and times) from `first` on."""
    rng = random.Random(seed)
    mixed = calls + _one_offs(seed + 1)
    rng.shuffle(mixed)
    return [_record(first + n, user, answer, system, fmt) for n, (system, user, answer, fmt) in enumerate(mixed)]


def _name(rng: random.Random) -> str:
    """One to three free words that name a file, none of them repeated often (see skeleton_vocabulary)."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu"]
    return " ".join("".join(rng.choices(syllables, k=rng.randint(2, 3))) for _ in range(rng.randint(1, 3)))


def _json_document(rng: random.Random, n: int, wordings: tuple[str, ...]) -> list[tuple[str, str, str, None]]:
    calls = []
    for _ in range(n):
        people = [{"name": rng.choice(NAMES), "mail": f"{rng.choice(WORDS)}{rng.randint(1, 99)}@x.org"} for _ in "ab"]
        doc = json.dumps(
            {"id": rng.randint(1, 9999), "topic": _name(rng), "people": people}, indent=rng.choice((None, 2))
        )
        answer = json.dumps({"emails": [p["mail"] for p in people]})
        calls.append(("", rng.choice(wordings).format(doc=doc), answer, None))
    return calls


def _inline_file(rng: random.Random, n: int) -> list[tuple[str, str, str, None]]:
    calls = []
    for _ in range(n):
        ext = rng.choice(["pdf", "log", "jpg", "bak", "csv"])
        name = f"{rng.choice(['', '~/old/', '/tmp/'])}{'_'.join(rng.sample(WORDS, 2))}.{ext}"
        calls.append(("", f"is {name} safe to delete? y/n", "y" if ext in ("log", "bak") else "n", None))
    return calls


def _several_slots(rng: random.Random, n: int) -> list[tuple[str, str, str, None]]:
    calls = []
    for _ in range(n):
        kind, size, unit = rng.choice(["jpeg", "png", "heic"]), rng.randint(1, 900), rng.choice(["kb", "mb"])
        calls.append(
            ("", f"got {_name(rng)} ({kind}, {size} {unit}), keep it?", "keep" if unit == "mb" else "delete", None)
        )
    return calls


def _money(rng: random.Random, n: int, wordings: tuple[str, ...]) -> list[tuple[str, str, str, None]]:
    calls = []
    for _ in range(n):
        story = " ".join(rng.sample(PASSAGES, 4))
        calls.append(("", rng.choice(wordings).format(story=story), rng.choice(["yes", "no"]), None))
    return calls


MONEY = ("does this story involve money? yes or no\n{story}", "yes or no, is there money talk in this article\n{story}")


def _only_task(calls: list, seed: int, embed_fn, expected_format: str):
    log = _log(calls, seed)
    found = detect_tasks(log, PARAMS, embed_fn)
    assert [(c.count, c.output_format) for c in found.cards] == [(len(calls), expected_format)]
    task_users = {user for _, user, _, _ in calls}
    assert {found.assignments[r.id] for r in log if r.user_text in task_users} == {found.cards[0].id}
    assert all(found.assignments[r.id] is None for r in log if r.user_text not in task_users)
    return log, found


def test_an_instruction_line_over_a_json_document_is_one_task(embed_fn):
    wordings = ("pull the emails out of this\n{doc}", "{doc}\nwhich mail addresses are in that?")
    _only_task(_json_document(random.Random(1), 80, wordings), 2, embed_fn, "json")


def test_a_question_with_its_payload_inline_is_one_task(embed_fn):
    _only_task(_inline_file(random.Random(3), 80), 4, embed_fn, "label")


def test_one_sentence_with_several_free_word_slots_is_one_task(embed_fn):
    log, found = _only_task(_several_slots(random.Random(5), 120), 6, embed_fn, "label")
    # the request matcher knows the skeleton too
    matcher = TaskMatcher(build_index(log, found.assignments, found.cards, skeleton_words=found.skeleton_words))
    match = matcher.match([{"role": "user", "content": "got tikamo ruvo (png, 3 mb), keep it?"}])
    assert match is not None and match.task_id == found.cards[0].id
    assert matcher.match([{"role": "user", "content": "got a new puppy today, any name ideas?"}]) is None


def test_one_json_job_from_two_programs_one_with_a_json_schema_is_one_task(embed_fn):
    rng = random.Random(7)
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "order", "schema": {"type": "object", "properties": {"product": {}, "price": {}}}},
    }
    calls = []
    for i in range(100):
        product, price = rng.choice(WORDS), rng.randint(5, 300)
        user = f"Hi, I just bought the {product} for ${price} and it is great."
        answer = json.dumps({"product": product, "price": price})
        if i % 2:
            calls.append(("Extract the product and its price from the customer's message.", user, answer, schema))
        else:
            prompt = 'Pull out the product bought and the price paid. Reply with JSON: {"product": ..., "price": ...}.'
            calls.append((prompt, user, answer, None))
    _, found = _only_task(calls, 8, embed_fn, "json")
    assert len(found.cards[0].system_prompts) == 2


def test_a_low_volume_task_in_two_wordings_is_collect_more_with_a_stable_id(embed_fn):
    """Neither wording alone reaches min_task_records; together they are one small task, kept as
    collect_more, and it keeps its id when it grows past the threshold and gains a wording."""
    rng = random.Random(9)
    calls = _money(rng, 30, MONEY[:1])
    log, small = _only_task(calls, 10, embed_fn, "label")
    assert small.cards[0].distillability.decision == "collect_more"

    later = [_record(len(log) + n, *call[1:3]) for n, call in enumerate(_money(rng, 30, MONEY[1:]))]
    grown = detect_tasks(log + later, PARAMS, embed_fn)
    assert [(c.count, c.distillability.decision) for c in grown.cards] == [(60, "collect_more")]
    assert grown.cards[0].id == small.cards[0].id


@pytest.mark.parametrize("n", [12])
def test_a_handful_of_calls_is_still_no_task(embed_fn, n):
    found = detect_tasks(_log(_money(random.Random(11), n, MONEY), 12), PARAMS, embed_fn)
    assert found.cards == []


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def test_calls_whose_instruction_has_a_typo_join_their_task_and_the_matcher_agrees(embed_fn, tmp_path):
    """A slip of the keyboard makes a template of its own that no other call shares: the second
    chance (instruction words) still places it, and serve's matcher routes it the same way."""
    rng = random.Random(21)
    calls = _several_slots(rng, 80)
    slipped = []
    for system, user, answer, fmt in _several_slots(rng, 10):
        words = user.split(" ")
        at = next(i for i, w in enumerate(words) if w.startswith("keep"))
        words[at] = _typo(words[at], rng)
        slipped.append((system, " ".join(words), answer, fmt))
    log = _log(calls + slipped, seed=22)
    found = detect_tasks(log, PARAMS, embed_fn)
    assert len(found.cards) == 1 and found.passes["second_chance_calls"] > 0
    typed = {user for _, user, _, _ in slipped}
    assert all(found.assignments[r.id] == found.cards[0].id for r in log if r.user_text in typed)
    task_users = {user for _, user, _, _ in calls} | typed
    assert all(found.assignments[r.id] is None for r in log if r.user_text not in task_users)
    index = build_index(
        log,
        found.assignments,
        found.cards,
        skeleton_words=found.skeleton_words,
        form_index=found.form_index,
        second_chance=(PARAMS.second_chance_similarity, PARAMS.second_chance_margin),
    )
    matcher = TaskMatcher(index)
    assert all(matcher.match_record(r) is not None for r in log if r.user_text in typed)
    assert all(matcher.match_record(r) is None for r in log if r.user_text not in task_users)


def test_json_array_answers_are_json_with_an_array_schema(embed_fn):
    """["Ann", "Bo"] is structured output: typed json (scored by items, decoded to a schema), not short text."""
    rng = random.Random(31)
    calls = []
    for _ in range(60):
        people = rng.sample(NAMES, rng.randint(0, 3))
        doc = json.dumps({"members": [{"first": n, "last": rng.choice(WORDS).title()} for n in people]})
        calls.append(("", f"get the first names out of this json\n{doc}", json.dumps(people), None))
    found = detect_tasks(_log(calls, seed=32), PARAMS, embed_fn)
    assert [(c.count, c.output_format) for c in found.cards] == [(60, "json")]
    assert found.cards[0].json_schema == {"type": "array", "items": {"type": "string"}}
