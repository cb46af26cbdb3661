"""Trainer settings both LM rungs share (SFT in `lm_train`, distillation in `distill`): CPU defaults and LoRA."""

from __future__ import annotations

from typing import Any

from stillroom.config import LMParams


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
        "neftune_noise_alpha": params.neftune_alpha or None,
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


def lora_config(params: LMParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
