"""params.yaml and the code's defaults say the same, and closed choices fail at load with the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stillroom.config import Params, load_params

ROOT = Path(__file__).resolve().parent.parent


def test_code_defaults_equal_params_yaml():
    """A stage run without params.yaml (a test, a notebook) must behave as the shipped file says."""
    assert Params().model_dump(by_alias=True) == load_params(ROOT / "params.yaml").model_dump(by_alias=True)


@pytest.mark.parametrize(
    ("section", "value", "allowed"),
    [
        (
            {"synthesize": {"teacher": {"backend": "carrier-pigeon"}}},
            "carrier-pigeon",
            "'replay', 'openai' or 'anthropic'",
        ),
        ({"train": {"rung": "ensemble"}}, "ensemble", "'classifier', 'image_classifier', 'span', 'lm' or 'distill'"),
    ],
)
def test_a_typo_in_a_closed_choice_names_the_allowed_values(section, value, allowed):
    with pytest.raises(ValidationError, match=allowed):
        Params.model_validate(section)


def test_a_misspelt_key_fails_with_its_name():
    with pytest.raises(ValidationError, match="learning_rat"):
        Params.model_validate({"train": {"lm": {"learning_rat": 0.1}}})
