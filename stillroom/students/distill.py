"""Rung 3 of the training ladder: logit distillation from a local teacher LM that shares the student's tokenizer.

The answers come from a cloud model whose logits we never see; a local teacher (a larger
model of the same family, or one fine-tuned on the task) adds its whole next-token
distribution on those answers, which says more per example than the one token written.

TRL 1.16's `DistillationTrainer` is on-policy: it samples completions from the student and
matches the teacher on them, with no term for the reference answers. We keep its teacher
handling, vocabulary checks and chunked divergence kernel, but feed it the logged answers as
the completions (teacher-forced, no sampling: cheaper on a CPU and focused on what the task
wants) and mix in the answers' cross-entropy:

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(answer)

with alpha = `distill_alpha` and T = `distill_temperature` (T^2 keeps the two terms' gradients
comparable when T > 1, as in Hinton et al. 2015).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from trl import DistillationConfig, DistillationTrainer

from stillroom.base_lm import resolve_base_lm
from stillroom.config import LMParams
from stillroom.schema import DatasetRow
from stillroom.students.chat import chat, eos_token_ids, prompt_answer_ids
from stillroom.students.lm_args import lora_config, training_args


def load_teacher(name: str, student_tokenizer: Any, student_name: str) -> Any:
    """The teacher in float32, after checking its tokenizer is the student's: the logits must mean the same tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_lm(name)
    teacher_tokenizer = AutoTokenizer.from_pretrained(path)
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = len(teacher_vocab.items() ^ student_vocab.items())
        raise ValueError(
            f"teacher {name!r} and student {student_name!r} have different tokenizers ({len(teacher_vocab)} vs "
            f"{len(student_vocab)} tokens, {differing} entries differ); logit distillation needs the same vocabulary"
        )
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return teacher.eval().requires_grad_(False)


def distillation_dataset(rows: Sequence[DatasetRow], tokenizer: Any, eos_ids: Sequence[int], max_length: int) -> Any:
    """Prompts with their answer tokens, truncated like SFT (keep the start); rows with no answer left are dropped."""
    from datasets import Dataset

    records = []
    for row in rows:
        turns = chat(row.prompt)
        prompt_ids, answer_ids = prompt_answer_ids(tokenizer, turns, row.target, eos_ids)
        answer_ids = answer_ids[: max(0, max_length - len(prompt_ids))]
        if answer_ids:
            records.append({"prompt": turns, "prompt_ids": prompt_ids, "completion_ids": answer_ids})
    if not records:
        raise ValueError(f"no row keeps any answer token within max_length={max_length}; raise lm.max_length")
    return Dataset.from_list(records)


class AnswerDistillationTrainer(DistillationTrainer):
    """`DistillationTrainer` on the logged answers instead of sampled ones, plus their cross-entropy (see module)."""

    def __init__(self, *args: Any, alpha: float, **kwargs: Any):
        self.alpha = alpha
        self._answers: list[tuple[list[int], list[int]]] = []
        self._student_hidden: torch.Tensor | None = None
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # The parent reads only the prompts from the batch; keep the answers for `_generate`, in batch order.
        self._answers = [(list(x["prompt_ids"]), list(x["completion_ids"])) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _generate(self, prompts: list) -> tuple[list[list[int]], list[list[int]], None, None, list]:
        """The answers of the rows, tokenized up front, in place of sampled completions."""
        if len(prompts) != len(self._answers):
            raise RuntimeError("distillation batch and its stored answers are out of step")
        return [p for p, _ in self._answers], [c for _, c in self._answers], None, None, []

    def _get_last_hidden_state(self, unwrapped_model: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = super()._get_last_hidden_state(unwrapped_model, *args, **kwargs)
        if self._student_hidden is None:  # the parent's loss runs the student first, then the teacher
            self._student_hidden = hidden
        return hidden

    def _compute_loss(
        self, unwrapped_student: Any, inputs: dict[str, Any], num_items_in_batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._student_hidden = None
        divergence, entropy_sum, n_valid = super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        hidden, self._student_hidden = self._student_hidden, None
        if hidden is None:
            raise RuntimeError("the student's hidden states were not seen; TRL's DistillationTrainer changed")
        # Cross-entropy of the answer tokens, only at answer positions, reduced like the divergence.
        mask = inputs["completion_mask"].bool()
        head = unwrapped_student.get_output_embeddings()
        logits = head(hidden.to(head.weight.device)[mask]).float()
        ce_sum = torch.nn.functional.cross_entropy(logits, inputs["completion_ids"][mask], reduction="sum")
        denominator = num_items_in_batch if num_items_in_batch is not None else n_valid.clamp(min=1)
        ce = ce_sum / denominator
        kd = divergence * self.temperature**2
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["distill/kd"].append(float(kd.detach()))
        self._metrics[mode]["distill/ce"].append(float(ce.detach()))
        return self.alpha * kd + (1.0 - self.alpha) * ce, entropy_sum, n_valid


def distillation_trainer(
    model: Any,
    teacher: Any,
    tokenizer: Any,
    rows: Sequence[DatasetRow],
    validation: Sequence[DatasetRow],
    params: LMParams,
    output_dir: str,
    seed: int,
    progress: bool,
) -> AnswerDistillationTrainer:
    """A trainer for the distill rung, set up like the lm rung's (same LoRA, CPU settings, logging)."""
    eos_ids = eos_token_ids(model, tokenizer)
    args = DistillationConfig(
        **training_args(params, output_dir, seed, progress, evaluate=bool(validation)),
        beta=0.0,  # forward KL(teacher || student): the classic distillation divergence
        temperature=params.distill_temperature,
        max_completion_length=params.max_new_tokens,  # unused: nothing is sampled
    )
    return AnswerDistillationTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=distillation_dataset(rows, tokenizer, eos_ids, params.max_length),
        eval_dataset=distillation_dataset(validation, tokenizer, eos_ids, params.max_length) if validation else None,
        processing_class=tokenizer,
        peft_config=lora_config(params, model) if params.lora else None,
        alpha=params.distill_alpha,
    )
