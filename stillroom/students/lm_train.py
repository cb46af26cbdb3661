"""Training the LM student: SFT of a small causal LM on the teacher's answers, or the distill rung.

Trained with TRL on prompt/completion pairs in the model's own chat template (see `chat`), so the
loss falls on the answer only and inference sees exactly the prompt format it was trained on.
LoRA keeps training cheap on a CPU. By default (`store: adapter`) the folder keeps only the
adapter's pairs and the hash of the base, so every LM student shares one base in memory
(`students.lora`); `store: merged` writes the merged model, a plain transformers folder.
Either way `lm.LMStudent.load` reads it without PEFT.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from stillroom.answers import parse_json
from stillroom.base_lm import resolve_base_lm
from stillroom.config import LMParams
from stillroom.metrics.scoring import normalize, per_example_agreement
from stillroom.schema import DatasetRow, OutputFormat
from stillroom.students.base import last_user_turn, write_manifest
from stillroom.students.chat import (
    MIN_INPUT_TOKENS,
    chat,
    clean_labels,
    fit_prompt,
    load_tokenizer,
    prompt_length,
    schema_validator,
    with_last_user_turn,
)
from stillroom.students.distill import distillation_trainer, load_teacher
from stillroom.students.json_answers import copied_share, items_never_repeat
from stillroom.students.lm import LMStudent
from stillroom.students.lm_args import lora_config, training_args
from stillroom.students.lora import (
    adapter_of,
    bf16_supported,
    convert_weights,
    restore_adapter,
    runnable_weights,
    save_adapter,
    weights_fingerprint,
)

log = logging.getLogger(__name__)


def train_lm(
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
    manifest and decide how the student answers (see `LMStudent.predict`).
    """
    if not train:
        raise ValueError("the LM student needs at least one training row")
    labels = clean_labels(labels)
    if json_schema is not None:
        schema_validator(json_schema)  # a bad schema fails before an hour of training, not after
    set_seed(seed)
    rows = list(train)
    if len(rows) > params.max_train_examples:
        rows = random.Random(seed).sample(rows, params.max_train_examples)
    rung = "distill" if params.teacher_model else "lm"
    params = params.model_copy(update={"epochs": epochs_for(len(rows), params)})

    base_path = resolve_base_lm(params.base_model)
    with _progress_bars(progress), tempfile.TemporaryDirectory(prefix="stillroom-lm-") as scratch:
        tokenizer = load_tokenizer(base_path)
        answering = {  # how the student answers: what the epochs are judged with, and the manifest keeps
            "max_new_tokens": answer_budget(tokenizer, rows, params.max_new_tokens),
            "labels": labels,
            "json_schema": json_schema,
            **(answer_constraints(rows) if json_schema is not None else {}),
        }
        # Prompts are cut to what the length leaves the answer (`chat.fit_prompt`), here and when answering,
        # so no training row loses its answer to truncation.
        answering["max_prompt_tokens"] = prompt_budget(tokenizer, rows, params.max_length, answering["max_new_tokens"])
        answering["prompt_tail_share"] = prompt_tail_share(tokenizer, rows, answering["max_prompt_tokens"])
        params = params.model_copy(update={"max_length": answering["max_prompt_tokens"] + answering["max_new_tokens"]})
        rows, validation = fitted_rows(tokenizer, rows, answering), fitted_rows(tokenizer, validation, answering)
        teacher = load_teacher(params.teacher_model, tokenizer, params.base_model) if params.teacher_model else None
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        as_adapter = params.lora and params.store == "adapter"
        base_sha256 = weights_fingerprint(model) if as_adapter else None  # before LoRA wraps its layers
        in_bf16 = params.lora and params.train_weights == "bf16" and bf16_supported()
        with frozen_linears_in_bf16(model) if in_bf16 else nullcontext(), lm_head_on_answer_tokens_only():
            if teacher is not None:  # checked against the student's tokenizer before loading
                trainer = distillation_trainer(
                    model, teacher, tokenizer, rows, validation, params, scratch, seed, progress
                )
            else:
                trainer = SFTTrainer(
                    model=model,
                    args=_sft_config(params, scratch, seed, progress, evaluate=bool(validation)),
                    train_dataset=_sft_dataset(rows),
                    eval_dataset=_sft_dataset(validation) if validation else None,
                    processing_class=tokenizer,
                    peft_config=lora_config(params, model) if params.lora else None,
                )
            if not progress:
                trainer.remove_callback(PrinterCallback)  # with tqdm off, the trainer prints every log line
            best_epoch = None
            if params.lora and params.select_rows and validation:
                student_info = {"base_model": params.base_model, **answering}
                best_epoch = BestEpoch(tokenizer, student_info, validation[: params.select_rows], params.patience)
                trainer.add_callback(best_epoch)
            budget = TimeBudget(params.max_minutes)
            trainer.add_callback(budget)
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
    if best_epoch is not None and best_epoch.best_weights is not None:
        restore_adapter(model, best_epoch.best_weights)
    adapter, scale = adapter_of(model) if as_adapter else (None, None)
    if params.lora:
        model = model.merge_and_unload()  # the student in hand answers merged; its folder keeps the adapter
    info = {
        "base_model": params.base_model,
        "store": "adapter" if as_adapter else "merged",
        "base_sha256": base_sha256,
        "lora_scale": scale,
        "weights": params.weights,
        "rung": rung,
        "teacher_model": params.teacher_model,
        "max_length": params.max_length,
        "lora": params.lora,
        "lora_r": params.lora_r if params.lora else None,
        "lora_alpha": params.lora_alpha if params.lora else None,
        "lora_layers": params.lora_layers if params.lora else None,  # the last blocks adapted (None: all)
        "seed": seed,
        "n_train": len(rows),
        **answering,
    }
    student = LMStudent(model, tokenizer, info)
    with _progress_bars(progress):
        save_lm(student, out_dir, adapter)
    convert_weights(student.model, runnable_weights(params.weights))  # saved as trained; in hand, as served
    stats: dict[str, Any] = {
        "rung": rung,
        "train_seconds": round(train_seconds, 2),
        "train_loss": result.training_loss,
        "first_loss": curve[0]["loss"] if curve else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "eval_loss": eval_loss,
        "steps": result.global_step,
        "epochs": trainer.state.epoch,
        "train_weights": "bf16" if in_bf16 else "float32",
        "planned_epochs": params.epochs,  # more than train.lm.epochs for a small set (min_steps); fewer run on patience
        "max_minutes": params.max_minutes,
        "stopped_at_budget": budget.stopped,  # the planned epochs did not fit in max_minutes
        "planned_steps": budget.planned_steps,
        "schedule_end_step": budget.schedule.horizon if budget.schedule else None,  # where the rate reached zero
        "n_train": len(rows),
        "n_validation": len(validation),
        "unseen_train_ids": sorted({row.id for row in train} - {row.id for row in rows}),  # held out: see evaluate
        "base_model": params.base_model,
        "teacher_model": params.teacher_model,
        "curve": curve,
        "eval_curve": eval_curve,
    }
    if best_epoch is not None:
        stats["agreement_curve"] = best_epoch.curve
        stats["chosen_epoch"] = best_epoch.best_epoch
        stats["chosen_validation_agreement"] = best_epoch.best_agreement
    if rung == "distill":
        stats["distill_alpha"] = params.distill_alpha
        stats["distill_temperature"] = params.distill_temperature
    return student, stats


def prompt_budget(tokenizer: Any, rows: Sequence[DatasetRow], max_length: int, answer_tokens: int) -> int:
    """Tokens a prompt may take: what `max_length` leaves the answer budget, but at least the longest fixed
    part of the rows' prompts (system turn, examples, template) plus `MIN_INPUT_TOKENS` of the input."""
    fixed = max((prompt_length(tokenizer, with_last_user_turn(row.prompt, "")) for row in rows), default=0)
    return max(max_length - answer_tokens, fixed + MIN_INPUT_TOKENS)


TAIL_SHARES = (0.0, 0.25, 0.5)  # of a cut input's room, kept from its end
MIN_CUT_ROWS = 8  # training rows cut by the budget before their answers may move the room off the head


def prompt_tail_share(tokenizer: Any, rows: Sequence[DatasetRow], max_tokens: int, margin: float = 0.02) -> float:
    """How much of a cut input's room goes to its end (`chat.fit_prompt`): of `TAIL_SHARES`, the one whose
    cut keeps the most answer words (three letters or more) that the full input holds, over the training
    rows the budget cuts. The head alone (a story's lede, an email's header) unless a share keeps `margin`
    more of them, or when fewer than `MIN_CUT_ROWS` rows are cut. A log whose error is in its last lines,
    or a thread whose last message is asked about, gets its tail read."""

    def words(text: str) -> set[str]:  # as ROUGE-L and token F1 see them, three letters or more
        return {word for word in normalize(text) if len(word) >= 3}

    cut = [row for row in rows if prompt_length(tokenizer, row.prompt) > max_tokens]
    findable = [words(row.target) & words(last_user_turn(row.prompt)) for row in cut]
    total = sum(len(found) for found in findable)
    if len(cut) < MIN_CUT_ROWS or not total:
        return 0.0

    def kept_share(share: float) -> float:
        fitted = (last_user_turn(fit_prompt(tokenizer, row.prompt, max_tokens, share)) for row in cut)
        return sum(len(found & words(text)) for found, text in zip(findable, fitted, strict=True)) / total

    kept = {share: kept_share(share) for share in TAIL_SHARES}
    best = max(TAIL_SHARES, key=lambda share: (kept[share], -share))
    return best if kept[best] >= kept[0.0] + margin else 0.0


def fitted_rows(tokenizer: Any, rows: Sequence[DatasetRow], answering: dict[str, Any]) -> list[DatasetRow]:
    """The rows with their prompts cut as the student will read them (`chat.fit_prompt`)."""
    budget, share = answering["max_prompt_tokens"], answering["prompt_tail_share"]
    return [row.model_copy(update={"prompt": fit_prompt(tokenizer, row.prompt, budget, share)}) for row in rows]


def epochs_for(n_rows: int, params: LMParams) -> float:
    """`params.epochs`, or more for a small set: 90 rows at batch 8 are 12 steps an epoch, and three
    epochs (36 steps) leave a LoRA student half-trained. Enough epochs for `min_steps`, at most `max_epochs`;
    `BestEpoch` keeps the best of them and stops once `patience` epochs bring nothing better."""
    if not params.min_steps or params.max_steps > 0:
        return params.epochs
    steps_per_epoch = math.ceil(n_rows / params.batch_size)
    return max(params.epochs, min(params.max_epochs, math.ceil(params.min_steps / steps_per_epoch)))


class LinearToHorizon:
    """The factor of the trainer's "linear" schedule (warm up, then decay to zero at `horizon`) with an end
    that `TimeBudget` can move: same values as transformers' own while the horizon is the planned end."""

    def __init__(self, warmup: int, horizon: int):
        self.warmup, self.horizon = warmup, horizon

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.horizon - step) / max(1, self.horizon - self.warmup))


class TimeBudget(TrainerCallback):
    """Fits training into `minutes`. From the steps' measured time (and each finished epoch's judging and
    evaluation) it predicts the step at which the budget runs out, makes the learning rate decay to zero
    there instead of at the planned end, and stops at it: a run the budget cuts ends annealed, as a planned
    one does, rather than at a high rate mid-schedule. A CPU without native bf16 runs the same epochs
    twice as long, and a user's budget holds either way. The trainer still ends the epoch it cut
    (`BestEpoch` judges those weights like any other epoch's). Past the budget itself (a step far slower
    than predicted), training stops at once."""

    def __init__(self, minutes: float, clock: Any = time.perf_counter, min_steps: int = 2):
        self.seconds, self.clock, self.min_steps = minutes * 60, clock, min_steps
        self.started = self.step_started = clock()
        self.step_seconds, self.epoch_ends, self.stopped = 0.0, 0, False
        self.schedule: LinearToHorizon | None = None
        self.planned_steps = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        self.started, self.step_seconds, self.epoch_ends, self.planned_steps = self.clock(), 0.0, 0, state.max_steps
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR) and args.lr_scheduler_type == "linear":
            self.schedule = LinearToHorizon(args.get_warmup_steps(state.max_steps), state.max_steps)
            lr_scheduler.lr_lambdas = [self.schedule] * len(lr_scheduler.lr_lambdas)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_started = self.clock()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch_ends += 1

    def on_step_end(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        now = self.clock()
        self.step_seconds += now - self.step_started
        if control.should_training_stop:
            return
        if now - self.started > self.seconds:
            self._stop(control, state, "train.lm.max_minutes (%g) is spent")
            return
        if self.schedule is None or state.global_step < self.min_steps:
            return
        horizon = self.steps_within_budget(state, now - self.started)
        if horizon != self.schedule.horizon:
            if horizon < self.planned_steps and self.schedule.horizon == self.planned_steps:
                log.warning(
                    "LM training planned %d steps, about %d fit in train.lm.max_minutes (%g): the learning "
                    "rate now decays to zero there",
                    self.planned_steps,
                    horizon,
                    self.seconds / 60,
                )
            self.schedule.horizon = horizon
            for group, base_rate in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
                group["lr"] = base_rate * self.schedule(lr_scheduler.last_epoch)  # the next step's rate, now
        if state.global_step >= self.schedule.horizon and self.schedule.horizon < self.planned_steps:
            self._stop(control, state, "the learning rate reached zero where train.lm.max_minutes (%g) runs out")

    def steps_within_budget(self, state: Any, elapsed: float) -> int:
        """The last step that ends within the budget at the pace so far: each step at the mean step time,
        each epoch end crossed and the cut epoch's own end at the mean time an epoch's end took (judging,
        evaluation); at most the planned end, and this step when no other fits."""
        done = state.global_step
        per_step = self.step_seconds / done
        per_epoch_end = (elapsed - self.step_seconds) / self.epoch_ends if self.epoch_ends else 0.0
        steps_per_epoch = max(1, round(done / state.epoch))
        pending = int(state.epoch + 1e-9) - self.epoch_ends  # this step ended an epoch, not yet judged
        left = self.seconds - elapsed - pending * per_epoch_end
        horizon = done
        for end in range(done + 1, self.planned_steps + 1):
            epoch_ends = (end - 1) // steps_per_epoch - done // steps_per_epoch + 1  # crossed, and the last one
            if (end - done) * per_step + epoch_ends * per_epoch_end > left:
                break
            horizon = end
        return horizon

    def _stop(self, control: Any, state: Any, reason: str) -> None:
        log.warning(
            "LM training stopped at step %d of %d: " + reason, state.global_step, state.max_steps, self.seconds / 60
        )
        control.should_training_stop = self.stopped = True


class BestEpoch(TrainerCallback):
    """Early stopping on what is served, not on loss: at each epoch's end the student answers the first
    validation rows as it would in production (same decoding, constraints and budget), and the LoRA
    pairs of the epoch with the highest agreement are kept (an equal later epoch is not better).
    Training stops after `patience` epochs in a row without a better one (0: never early)."""

    def __init__(self, tokenizer: Any, info: dict[str, Any], rows: Sequence[DatasetRow], patience: int = 0):
        self.tokenizer, self.info, self.rows, self.patience = tokenizer, info, list(rows), patience
        fmt = "label" if info.get("labels") else "json" if info.get("json_schema") is not None else "short_text"
        self.format: OutputFormat = fmt
        self.curve: list[dict[str, float]] = []
        self.best_agreement, self.best_epoch, self.best_index = -1.0, None, 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        student = LMStudent(model, self.tokenizer, self.info)  # puts the model in eval mode
        try:
            answers = [p.text for p in student.predict([row.prompt for row in self.rows])]
        finally:
            model.train()
        agreement = float(np.mean(per_example_agreement(self.format, answers, [row.target for row in self.rows])))
        self.curve.append({"step": state.global_step, "epoch": round(state.epoch, 2), "agreement": agreement})
        if agreement > self.best_agreement:
            self.best_agreement, self.best_epoch = agreement, round(state.epoch, 2)
            self.best_weights = {key: value.clone() for key, value in adapter_of(model)[0].items()}
            self.best_index = len(self.curve)
        elif self.patience and len(self.curve) - self.best_index >= self.patience:
            control.should_training_stop = True  # the schedule had more epochs; these brought nothing better


def answer_budget(
    tokenizer: Any, rows: Sequence[DatasetRow], floor: int, margin: float = 1.25, percentile: float = 99
) -> int:
    """Tokens the student may write: the `percentile` of the training answers' lengths (in the
    student's tokens, end of turn included) with `margin` and 4 tokens to spare, never under `floor`.

    A fixed cap cuts long lists off mid-string; decoding stops at the end of the answer anyway, so a
    generous cap costs time only when the student would run on. A percentile, not the longest, keeps
    one runaway teacher answer from letting every request run on; an answer the budget does cut is
    closed and sent to the teacher (`LMStudent.json_prediction`).
    """
    lengths = sorted(len(tokenizer(row.target, add_special_tokens=False)["input_ids"]) + 1 for row in rows)
    if not lengths:
        return floor
    high = lengths[min(len(lengths) - 1, math.ceil(percentile / 100 * len(lengths)) - 1)]  # nearest rank
    return max(floor, math.ceil(high * margin) + 4)


def save_lm(student: LMStudent, directory: Path, adapter: dict[str, torch.Tensor] | None = None) -> None:
    """Write the student folder `LMStudent.load` reads: the manifest, the tokenizer, and either the
    adapter's pairs (the base is named and hashed in the manifest) or the whole merged model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        save_adapter(directory, adapter)
    else:
        student.model.save_pretrained(directory)
    student.tokenizer.save_pretrained(directory)
    write_manifest(directory, student.kind, **student.info)


def answer_constraints(rows: Sequence[DatasetRow], grounded_share: float = 0.98) -> dict[str, Any]:
    """What every training answer of a JSON task has in common, so inference need not guess it.

    `answer_prefix`: the answers' shared start up to the last ':' (e.g. `{"people":`); it is
    written after the prompt instead of generated, saving a third of the decoding steps.
    `grounded`: nearly every extracted string (any depth, in objects and arrays alike) appears
    verbatim in the input, as written or with the input's JSON escapes decoded, so the task is
    extraction: decoding holds every string to spans of the input (`json_answers.JsonCursor`) and
    answers are snapped back to the input's own text (`json_answers.ground_in_source`).
    `unique_items`: no array of any answer repeats an item, over at least UNIQUE_ITEMS_EVIDENCE arrays
    that could have (two or more items), so a repeat in the student's answer is dropped.
    """
    targets = [row.target for row in rows]
    answers = [parse_json(target) for target in targets]
    prefix = _common_prefix(targets)
    prefix = prefix[: prefix.rfind(":") + 1] if prefix.startswith("{") else ""
    copied = copied_share((row.input_text, answer) for row, answer in zip(rows, answers, strict=True))
    grounded = copied is not None and copied >= grounded_share
    return {"answer_prefix": prefix, "grounded": grounded, "unique_items": items_never_repeat(answers)}


def _common_prefix(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    shortest, longest = min(texts), max(texts)  # the lexical extremes bound every other text's prefix
    end = next((i for i, (a, b) in enumerate(zip(shortest, longest, strict=False)) if a != b), len(shortest))
    return shortest[:end]


@contextmanager
def frozen_linears_in_bf16(model: torch.nn.Module) -> Iterator[None]:
    """While LoRA trains, the frozen base's linear layers (output head included) compute in bfloat16 and hand
    float32 back, the way the served student's `Bf16Linear` does: oneDNN's bf16 matmuls take ~25% off a step
    on this CPU. Norms, attention, the residual stream and the LoRA pairs stay float32. The float32 weights
    (and the head's tie to the embeddings) are put back afterwards, so the adapter merges as it always did."""
    restore = []
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        weight, bias = module.weight, module.bias
        # New parameters, not new data: the output head shares its weight with the input embeddings.
        module.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        if bias is not None:
            module.bias = torch.nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)
        hooks = (
            module.register_forward_pre_hook(lambda _m, args: (args[0].to(torch.bfloat16), *args[1:])),
            module.register_forward_hook(lambda _m, _args, out: out.float()),
        )
        restore.append((module, weight, bias, hooks))
    try:
        yield
    finally:
        for module, weight, bias, hooks in restore:
            module.weight, module.bias = weight, bias
            for hook in hooks:
                hook.remove()


_HEAD_SWITCH_LOCK = threading.Lock()
_head_switch: dict[str, Any] = {"users": 0, "trl_own": None}  # trainings in this process under the switch


@contextmanager
def lm_head_on_answer_tokens_only() -> Iterator[None]:
    """TRL's fused LM head scores only the positions the loss reads (the answer's tokens) on GPUs, but every
    position elsewhere, to keep tile shapes fixed for compiled devices. A CPU compiles nothing, so scoring the
    answer's tokens only is the same loss (the tests check it) at ~35% less time a step: the output head and
    its 49k-word softmax over a long prompt were 40% of a step. Without that switch in TRL, nothing changes.
    The switch is TRL's, so process-wide: the first training in sets it, the last one out puts it back."""
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_use_triton", None) is None:
        log.warning("TRL no longer has the switch for its fused LM head: training scores every position")
        yield
        return
    with _HEAD_SWITCH_LOCK:
        if _head_switch["users"] == 0:
            trl_own = _head_switch["trl_own"] = trl_utils._use_triton
            trl_utils._use_triton = lambda device: trl_own(device) or device.type == "cpu"
        _head_switch["users"] += 1
    try:
        yield
    finally:
        with _HEAD_SWITCH_LOCK:
            _head_switch["users"] -= 1
            if _head_switch["users"] == 0:
                trl_utils._use_triton = _head_switch["trl_own"]


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


def _curves(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training loss and validation loss by optimizer step, for MLflow step metrics."""
    curve = [{"step": int(e["step"]), "loss": float(e["loss"])} for e in log_history if "loss" in e]
    by_step = {int(e["step"]): float(e["eval_loss"]) for e in log_history if "eval_loss" in e}  # last one per step
    return curve, [{"step": step, "eval_loss": loss} for step, loss in sorted(by_step.items())]


def _sft_config(params: LMParams, output_dir: str, seed: int, progress: bool, evaluate: bool) -> SFTConfig:
    return SFTConfig(
        **training_args(params, output_dir, seed, progress, evaluate),
        max_length=params.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",  # batches of similar length: less padding to compute
    )


def _sft_dataset(rows: Sequence[DatasetRow]) -> Any:
    """Conversational prompt/completion pairs: TRL then masks the prompt out of the loss."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": chat(row.prompt), "completion": [{"role": "assistant", "content": row.target}]} for row in rows]
    )
