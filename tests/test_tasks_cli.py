"""`stillroom tasks` and `stillroom tasks show`: the table, the card with its reasons, --json."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stillroom.cli import app
from stillroom.config import DistillParams
from stillroom.data import Layout, write_cards
from stillroom.detect.distillability import assess
from stillroom.schema import Example, TaskCard

runner = CliRunner()


def write_project(tmp_path) -> None:
    card = TaskCard(
        id="task-abc",
        name="classify-ticket",
        count=600,
        output_type="label",
        output_format="label",
        labels=["billing", "shipping"],
        label_distribution={"billing": 400, "shipping": 200},
        calls_per_day=20.0,
        monthly_spend_usd=12.5,
        prices={"gpt-4o-mini": {"input": 0.15, "output": 0.6, "price_entry": "gpt-4o-mini"}},
        representative=[Example(input="my invoice [draft] is wrong", output="billing")],
        edge_cases=[Example(input="where is it", output="shipping", why="shortest input")],
    )
    card.distillability = assess(card, DistillParams())
    write_cards(Layout(tmp_path).cards, [card])


def test_tasks_table(tmp_path):
    write_project(tmp_path)
    result = runner.invoke(app, ["tasks", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for text in ("classify-ticket", "600", "label", "$12.50", "0.96", "distill_now", "spend/month", "decision"):
        assert text in result.output


def test_tasks_json_leaves_out_the_long_fields(tmp_path):
    write_project(tmp_path)
    tasks = json.loads(runner.invoke(app, ["tasks", "--root", str(tmp_path), "--json"]).output)
    assert [t["distillability"]["decision"] for t in tasks] == ["distill_now"]
    assert tasks[0]["monthly_spend_usd"] == 12.5 and "edge_cases" not in tasks[0]


def test_show_prints_the_card_with_its_reasons(tmp_path):
    write_project(tmp_path)
    result = runner.invoke(app, ["tasks", "show", "classify-ticket", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "decision: distill_now" in result.output
    assert "break even: $12.5/month now, training ~$0.01: pays back in 0 days" in result.output
    assert "my invoice [draft] is wrong" in result.output  # brackets in user text are text, not markup
    assert "(shortest input)" in result.output and "gpt-4o-mini $0.15/$0.6 per 1M" in result.output

    card = json.loads(runner.invoke(app, ["tasks", "show", "task-abc", "--root", str(tmp_path), "--json"]).output)
    assert card["distillability"]["reasons"][0].startswith("decision distill_now")
    assert card["edge_cases"][0]["why"] == "shortest input"

    missing = runner.invoke(app, ["tasks", "show", "nope", "--root", str(tmp_path)])
    assert missing.exit_code == 1
