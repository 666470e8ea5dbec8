"""`densekit finetune`: mine -> cross-encoder -> scored negatives -> bi-encoder -> evaluation, as cached,
resumable stages chosen on a dev slice of the training split (:mod:`~densekit.finetune.pipeline`)."""

from densekit.finetune.config import FinetuneConfig, build_config, read_config_file
from densekit.finetune.pipeline import Pipeline, finetune

__all__ = ["FinetuneConfig", "Pipeline", "build_config", "finetune", "read_config_file"]
