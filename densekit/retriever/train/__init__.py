"""Contrastive training of dual encoders (the recipe and its measured numbers: docs/training.md).

- :mod:`config`: the typed recipe (`TrainConfig`, `DataConfig`, `LossConfig`)
- :mod:`data`: training tuples from a negatives file, the no-duplicates batch sampler, the collator
- :mod:`losses`: `InfoNCELoss`, `GISTLoss`; :mod:`distill`: `MarginMSELoss`, `ListwiseKLLoss`;
  :mod:`objective`: the contrastive loss, the distillation loss, or their weighted sum
- :mod:`optim`: AdamW groups, warmup + linear decay, seeding
- :mod:`gradcache`: one training step, plain or GradCache, for every loss
- :mod:`distributed`: torchrun process group and gathers with gradient
- :mod:`loop`: the training loop both trainers share (schedule, checkpoints, resume, evaluation, torchrun);
  :mod:`trainer`: the dual-encoder task over it; :mod:`checkpoints`: checkpoint files and the output folder
- :mod:`cross_encoder` (recipe in :mod:`reranker_config`): the cross-encoder (reranker) task, `train_reranker`
- :mod:`guide`: the GIST guide's embedding cache

Imports are lazy so `import densekit.retriever.train` stays cheap.
"""

from densekit.retriever.train.config import DataConfig, LossConfig, TrainConfig

__all__ = ["DataConfig", "LossConfig", "TrainConfig", "train"]


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    from densekit.retriever.train.trainer import train as _train

    return _train(config, resume, overwrite)
