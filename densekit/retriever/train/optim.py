"""The optimizer, learning-rate schedule, seeding and forward-batch default of the trainer."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from densekit.retriever.train.config import CPU_FORWARD_BATCH_SIZE, TrainConfig


def resolve_forward_batch_size(requested: int | None, device: torch.device) -> int | None:
    """Rows per transformer call: `requested`, or by default 8 on CPU and one call on CUDA (0 = one call)."""
    if requested is None:
        return CPU_FORWARD_BATCH_SIZE if device.type == "cpu" else None
    return requested or None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Learning rate rises linearly over `warmup_steps`, then falls linearly to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(model: nn.Module, loss_fn: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = [p for p in loss_fn.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr": config.loss.temperature_lr})
    return torch.optim.AdamW(groups, lr=config.learning_rate)
