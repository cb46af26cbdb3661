"""The LM student: a small causal LM fine-tuned to write the teacher's answer, for extraction and free text.

Trained with TRL on prompt/completion pairs in the model's own chat template, so the loss
falls on the answer only and inference sees exactly the prompt format it was trained on.
LoRA keeps training cheap on a CPU; the adapter is merged back before saving so a student
is a plain transformers folder that loads in a second, with no PEFT at inference.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stillroom.base_lm import resolve_base_lm
from stillroom.config import LMParams
from stillroom.schema import DatasetRow, Message, Prediction
from stillroom.students.base import Prompt, Student, read_manifest, write_manifest


def _chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template; the LM student needs an instruct model")
    return tokenizer


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Silence the datasets and transformers bars (dataset preparation, weight loading) when asked to."""
    import datasets
    from transformers.utils import logging as hf_logging

    was_datasets = not datasets.utils.are_progress_bars_disabled()
    was_transformers = hf_logging.is_progress_bar_enabled()
    if not enabled:
        datasets.utils.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_datasets:
            datasets.utils.enable_progress_bars()
        if was_transformers:
            hf_logging.enable_progress_bar()


class LMStudent(Student):
    kind = "lm"

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any]):
        """`info` is the manifest minus its kind: base_model, max_new_tokens and how it was trained."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.max_new_tokens = int(info["max_new_tokens"])

    @classmethod
    def train(
        cls,
        train: list[DatasetRow],
        validation: list[DatasetRow],
        params: LMParams,
        out_dir: Path,
        seed: int = 0,
        progress: bool = True,
    ) -> tuple[LMStudent, dict[str, Any]]:
        """Fine-tune the base model on the rows' targets, save the merged student to `out_dir`."""
        from transformers import AutoModelForCausalLM, PrinterCallback, set_seed
        from trl import SFTTrainer

        if not train:
            raise ValueError("the LM student needs at least one training row")
        set_seed(seed)
        rows = list(train)
        if len(rows) > params.max_train_examples:
            rows = random.Random(seed).sample(rows, params.max_train_examples)

        base_path = resolve_base_lm(params.base_model)
        with _progress_bars(progress), tempfile.TemporaryDirectory(prefix="stillroom-lm-") as scratch:
            tokenizer = _load_tokenizer(base_path)
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            trainer = SFTTrainer(
                model=model,
                args=_sft_config(params, scratch, seed, progress),
                train_dataset=_sft_dataset(rows),
                eval_dataset=_sft_dataset(validation) if validation else None,
                processing_class=tokenizer,
                peft_config=_lora_config(params) if params.lora else None,
            )
            if not progress:
                trainer.remove_callback(PrinterCallback)  # with tqdm off, the trainer prints every log line
            started = time.perf_counter()
            result = trainer.train()
            train_seconds = time.perf_counter() - started
            eval_loss = trainer.evaluate()["eval_loss"] if validation else None

        model = trainer.model
        if params.lora:
            model = model.merge_and_unload()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        info = {
            "base_model": params.base_model,
            "max_new_tokens": params.max_new_tokens,
            "max_length": params.max_length,
            "lora": params.lora,
            "lora_r": params.lora_r if params.lora else None,
            "lora_alpha": params.lora_alpha if params.lora else None,
            "seed": seed,
            "n_train": len(rows),
        }
        student = cls(model, tokenizer, info)
        with _progress_bars(progress):
            student.save(out_dir)
        stats = {
            "train_seconds": round(train_seconds, 2),
            "train_loss": result.training_loss,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "eval_loss": eval_loss,
            "steps": result.global_step,
            "epochs": trainer.state.epoch,
            "n_train": len(rows),
            "n_validation": len(validation),
            "base_model": params.base_model,
        }
        return student, stats

    @torch.inference_mode()
    def predict(self, prompts: Sequence[Prompt], batch_size: int = 16) -> list[Prediction]:
        """Greedy answers; confidence is the geometric mean probability of the answer's tokens."""
        texts = [
            self.tokenizer.apply_chat_template(_chat(prompt), tokenize=False, add_generation_prompt=True)
            for prompt in prompts
        ]
        # Batches of similar length waste less compute on padding; answers go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, prediction in zip(chunk, self._generate([texts[i] for i in chunk]), strict=True):
                results[index] = prediction
        return [prediction for prediction in results if prediction is not None]

    def _generate(self, texts: list[str]) -> list[Prediction]:
        from transformers import GenerationConfig

        self.tokenizer.padding_side = "left"  # generation continues from the last position of every row
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        eos_ids = self._eos_ids()
        generation = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        output = self.model.generate(**batch, generation_config=generation)
        answers = output.sequences[:, batch["input_ids"].shape[1] :]
        logprobs = self.model.compute_transition_scores(output.sequences, output.scores, normalize_logits=True)
        predictions = []
        for tokens, scores in zip(answers.tolist(), logprobs, strict=True):
            # Count tokens up to and including the first end-of-turn: deciding to stop is part of the answer,
            # the padding after it is not.
            length = next((i + 1 for i, token in enumerate(tokens) if token in eos_ids), len(tokens))
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            confidence = float(torch.exp(scores[:length].float().mean())) if length else 0.0
            predictions.append(Prediction(text=text, confidence=min(max(confidence, 0.0), 1.0)))
        return predictions

    def _eos_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return sorted({i for i in [*ids, self.tokenizer.eos_token_id] if i is not None})

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        write_manifest(directory, self.kind, **self.info)

    @classmethod
    def load(cls, directory: Path) -> LMStudent:
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        info = {key: value for key, value in read_manifest(directory).items() if key != "kind"}
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        return cls(model, _load_tokenizer(str(directory)), info)


def _sft_config(params: LMParams, output_dir: str, seed: int, progress: bool) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,  # the trainer insists on one; nothing we keep is written there
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.05,
        weight_decay=0.0,
        max_length=params.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",  # batches of similar length: less padding to compute
        # TRL's defaults (bf16, gradient checkpointing) are for GPUs; on a CPU they are slow or fail.
        # (`gradient_checkpointing` is a deprecated alias of `activation_checkpointing` in transformers 5.)
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_steps=0.1,
        disable_tqdm=not progress,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


def _lora_config(params: LMParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _sft_dataset(rows: Sequence[DatasetRow]) -> Any:
    """Conversational prompt/completion pairs: TRL then masks the prompt out of the loss."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": _chat(row.prompt), "completion": [{"role": "assistant", "content": row.target}]} for row in rows]
    )
