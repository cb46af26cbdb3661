"""Template mining: calls that fill one template share it; chat turns share none."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from stillroom.detect.templates import candidates, mask, mine


def test_mask_folds_what_varies_between_calls_of_one_template():
    assert mask("  Order 12345:  ") == mask("order 7") == "order <num>"
    assert mask("See https://x.io/a?b=1 or www.y.org, ask @ann_b or ann@x.co") == (
        "see <url> or <url> ask <user> or <email>"
    )
    assert mask("Price: 1,299.00 on 2026-09-01") == "price: <num> on <num>"


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        ("Summarize this: a long text about bees", ["summarize this"]),
        ("Title: Foo\n\nThe body.\n\nTopic?", ["title", "title: foo", "topic"]),
        ("What is 2 + 2?", ["what is <num> + <num>"]),
        ("What is love?", []),  # short, but nothing in it varies
        ("i went hiking today\nit was great", []),  # a chat message: no instruction part
    ],
)
def test_candidates_are_where_people_put_instructions(turn, expected):
    assert candidates(turn) == expected


def test_mine_picks_the_part_shared_with_most_turns():
    turns = ["Summarize this: a text", "summarize this:  another", "What is 2 + 2?", "A story.\n\nTL;DR", "B.\n\ntl;dr"]
    assert mine(turns) == ["summarize this", "summarize this", None, "tl;dr", "tl;dr"]
    assert mine(turns, min_support=3) == [None] * 5
    assert mine(["What is 2 + 2?", "what is 10 + 3?"]) == ["what is <num> + <num>"] * 2


def test_real_chat_turns_share_almost_no_template():
    """Real one-off prompts (chitchat-dataset): a few thousand turns give next to no shared template."""
    conversations = json.loads((files("chitchat_dataset") / "dataset.json").read_text(encoding="utf-8"))
    turns = [
        "\n".join(u["text"] for u in turn)
        for conversation in list(conversations.values())[:1500]
        for turn in conversation["messages"][2:]
    ]
    shared = [t for t in mine(turns) if t is not None]
    assert len(turns) > 10_000
    assert len(shared) <= 0.001 * len(turns)
