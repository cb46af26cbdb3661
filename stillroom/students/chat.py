"""What training and inference of the LM student must do identically: render a prompt, load the tokenizer,
find where an answer ends, read the label set and the JSON schema.

Both `lm_train` (what is learnt) and `lm` (what answers) import this, so an answer is always
decoded from exactly the prompt format and tokens it was trained on. No training packages here.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stillroom.schema import Message
from stillroom.students.base import last_user_turn


def chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The turns as the chat template (and TRL) takes them."""
    return [{"role": message.role, "content": message.content} for message in messages]


MIN_INPUT_TOKENS = 32  # of the last user turn, however long the fixed part of a prompt (system, examples) is


def prompt_length(tokenizer: Any, messages: Sequence[Message]) -> int:
    """Tokens of the prompt as the student reads it: rendered in the chat template, ready for the answer."""
    text = tokenizer.apply_chat_template(chat(messages), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def with_last_user_turn(messages: Sequence[Message], text: str) -> list[Message]:
    """The prompt with its last user turn's text replaced (a prompt without one is returned as it is)."""
    index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
    if index is None:
        return list(messages)
    return [*messages[:index], messages[index].model_copy(update={"content": text}), *messages[index + 1 :]]


def head(text: str, end: int, longest_word: int = 40) -> str:
    """`text` up to `end`, backed off to the word boundary before it when `end` falls inside a word."""
    if end >= len(text) or text[end].isspace() or end == 0:
        return text[:end]
    boundary = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end), text.rfind("\t", 0, end))
    return text[:boundary] if boundary > 0 and end - boundary <= longest_word else text[:end]


def tail(text: str, start: int, longest_word: int = 40) -> str:
    """`text` from `start`, moved on to the word boundary after it when `start` falls inside a word."""
    if start <= 0 or start >= len(text) or text[start - 1].isspace() or text[start].isspace():
        return text[start:].lstrip()
    found = [i for i in (text.find(" ", start), text.find("\n", start), text.find("\t", start)) if i >= 0]
    boundary = min(found, default=-1)
    return text[boundary:].lstrip() if 0 <= boundary - start <= longest_word else text[start:]


ELISION = "\n[...]\n"  # where a cut input's head and tail meet


def head_and_tail(text: str, offsets: Sequence[tuple[int, int]], keep: int, tail_share: float) -> str:
    """The text of `keep` of its tokens (`offsets`): the first ones and, for `tail_share` of them, the last
    ones, each cut between words, joined by `ELISION`."""
    if keep >= len(offsets):
        return text
    tail_keep = min(round(keep * tail_share), keep)
    first = head(text, offsets[keep - tail_keep - 1][1] if keep > tail_keep else 0)
    if not tail_keep:
        return first
    return first + ELISION + tail(text, offsets[len(offsets) - tail_keep][0])


def fit_prompt(
    tokenizer: Any, messages: Sequence[Message], max_tokens: int | None, tail_share: float = 0.0
) -> list[Message]:
    """The prompt with its last user turn cut, so the rendered prompt takes at most `max_tokens` (None: as
    it is). Training and answering cut alike, so the student reads what it was trained on.

    Why: SFT truncates prompt and answer together from the end, so a prompt longer than the training length
    lost its answer (on BBC headlines 36% of training rows kept no answer token, 60% a cut one), and a long
    prompt's prefill is most of an answer's time on a CPU. The head is kept (a story's lede, an email's
    header lines) and, for `tail_share` of the room, the end (a log's error, a thread's last message):
    `lm_train.prompt_tail_share` learns the share from where the training answers are found. The turn
    keeps `MIN_INPUT_TOKENS` tokens even when its fixed part fills the budget."""
    if max_tokens is None or prompt_length(tokenizer, messages) <= max_tokens:
        return list(messages)
    content = last_user_turn(messages)  # "" without a user turn: nothing to cut, the prompt stays as it is
    offsets = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    fixed = prompt_length(tokenizer, with_last_user_turn(messages, ""))
    keep = min(max(max_tokens - fixed, MIN_INPUT_TOKENS), len(offsets))
    while True:  # a cut can tokenize a little differently inside the template: step back by the overshoot
        fitted = with_last_user_turn(messages, head_and_tail(content, offsets, keep, tail_share) if keep else "")
        over = prompt_length(tokenizer, fitted) - max_tokens
        if over <= 0 or keep <= MIN_INPUT_TOKENS:
            return fitted
        keep = max(keep - over, MIN_INPUT_TOKENS)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_TOKENIZERS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()  # files' hash -> tokenizer
_TOKENIZERS_LOCK = threading.Lock()


def shared_tokenizer(path: str) -> Any:
    """The tokenizer of a student folder, one object per distinct set of tokenizer files in the process:
    LM students fine-tuned from one base carry the same files, and each copy would cost ~12 MB."""
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        file = Path(path) / name
        digest.update(name.encode() + b"\0" + (file.read_bytes() if file.exists() else b"") + b"\0")
    with _TOKENIZERS_LOCK:
        tokenizer = _TOKENIZERS.get(digest.hexdigest())
        if tokenizer is None:
            tokenizer = load_tokenizer(path)
            _TOKENIZERS[digest.hexdigest()] = tokenizer
    return tokenizer


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template; the LM student needs an instruct model")
    return tokenizer


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos and whatever the model's generation config adds."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def prompt_answer_ids(
    tokenizer: Any, chat: list[dict[str, str]], answer: str, eos_ids: Sequence[int]
) -> tuple[list[int], list[int]]:
    """The prompt's tokens and the answer's, in the chat template, the answer ending at its end-of-turn token.

    Split on the rendered text, as TRL does, so the answer tokens are exactly the ones trained on.
    """
    prompt_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently once an answer follows it")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    end = next((i + 1 for i, token in enumerate(answer_ids) if token in eos_ids), len(answer_ids))
    return prompt_ids, answer_ids[:end]


def clean_labels(labels: Sequence[str] | None) -> list[str] | None:
    """Distinct labels in their given order; None when there is no label set."""
    if not labels:
        return None
    return list(dict.fromkeys(labels))


def schema_validator(schema: dict[str, Any]) -> Any:
    """A validator for the schema's own draft; a malformed schema fails here, not on the first answer."""
    from jsonschema.validators import validator_for

    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)
