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


def lora_config(params: LMParams, model: Any) -> Any:
    """LoRA pairs on every linear layer of the decoder (not the output head), or, with `lora_layers`, on those
    of its last blocks only: nothing below them needs a gradient, so backward stops at the lowest adapted
    block (on SmolLM2-135M the top 15 of 30 blocks take ~40% off a step)."""
    from peft import LoraConfig
    from torch import nn

    pairs = {"r": params.lora_r, "lora_alpha": params.lora_alpha, "lora_dropout": 0.0, "task_type": "CAUSAL_LM"}
    blocks = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if params.lora_layers is None or not blocks or params.lora_layers >= blocks:
        return LoraConfig(**pairs, target_modules="all-linear")
    head = model.get_output_embeddings()
    linears = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head
    }
    return LoraConfig(
        **pairs, target_modules=sorted(linears), layers_to_transform=list(range(blocks - params.lora_layers, blocks))
    )
