"""Detect on a synthetic log: three repeated tasks hidden among varied one-off prompts."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stillroom.answers import normalize_label
from stillroom.config import DetectParams, Params, SampleParams
from stillroom.data import Layout, read_assignments, read_cards, write_assignments, write_cards, write_jsonl
from stillroom.detect import run
from stillroom.detect.detection import Detection
from stillroom.detect.fingerprints import is_generic_prompt
from stillroom.detect.pipeline import detect_tasks
from stillroom.embeddings import embed
from stillroom.ingest import ingest
from stillroom.samples import build_sample_logs
from stillroom.schema import LogRecord, Message, Usage

START = datetime(2026, 9, 1, tzinfo=UTC)
PARAMS = DetectParams()

ROUTE_V1 = (
    "You route customer support emails. Classify the email into one of: billing, shipping, returns, "
    "account. Answer with the category only."
)
ROUTE_V2 = (
    "You route customer support emails. Classify each email into one of these categories: billing, "
    "shipping, returns, account. Reply with just the category."
)
ROUTE_ANSWERS = {
    "billing": ["I was charged twice for order {n}", "my invoice {n} shows the wrong VAT amount"],
    "shipping": ["parcel {n} has not arrived after two weeks", "the courier left order {n} at the wrong door"],
    "returns": ["how do I send back the shoes from order {n}", "I want a refund for the broken lamp, order {n}"],
    "account": ["I cannot log in since I changed my password", "please delete my account, customer {n}"],
}
EXTRACT_PROMPT = (
    'Extract the product name and the price from the message. Reply with JSON: {"product": ..., "price": ...}.'
)
PRODUCTS = ["kettle", "desk lamp", "phone case", "yoga mat", "coffee grinder", "backpack", "monitor", "headphones"]
PASSAGES = [
    "The council approved a new budget on Tuesday that raises spending on roads and schools.",
    "Researchers found that bees can recognise human faces after a short period of training.",
    "The football club confirmed that its captain will miss the rest of the season with a knee injury.",
    "A heatwave pushed temperatures above forty degrees across the south of the country this week.",
    "The startup raised twenty million dollars to build batteries for electric delivery vans.",
    "Archaeologists uncovered a Roman mosaic beneath a car park in the city centre.",
    "The central bank left interest rates unchanged but warned that inflation remains stubborn.",
    "A new study suggests that walking after meals helps to control blood sugar levels.",
]
ROUTE_OTHER_PROGRAM = (
    "Support inbox triage: decide the department for each message, one of billing, shipping, returns or account. "
    "Output only the department."
)
ROUTE_BY_HAND = [
    "which team should handle this email: {email}",
    "Route this email to billing, shipping, returns or account:\n\n{email}",
    "{email}\n\nwhich department: billing, shipping, returns or account?",
]
SUMMARIZE = ["summarize this: {text}", "Summarize this: {text}", "summarise this: {text}", "Summarize this:\n\n{text}"]
# (template, fillers): each a different kind of question, so no 40 of them are one task.
ONE_OFFS = [
    ("How do I fix a {} that keeps leaking?", ["kitchen tap", "car radiator", "garden hose"]),
    ("What should I pack for a week in {}?", ["Iceland in winter", "Lisbon in May", "the Alps"]),
    ("Can you recommend a novel similar to {}?", ["Dune", "Pride and Prejudice", "The Road"]),
    ("Why does my {} smell like burning?", ["toaster", "hair dryer", "laptop charger"]),
    ("Write a short poem about {}.", ["autumn rain", "an old lighthouse", "my grumpy cat"]),
    ("Is it safe to eat {} after the expiry date?", ["yoghurt", "eggs", "canned beans"]),
    ("Explain how {} works to a ten year old.", ["a rainbow", "the internet", "vaccination"]),
    ("What is a good name for a {}?", ["golden retriever puppy", "bakery", "fantasy kingdom"]),
    ("How many calories are in {}?", ["a banana", "a slice of pizza", "a glass of wine"]),
    ("Give me three ideas for a {} birthday party.", ["fifth", "thirtieth", "surprise"]),
    ("Translate 'good morning' into {}.", ["Japanese", "Swahili", "Portuguese"]),
    ("Which is better for beginners, {}?", ["guitar or piano", "Python or JavaScript", "yoga or pilates"]),
    ("My {} won't turn on, what can I try?", ["dishwasher", "smart TV", "electric bike"]),
    ("What happened during {}?", ["the fall of the Berlin Wall", "the moon landing", "the Boston Tea Party"]),
    ("Help me write an apology to {}.", ["my neighbour", "a colleague", "my landlord"]),
    ("How long should I boil {}?", ["an egg", "pasta", "potatoes"]),
    ("What are the rules of {}?", ["cricket", "chess", "curling"]),
    ("Suggest a weekend workout plan for {}.", ["runners", "office workers", "new parents"]),
    ("Is {} a good investment right now?", ["gold", "real estate", "an index fund"]),
    ("How do I get rid of {} in my garden?", ["slugs", "moles", "dandelions"]),
    ("What does the idiom '{}' mean?", ["break the ice", "spill the beans", "bite the bullet"]),
    ("Plan a two day trip to {} on a budget.", ["Rome", "Kyoto", "Edinburgh"]),
    ("Why do {} migrate?", ["birds", "whales", "butterflies"]),
    ("What wine goes well with {}?", ["salmon", "lamb stew", "mushroom risotto"]),
    ("How can I stop {} at night?", ["snoring", "overthinking", "waking up at 4am"]),
    ("Tell me a fun fact about {}.", ["octopuses", "Saturn", "the Eiffel Tower"]),
    ("What's the difference between {}?", ["weather and climate", "a virus and bacteria", "stocks and bonds"]),
    ("Should I learn {} before university?", ["statistics", "touch typing", "a second language"]),
    ("Draft a polite email declining {}.", ["a job offer", "a wedding invitation", "a meeting"]),
    ("How do I clean {}?", ["a cast iron pan", "suede shoes", "a mouldy shower curtain"]),
    ("What were the causes of {}?", ["the First World War", "the Great Depression", "the French Revolution"]),
    ("Can dogs eat {}?", ["grapes", "peanut butter", "cooked bones"]),
    ("Recommend a podcast about {}.", ["history", "true crime", "personal finance"]),
    ("How do I negotiate {}?", ["a higher salary", "rent", "the price of a used car"]),
    ("Who invented {}?", ["the telephone", "the bicycle", "penicillin"]),
    ("Why is the sky {} at sunset?", ["red", "orange", "purple"]),
    ("Make a shopping list for {}.", ["a vegan dinner party", "a camping trip", "a week of breakfasts"]),
    ("Any tips for {} with a toddler?", ["flying", "potty training", "a long car ride"]),
    ("What is the best way to memorise {}?", ["vocabulary", "a speech", "the periodic table"]),
    ("Compose a limerick about {}.", ["a forgetful wizard", "a dancing goat", "Monday mornings"]),
]


def _record(n: int, user: str, answer: str, system: str = "", response_format: dict | None = None) -> LogRecord:
    return LogRecord(
        id=f"rec-{n:05d}",
        timestamp=START + timedelta(minutes=7 * n),
        model="gpt-4o-mini",
        system_prompt=system,
        messages=[Message(role="user", content=user)],
        response_format=response_format,
        response_text=answer,
        usage=Usage(input_tokens=len(user) // 4 + 20, output_tokens=len(answer) // 4 + 1),
    )


def _calls(
    seed: int, routes: int = 120, extracts: int = 60, summaries: int = 50
) -> list[tuple[str, str, str, dict | None]]:
    """(system, user, answer, response_format) per call, in no particular order."""
    rng = random.Random(seed)
    calls: list[tuple[str, str, str, dict | None]] = []
    for i in range(routes):
        label = rng.choice(sorted(ROUTE_ANSWERS))
        user = rng.choice(ROUTE_ANSWERS[label]).format(n=rng.randint(1000, 9999))
        # The teacher's spelling drifts; the label is the same.
        answer = {0: label.capitalize(), 1: f"{label}."}.get(rng.randrange(6), label)
        calls.append((ROUTE_V1 if i < routes // 2 else ROUTE_V2, user, answer, None))
    for _ in range(extracts):
        product, price = rng.choice(PRODUCTS), f"{rng.randint(5, 300)}.{rng.randint(0, 99):02d}"
        user = f"Hi, I just bought the {product} for ${price} and it is great. Order ref {rng.randint(100, 999)}."
        answer = json.dumps({"product": product, "price": float(price)})
        calls.append((EXTRACT_PROMPT, user, answer, {"type": "json_object"}))
    for _ in range(summaries):
        text = " ".join(rng.sample(PASSAGES, 3))
        calls.append(("", rng.choice(SUMMARIZE).format(text=text), text.split(".")[0] + ".", None))
    return calls


def _one_offs(seed: int) -> list[tuple[str, str, str, dict | None]]:
    rng = random.Random(seed)
    calls = []
    for template, fillers in ONE_OFFS:
        for filler in fillers:
            system = "You are a helpful assistant." if rng.random() < 0.3 else ""
            calls.append((system, template.format(filler), f"Here is what I know about {filler}: it depends.", None))
    return calls


def _log(calls: list[tuple[str, str, str, dict | None]], seed: int, first: int = 0) -> list[LogRecord]:
    """Calls interleaved in time, as several programs and people share one API key; the
    routing prompt was reworded halfway, so every V1 call comes before every V2 call."""
    random.Random(seed).shuffle(calls)
    slots = [k for k, call in enumerate(calls) if call[0] in (ROUTE_V1, ROUTE_V2)]
    for k, call in zip(slots, sorted((calls[k] for k in slots), key=lambda c: c[0] == ROUTE_V2), strict=True):
        calls[k] = call
    return [_record(first + n, user, answer, system, fmt) for n, (system, user, answer, fmt) in enumerate(calls)]


@pytest.fixture(scope="module")
def embed_fn():
    """The real embedder, memoised: the tests detect on overlapping logs several times."""
    cache: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        cache.update(zip(missing, embed(missing, PARAMS.embedder), strict=True))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)

    return cached


@pytest.fixture(scope="module")
def log() -> list[LogRecord]:
    return _log(_calls(1) + _one_offs(2), seed=3)


@pytest.fixture(scope="module")
def found(log, embed_fn) -> Detection:
    return detect_tasks(log, PARAMS, embed_fn)


def _card_with(found: Detection, prompt: str):
    return next(card for card in found.cards if prompt in card.system_prompts)


def test_finds_each_repeated_task_once(found):
    assert len(found.cards) == 3
    assert [c.count for c in found.cards] == sorted((c.count for c in found.cards), reverse=True)
    assert len({c.name for c in found.cards}) == 3
    assert {c.detected_by for c in found.cards} == {"structure", "embedding"}


def test_reworded_prompt_is_one_label_task(found, log):
    card = _card_with(found, ROUTE_V1)
    assert card.system_prompts[:2] in ([ROUTE_V1, ROUTE_V2], [ROUTE_V2, ROUTE_V1])
    assert card.count == 120
    assert card.output_type == "label"
    assert sorted(card.labels) == ["account", "billing", "returns", "shipping"]  # the dominant spelling
    assert sum(card.label_distribution.values()) == card.count
    assert card.name.startswith("classify")
    route_ids = {r.id for r in log if r.system_prompt in (ROUTE_V1, ROUTE_V2)}
    assert {found.assignments[i] for i in route_ids} == {card.id}


def test_json_extraction_is_text(found):
    card = _card_with(found, EXTRACT_PROMPT)
    assert (card.count, card.output_type, card.labels) == (60, "text", [])
    assert card.models == {"gpt-4o-mini": 60}
    assert card.first_seen <= card.last_seen
    assert card.input_tokens > 0 and card.output_tokens > 0
    assert len(card.examples) == 5 and all(len(e) <= 200 for e in card.examples)


def test_hand_typed_task_found_by_meaning(found):
    card = next(c for c in found.cards if c.detected_by == "embedding")
    assert (card.count, card.output_type, card.system_prompts) == (50, "text", [])
    assert card.name == "summarize"


def test_a_task_asked_three_ways_is_one_task(embed_fn):
    """A program, a second program in its own words, and people typing it by hand."""
    rng = random.Random(20)
    calls = _calls(21, routes=80, extracts=0, summaries=0)
    for i in range(60):
        label = rng.choice(sorted(ROUTE_ANSWERS))
        email = rng.choice(ROUTE_ANSWERS[label]).format(n=rng.randint(1000, 9999))
        if i % 2:
            calls.append((ROUTE_OTHER_PROGRAM, email, label, None))
        else:
            calls.append(("", rng.choice(ROUTE_BY_HAND).format(email=email), label.capitalize(), None))
    found = detect_tasks(_log(calls + _one_offs(22), seed=23), PARAMS, embed_fn)
    assert [(c.count, c.output_format) for c in found.cards] == [(140, "label")]
    assert set(found.cards[0].system_prompts) == {ROUTE_V1, ROUTE_V2, ROUTE_OTHER_PROGRAM}
    passes = found.summary()["passes"]
    assert (passes["merged_away"], passes["attached_clusters"]) == (2, 3)


def test_cards_say_what_each_task_is_worth(found):
    route, extract = _card_with(found, ROUTE_V1), _card_with(found, EXTRACT_PROMPT)
    summarize = next(c for c in found.cards if c.detected_by == "embedding")
    assert route.distillability.decision == "distill_now" and route.distillability.score > 0.8
    assert route.name == "classify-email-billing"
    # 60 and 50 calls are tasks (min_task_records 40) but too few to train and test a student on
    for card in (extract, summarize):
        assert card.distillability.decision == "collect_more"
        assert card.distillability.reasons[0] == "decision collect_more: too few calls"
    assert extract.output_format == "json"
    assert extract.json_schema["properties"] == {"product": {"type": "string"}, "price": {"type": "number"}}
    assert summarize.output_format == "short_text" and summarize.templates == ["summarize this", "summarise this"]
    assert all(c.monthly_spend_usd > 0 and c.calls_per_day > 0 for c in found.cards)
    assert found.summary()["decisions"] == {"distill_now": 1, "collect_more": 2}


def test_one_offs_stay_unassigned(found, log):
    one_offs = {user for _, user, _, _ in _one_offs(2)}
    ids = [r.id for r in log if r.user_text in one_offs]
    unassigned = sum(found.assignments[i] is None for i in ids)
    assert unassigned >= 0.95 * len(ids)
    summary = found.summary()
    assert summary["records"] == len(log) and summary["tasks"] == 3
    assert summary["assigned"] + summary["unassigned"] == len(log)
    assert summary["passes"]["merged_away"] == 1


def test_ids_survive_a_rerun_and_appended_logs(found, log, embed_fn):
    again = detect_tasks(list(reversed(log)), PARAMS, embed_fn)
    assert again.assignments == found.assignments
    assert [c.model_dump() for c in again.cards] == [c.model_dump() for c in found.cards]

    more = _log(_calls(4, routes=30, extracts=20, summaries=10), seed=5, first=len(log))
    grown = detect_tasks(log + more, PARAMS, embed_fn)
    assert {c.id: c.name for c in grown.cards} == {c.id: c.name for c in found.cards}
    assert {r.id: grown.assignments[r.id] for r in log} == found.assignments


def test_empty_log_has_no_tasks():
    empty = detect_tasks([], PARAMS, embed_fn=lambda texts: pytest.fail("nothing to embed"))
    assert empty.cards == [] and empty.assignments == {}
    assert empty.summary()["tasks"] == 0


def test_a_persona_prompt_with_unrelated_questions_is_not_a_task(embed_fn):
    persona = "You are the friendly support bot of Acme Routers. Help customers politely and in detail."
    calls = [
        (persona, user, answer + " Let me explain in a few sentences why.", fmt)
        for _, user, answer, fmt in _one_offs(6)
    ]
    found = detect_tasks(_log(calls, seed=7), PARAMS, embed_fn)
    assert found.cards == []
    assert found.summary()["passes"]["inconsistent_groups"] == 1


def test_label_set_ignores_stray_answers_and_keeps_the_teachers_spelling(log, embed_fn):
    stray = {"I'm sorry, I can't tell which team should handle this email.", "Billing or maybe shipping"}
    noisy = []
    for record in log:
        if stray and record.system_prompt == ROUTE_V2:
            record = record.model_copy(update={"response_text": stray.pop()})
        elif normalize_label(record.response_text) == "account":
            record = record.model_copy(update={"response_text": "Account"})
        noisy.append(record)
    card = _card_with(detect_tasks(noisy, PARAMS, embed_fn), ROUTE_V1)
    assert (card.count, card.output_type) == (120, "label")
    assert sorted(card.labels) == ["Account", "billing", "returns", "shipping"]
    assert sum(card.label_distribution.values()) == 118


def test_similar_prompts_for_different_tasks_stay_apart(embed_fn):
    """Even with a very loose merge_similarity, prompts only merge when their answers agree."""
    rng = random.Random(10)
    emails = [text.format(n=n) for texts in ROUTE_ANSWERS.values() for text in texts for n in range(8)]
    tasks = {
        "You route customer support emails. Classify the email by urgency, one of: low, medium, high. "
        "Answer with the urgency only.": lambda: rng.choice(["low", "medium", "high"]),
        "You route customer support emails. Write the name of the customer who wrote the email.": lambda: (
            f"{rng.choice(['Ann', 'Bo', 'Cy', 'Di', 'Ed', 'Flo'])} {rng.choice(['Li', 'Ng', 'Roe', 'Sax', 'Tam'])}"
            f"{rng.randint(1, 99)}"
        ),
    }
    calls = [(prompt, email, answer(), None) for prompt, answer in tasks.items() for email in emails]
    calls += [(system, user, answer, fmt) for system, user, answer, fmt in _calls(11, 60, 0, 0)]
    found = detect_tasks(_log(calls, seed=12), DetectParams(merge_similarity=0.3), embed_fn)
    assert sorted((c.count, c.output_type) for c in found.cards) == [(60, "label"), (64, "label"), (64, "text")]
    assert found.summary()["passes"]["merged_away"] == 1


def test_too_few_calls_are_not_a_task_but_a_small_sure_one_is_collect_more(embed_fn):
    """Under min_cluster_records nothing is a task; between it and min_task_records a group
    answered in one shape is kept, and the card says to collect more."""
    found = detect_tasks(_log(_calls(8, routes=30, extracts=10, summaries=10), seed=9), PARAMS, embed_fn)
    assert [(c.count, c.output_format, c.distillability.decision) for c in found.cards] == [
        (30, "label", "collect_more")
    ]
    assert sum(t is not None for t in found.assignments.values()) == 30
    tiny = detect_tasks(_log(_calls(8, routes=12, extracts=10, summaries=10), seed=9), PARAMS, embed_fn)
    assert tiny.cards == [] and set(tiny.assignments.values()) == {None}


def test_normalize_label():
    assert normalize_label("  Sport. ") == normalize_label("sport") == "sport"
    assert normalize_label("Not  Spam\n") == "not spam"
    assert normalize_label('{"people": []}') == '{"people": []}'


@pytest.mark.parametrize(
    ("prompt", "generic"),
    [
        ("", True),
        ("You are a helpful assistant.", True),
        ("You are ChatGPT, a large language model trained by OpenAI.\nCurrent date: 2026-09-01", True),
        (ROUTE_V1, False),
        ("You are a spam detection model.", False),
        ("You are a helpful assistant. Answer in French.", False),
    ],
)
def test_generic_prompts(prompt, generic):
    assert is_generic_prompt(prompt) is generic


def test_run_writes_cards_assignments_and_metrics(tmp_path, log, found):
    layout = Layout(tmp_path)
    write_jsonl(layout.records, log)
    summary = run(Params(), layout)
    assert summary == json.loads(layout.stage_metrics("detect").read_text())
    assert (summary["records"], summary["tasks"]) == (len(log), 3)
    assert read_cards(layout.cards) == found.cards
    assert read_assignments(layout.assignments) == found.assignments

    assert run(Params(), layout)["history"] == []  # a re-run changes nothing and records nothing
    assert not (layout.tasks_dir / "history.json").exists()


def test_run_keeps_earlier_ids_and_records_a_merge(tmp_path, log, found):
    """As if an earlier run had split the routing task by prompt wording under other ids."""
    layout = Layout(tmp_path)
    write_jsonl(layout.records, log)
    route = _card_with(found, ROUTE_V1)
    wording = {r.id: r.system_prompt for r in log}
    earlier = {
        rid: ({ROUTE_V1: "task-v1", ROUTE_V2: "task-v2"}[wording[rid]] if task == route.id else task)
        for rid, task in found.assignments.items()
    }
    split = [
        route.model_copy(update={"id": "task-v1"}),
        route.model_copy(update={"id": "task-v2", "first_seen": route.last_seen}),
        *(c for c in found.cards if c.id != route.id),
    ]
    write_cards(layout.cards, split)
    write_assignments(layout.assignments, earlier)

    summary = run(Params(), layout)
    assert summary["history"] == [{"event": "merged", "from": ["task-v1", "task-v2"], "to": ["task-v1"]}]
    cards = read_cards(layout.cards)
    assert {c.id for c in cards} == {c.id for c in found.cards} - {route.id} | {"task-v1"}
    assert {read_assignments(layout.assignments)[rid] for rid, w in wording.items() if w == ROUTE_V2} == {"task-v1"}
    history = json.loads((layout.tasks_dir / "history.json").read_text())
    assert history[0]["ids"] == {"task-v1": ["task-v1"], "task-v2": ["task-v1"]}


@pytest.mark.parametrize(
    "sample",
    [
        SampleParams(),  # the default sample (params.yaml)
        SampleParams(  # e2e's
            bbc_articles=160, wnut_tweets=140, oneoff_prompts=120, downloads_files=0, jpeg_images=0, bbc_headlines=0
        ),
    ],
    ids=["default", "e2e"],
)
def test_both_sample_tasks_are_worth_distilling_now(tmp_path, embed_fn, sample):
    build_sample_logs(sample, tmp_path)
    found = detect_tasks(ingest(tmp_path).records, PARAMS, embed_fn)
    labels = sorted(count for count in (sample.bbc_articles, sample.downloads_files, sample.jpeg_images) if count)
    headlines = [("short_text", sample.bbc_headlines)] if sample.bbc_headlines else []
    assert sorted((c.output_format, c.count) for c in found.cards) == [
        ("json", sample.wnut_tweets),
        *(("label", count) for count in labels),
        *headlines,
    ]
    assert [c.distillability.decision for c in found.cards] == ["distill_now"] * (1 + len(labels) + len(headlines))
    assert found.summary()["unassigned"] == sample.oneoff_prompts
    image_tasks = [c.count for c in found.cards if c.inputs == "image+text"]
    assert image_tasks == ([sample.jpeg_images] if sample.jpeg_images else [])
