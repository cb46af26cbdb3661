"""The LM student: a small causal LM fine-tuned to write the teacher's answer, for extraction and free text.

Trained with TRL on prompt/completion pairs in the model's own chat template, so the loss
falls on the answer only and inference sees exactly the prompt format it was trained on.
LoRA keeps training cheap on a CPU; the adapter is merged back before saving so a student
is a plain transformers folder that loads in a second, with no PEFT at inference.

Answers are checked against what the task allows: with a label set the student scores every
label instead of writing freely (so every answer is a label), and with a JSON schema an answer
that does not parse or validate is marked invalid with confidence 0, so a router sends it on.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stillroom.base_lm import resolve_base_lm
from stillroom.config import LMParams
from stillroom.metrics.scoring import parse_json
from stillroom.schema import DatasetRow, Message, Prediction
from stillroom.students.base import Prompt, Student, last_user_turn, read_manifest, write_manifest


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


def _clean_labels(labels: Sequence[str] | None) -> list[str] | None:
    """Distinct labels in their given order; None when there is no label set."""
    if not labels:
        return None
    return list(dict.fromkeys(labels))


def _schema_validator(schema: dict[str, Any]) -> Any:
    """A validator for the schema's own draft; a malformed schema fails here, not on the first answer."""
    from jsonschema.validators import validator_for

    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def answer_constraints(rows: Sequence[DatasetRow], grounded_share: float = 0.98) -> dict[str, Any]:
    """What every training answer of a JSON task has in common, so inference need not guess it.

    `answer_prefix`: the answers' shared start up to the last ':' (e.g. `{"people":`); it is
    written after the prompt instead of generated, saving a third of the decoding steps.
    `grounded`: nearly every extracted string appears verbatim in the input, so the task is
    extraction and answers are snapped back to the input's own spans (see ground_in_source).
    """
    targets = [row.target for row in rows]
    prefix = _common_prefix(targets)
    prefix = prefix[: prefix.rfind(":") + 1] if prefix.startswith("{") else ""
    values = found = 0
    for row in rows:
        parsed = parse_json(row.target)
        for value in _string_values(parsed) if parsed is not None else []:
            values += 1
            found += value in row.input_text
    return {"answer_prefix": prefix, "grounded": bool(values) and found >= grounded_share * values}


def _common_prefix(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    shortest, longest = min(texts), max(texts)  # the lexical extremes bound every other text's prefix
    end = next((i for i, (a, b) in enumerate(zip(shortest, longest, strict=False)) if a != b), len(shortest))
    return shortest[:end]


def _string_values(obj: dict) -> list[str]:
    """Top-level string values and strings inside top-level lists: what an extraction task copies."""
    out = []
    for value in obj.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                out.append(item)
    return out


def ground_in_source(obj: dict, source: str) -> dict:
    """Snap each extracted string to the input's own text; drop what the input does not contain.

    A value is found as written, else ignoring case, else by the longest run of its words the
    input contains ("J Joaquin Phoenix" -> "Joaquin Phoenix"); the span then grows left to the
    start of its word, as the teacher copies whole words ("-Larry Bird" in "-Larry Bird said").
    """
    lowered = source.casefold()

    def snap(value: str) -> str | None:
        words = value.split()
        for size in range(len(words), 0, -1):
            for first in range(len(words) - size + 1):
                piece = " ".join(words[first : first + size])
                at = source.find(piece)
                at = at if at >= 0 else lowered.find(piece.casefold())
                if at >= 0:
                    start = at
                    while start > 0 and not source[start - 1].isspace():
                        start -= 1
                    return source[start : at + len(piece)]
        return None

    grounded: dict = {}
    for key, value in obj.items():
        if isinstance(value, list):
            snapped = [snap(item) if isinstance(item, str) else item for item in value]
            grounded[key] = [item for item in snapped if item is not None]
        elif isinstance(value, str):
            grounded[key] = snap(value) or value
        else:
            grounded[key] = value
    return grounded


_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


def json_field_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of every top-level field (key through value) of a text that is one JSON object."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        match = _JSON_WHITESPACE.match(text, i)
        return match.end() if match else i

    i = skip(0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    spans: dict[str, tuple[int, int]] = {}
    i = skip(i + 1)
    if text[i : i + 1] == "}":
        return spans
    while True:
        start = i
        key, i = decoder.raw_decode(text, i)
        i = skip(i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        _, i = decoder.raw_decode(text, skip(i + 1))
        spans[str(key)] = (start, i)
        i = skip(i)
        if text[i : i + 1] == ",":
            i = skip(i + 1)
        elif text[i : i + 1] == "}":
            return spans
        else:
            raise ValueError(f"expected ',' or '}}' at {i}")


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
        """`info` is the manifest minus its kind: base model, max_new_tokens, labels, json_schema, training facts."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.max_new_tokens = int(info["max_new_tokens"])
        self.labels: list[str] | None = _clean_labels(info.get("labels"))
        self.json_schema: dict[str, Any] | None = info.get("json_schema")
        self._validator = _schema_validator(self.json_schema) if self.json_schema is not None else None
        self._label_ids: list[list[int]] | None = None  # built on first use
        # Learnt from the training answers (see `answer_constraints`): a constant start every answer
        # shares, written instead of generated, and whether extracted values are copied from the input.
        self.answer_prefix: str = info.get("answer_prefix") or ""
        self.grounded: bool = bool(info.get("grounded"))

    @classmethod
    def train(
        cls,
        train: list[DatasetRow],
        validation: list[DatasetRow],
        params: LMParams,
        out_dir: Path,
        seed: int = 0,
        progress: bool = True,
        labels: list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> tuple[LMStudent, dict[str, Any]]:
        """Fine-tune the base model on the rows' targets, save the merged student to `out_dir`.

        With `params.teacher_model` set this is the distill rung: the loss also pulls the student's
        next-token distribution towards the teacher's. `labels` and `json_schema` are kept in the
        manifest and decide how the student answers (see `predict`).
        """
        from transformers import AutoModelForCausalLM, PrinterCallback, set_seed
        from trl import SFTTrainer

        if not train:
            raise ValueError("the LM student needs at least one training row")
        labels = _clean_labels(labels)
        if json_schema is not None:
            _schema_validator(json_schema)  # a bad schema fails before an hour of training, not after
        set_seed(seed)
        rows = list(train)
        if len(rows) > params.max_train_examples:
            rows = random.Random(seed).sample(rows, params.max_train_examples)
        rung = "distill" if params.teacher_model else "lm"

        base_path = resolve_base_lm(params.base_model)
        with _progress_bars(progress), tempfile.TemporaryDirectory(prefix="stillroom-lm-") as scratch:
            tokenizer = _load_tokenizer(base_path)
            if params.teacher_model:
                from stillroom.students.distill import distillation_trainer, load_teacher

                teacher = load_teacher(params.teacher_model, tokenizer, params.base_model)  # checked before loading
                model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
                trainer = distillation_trainer(
                    model, teacher, tokenizer, rows, validation, params, scratch, seed, progress
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
                trainer = SFTTrainer(
                    model=model,
                    args=_sft_config(params, scratch, seed, progress, evaluate=bool(validation)),
                    train_dataset=_sft_dataset(rows),
                    eval_dataset=_sft_dataset(validation) if validation else None,
                    processing_class=tokenizer,
                    peft_config=lora_config(params) if params.lora else None,
                )
            if not progress:
                trainer.remove_callback(PrinterCallback)  # with tqdm off, the trainer prints every log line
            started = time.perf_counter()
            result = trainer.train()
            train_seconds = time.perf_counter() - started
            curve, eval_curve = _curves(trainer.state.log_history)
            eval_loss = None
            if validation:
                # The epoch-end evaluation usually already scored the final weights; only re-run it if not.
                if eval_curve and eval_curve[-1]["step"] == result.global_step:
                    eval_loss = eval_curve[-1]["eval_loss"]
                else:
                    eval_loss = trainer.evaluate()["eval_loss"]

        model = trainer.model
        if params.lora:
            model = model.merge_and_unload()
        info = {
            "base_model": params.base_model,
            "rung": rung,
            "teacher_model": params.teacher_model,
            "max_new_tokens": params.max_new_tokens,
            "max_length": params.max_length,
            "lora": params.lora,
            "lora_r": params.lora_r if params.lora else None,
            "lora_alpha": params.lora_alpha if params.lora else None,
            "seed": seed,
            "n_train": len(rows),
            "labels": labels,
            "json_schema": json_schema,
            **(answer_constraints(rows) if json_schema is not None else {}),
        }
        student = cls(model, tokenizer, info)
        with _progress_bars(progress):
            student.save(out_dir)
        stats: dict[str, Any] = {
            "rung": rung,
            "train_seconds": round(train_seconds, 2),
            "train_loss": result.training_loss,
            "first_loss": curve[0]["loss"] if curve else None,
            "final_loss": curve[-1]["loss"] if curve else None,
            "eval_loss": eval_loss,
            "steps": result.global_step,
            "epochs": trainer.state.epoch,
            "n_train": len(rows),
            "n_validation": len(validation),
            "base_model": params.base_model,
            "teacher_model": params.teacher_model,
            "curve": curve,
            "eval_curve": eval_curve,
        }
        if rung == "distill":
            stats["distill_alpha"] = params.distill_alpha
            stats["distill_temperature"] = params.distill_temperature
        return student, stats

    @classmethod
    def zero_shot(
        cls,
        base_model: str,
        labels: list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
        max_new_tokens: int = 32,
    ) -> LMStudent:
        """The untuned base model answering as a student: the baseline that says what training bought."""
        from transformers import AutoModelForCausalLM

        path = resolve_base_lm(base_model)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        info = {
            "base_model": base_model,
            "rung": None,
            "zero_shot": True,
            "max_new_tokens": max_new_tokens,
            "n_train": 0,
            "labels": _clean_labels(labels),
            "json_schema": json_schema,
        }
        return cls(model, _load_tokenizer(path), info)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[Prompt], batch_size: int = 16) -> list[Prediction]:
        """One answer per prompt, in input order.

        With labels: the most likely label (confidence = its probability renormalised over the label set),
        one prompt at a time (`batch_size` unused: the prompt pass dominates and then needs no padding).
        Otherwise greedy text, confidence = geometric mean probability of its tokens; with a JSON schema,
        that of the weakest top-level field, and 0 with valid=False when the answer does not validate.
        """
        if self.labels:
            predictions = []
            for distribution in self.label_distribution(prompts):
                best = max(distribution, key=distribution.__getitem__)
                predictions.append(Prediction(text=best, confidence=min(max(distribution[best], 0.0), 1.0)))
            return predictions
        texts = [self._prompt_text(prompt) + self.answer_prefix for prompt in prompts]
        inputs = [last_user_turn(prompt) for prompt in prompts]
        # Batches of similar length waste less compute on padding; answers go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            generated = self._generate([texts[i] for i in chunk], [inputs[i] for i in chunk])
            for index, prediction in zip(chunk, generated, strict=True):
                results[index] = prediction
        return [prediction for prediction in results if prediction is not None]

    @torch.inference_mode()
    def label_distribution(self, prompts: Sequence[Prompt]) -> list[dict[str, float]]:
        """For each prompt, every label's probability as the whole answer, renormalised over the label set.

        A label's score is the log-probability of its tokens and the end-of-turn token after the prompt.
        The prompt runs once; its KV cache is copied for the labels, which then run as one small batch.
        """
        if not self.labels:
            raise ValueError("this student has no label set")
        label_ids = self._label_token_ids()
        n_labels, longest = len(label_ids), max(len(ids) for ids in label_ids)
        pad = self.tokenizer.pad_token_id
        targets = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in label_ids])
        target_mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in label_ids])
        distributions = []
        for prompt in prompts:
            prompt_ids = self.tokenizer(self._prompt_text(prompt), return_tensors="pt", add_special_tokens=False)
            prompt_ids = prompt_ids["input_ids"]
            out = self.model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)[targets[:, 0]]  # (L,)
            scores = first
            if longest > 1:
                # Feed each label's tokens but the last; the logits at position j score its token j + 1.
                cache = out.past_key_values
                cache.batch_repeat_interleave(n_labels)
                prompt_mask = torch.ones(n_labels, prompt_ids.shape[1], dtype=torch.long)
                rest = self.model(
                    input_ids=targets[:, :-1],
                    attention_mask=torch.cat([prompt_mask, target_mask[:, :-1]], dim=1),
                    past_key_values=cache,
                    use_cache=True,
                )
                logprobs = torch.log_softmax(rest.logits.float(), dim=-1).gather(-1, targets[:, 1:, None])[..., 0]
                scores = first + (logprobs * target_mask[:, 1:]).sum(dim=1)
            probabilities = torch.softmax(scores, dim=0).tolist()
            distributions.append(dict(zip(self.labels, probabilities, strict=True)))
        return distributions

    def json_prediction(
        self, tokens: Sequence[int], logprobs: Sequence[float] | torch.Tensor, source: str | None = None
    ) -> Prediction:
        """Judge one generated answer against the schema: valid JSON gets its weakest field's confidence.

        Each token is mapped to the characters it adds to the decoded text; a field's confidence is the
        geometric mean probability of the tokens overlapping its key-to-value span.
        """
        if self._validator is None:
            raise ValueError("this student has no JSON schema")
        tokens = list(tokens)
        scores = torch.as_tensor(logprobs, dtype=torch.float32)[: len(tokens)]
        prefix = self.answer_prefix  # written, not generated: it has no token scores of its own
        raw = prefix + self.tokenizer.decode(tokens, skip_special_tokens=True)
        text = raw.strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not self._validator.is_valid(parsed):
            return Prediction(text=text, confidence=0.0, valid=False)
        lead = len(raw) - len(raw.lstrip())
        ends, reached = [], 0
        for k in range(1, len(tokens) + 1):
            # Decoding prefixes (not single tokens) keeps multi-byte characters and merged spaces right.
            reached = max(reached, len(prefix) + len(self.tokenizer.decode(tokens[:k], skip_special_tokens=True)))
            ends.append(reached)
        starts = [len(prefix), *ends[:-1]]
        confidences = []
        for start, end in json_field_spans(text).values():
            start, end = start + lead, end + lead
            inside = [k for k in range(len(tokens)) if starts[k] < end and ends[k] > start]
            if inside:
                confidences.append(float(torch.exp(scores[inside].mean())))
        if not confidences:  # `{}`: nothing to single out, so the answer as a whole
            confidences.append(float(torch.exp(scores.mean())) if len(tokens) else 0.0)
        if self.grounded and source is not None:
            text = json.dumps(ground_in_source(parsed, source), ensure_ascii=False)
        return Prediction(text=text, confidence=min(max(min(confidences), 0.0), 1.0))

    def _prompt_text(self, prompt: Prompt) -> str:
        return self.tokenizer.apply_chat_template(_chat(prompt), tokenize=False, add_generation_prompt=True)

    def _label_token_ids(self) -> list[list[int]]:
        """Each label as the answer tokens training taught, end-of-turn included; the same after any prompt."""
        if self._label_ids is None:
            eos_ids = self._eos_ids()
            probe = [{"role": "user", "content": "?"}]
            self._label_ids = [
                prompt_answer_ids(self.tokenizer, probe, label, eos_ids)[1] for label in self.labels or []
            ]
            if any(not ids for ids in self._label_ids):
                raise ValueError("a label renders to no tokens")
        return self._label_ids

    def _generate(self, texts: list[str], sources: Sequence[str] | None = None) -> list[Prediction]:
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
        sources = list(sources) if sources is not None else [None] * len(texts)
        for tokens, scores, source in zip(answers.tolist(), logprobs, sources, strict=True):
            # Count tokens up to and including the first end-of-turn: deciding to stop is part of the answer,
            # the padding after it is not.
            length = next((i + 1 for i, token in enumerate(tokens) if token in eos_ids), len(tokens))
            if self._validator is not None:
                predictions.append(self.json_prediction(tokens[:length], scores[:length], source))
                continue
            text = (self.answer_prefix + self.tokenizer.decode(tokens[:length], skip_special_tokens=True)).strip()
            confidence = float(torch.exp(scores[:length].float().mean())) if length else 0.0
            predictions.append(Prediction(text=text, confidence=min(max(confidence, 0.0), 1.0)))
        return predictions

    def _eos_ids(self) -> list[int]:
        return eos_token_ids(self.model, self.tokenizer)

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


def _curves(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training loss and validation loss by optimizer step, for MLflow step metrics."""
    curve = [{"step": int(e["step"]), "loss": float(e["loss"])} for e in log_history if "loss" in e]
    by_step = {int(e["step"]): float(e["eval_loss"]) for e in log_history if "eval_loss" in e}  # last one per step
    return curve, [{"step": step, "eval_loss": loss} for step, loss in sorted(by_step.items())]


def training_args(params: LMParams, output_dir: str, seed: int, progress: bool, evaluate: bool) -> dict[str, Any]:
    """Trainer settings shared by the lm and distill rungs."""
    return {
        "output_dir": output_dir,  # the trainer insists on one; nothing we keep is written there
        "num_train_epochs": params.epochs,
        "max_steps": params.max_steps,
        "per_device_train_batch_size": params.batch_size,
        "per_device_eval_batch_size": params.batch_size,
        "learning_rate": params.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0.05,
        "weight_decay": 0.0,
        # TRL's defaults (bf16, gradient checkpointing) are for GPUs; on a CPU they are slow or fail.
        # (`gradient_checkpointing` is a deprecated alias of `activation_checkpointing` in transformers 5.)
        "bf16": False,
        "activation_checkpointing": False,
        "use_cpu": True,
        "save_strategy": "no",
        "eval_strategy": "epoch" if evaluate else "no",  # an eval curve for MLflow, one point per epoch
        "report_to": [],
        "logging_steps": 0.1,
        "disable_tqdm": not progress,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def _sft_config(params: LMParams, output_dir: str, seed: int, progress: bool, evaluate: bool) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        **training_args(params, output_dir, seed, progress, evaluate),
        max_length=params.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",  # batches of similar length: less padding to compute
    )


def lora_config(params: LMParams) -> Any:
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
