"""Typed configuration of cross-encoder (reranker) training: what `densekit train-reranker` parses into.

The run-control fields (epochs, schedule, seed, precision, checkpoints, evaluation steps, ...) are
:class:`~densekit.retriever.train.config.TrainConfig`'s, with the same defaults and help text (read
from its field metadata, so they are written once); the shared loop
(:class:`~densekit.retriever.train.loop.TrainingLoop`) reads them from either config.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.retriever.train.config import POSITIVE_SAMPLING, DataConfig, TrainConfig, check_loop_settings

RERANKER_LOSSES = ("listwise", "bce")
_TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}
# Settings a resume may change: they steer the run, not what it computes.
RUN_CONTROL = ("stop_after_steps", "device", "eval_steps", "save_steps", "keep_checkpoints", "log_steps")


def _like(name: str, default: Any = MISSING, help: str | None = None) -> Any:
    """TrainConfig's field `name` (default, flags, help), optionally with another default or help."""
    source = _TRAIN_FIELDS[name]
    metadata = dict(source.metadata)
    if help is not None:
        metadata["help"] = help
    return field(default=source.default if default is MISSING else default, metadata=metadata)


@dataclass
class RerankerDataConfig(DataConfig):
    """The negatives file and corpus; each (query, positive) pair becomes one group, the positive
    first, then the query's first `negatives_per_query` mined negatives in rank order."""

    negatives_per_query: int = field(
        default=4,
        metadata={
            "help": "Mined negatives per group, in rank order (the group is the positive and these; a query with "
            "fewer keeps those it has)."
        },
    )

    skip_queries_without_negatives: bool = field(
        default=False,
        metadata={
            "help": "Train without the queries the negatives file gives no negatives (mining's filters can leave "
            "some); by default such a query is an error."
        },
    )

    def validate(self) -> None:
        if self.negatives_per_query < 1:
            raise DensekitError(
                f"a cross-encoder group needs negatives: negatives_per_query >= 1, got {self.negatives_per_query}"
            )
        if self.positives not in POSITIVE_SAMPLING:
            raise DensekitError(
                f"unknown positive sampling {self.positives!r}; expected one of {', '.join(POSITIVE_SAMPLING)}"
            )


@dataclass
class RerankerTrainConfig:
    """The full recipe of one cross-encoder training run; one CLI option per field."""

    model: str = field(
        metadata={
            "flags": ("--model", "-m"),
            "help": "Starting model: a BERT-like folder or name (a bi-encoder such as all-MiniLM-L6-v2 gets a fresh, "
            "seeded one-logit head; a one-logit cross-encoder keeps its own).",
        }
    )
    output: Path = field(metadata={"flags": ("--output", "-o"), "help": "Folder for model, checkpoints, logs."})
    data: RerankerDataConfig
    loss: str = field(
        default="listwise",
        metadata={
            "help": "listwise: softmax cross-entropy over each group (positive + its negatives, the positive the "
            "target); bce: binary cross-entropy with logits on every pair (positive 1, negatives 0)."
        },
    )
    epochs: int = _like("epochs")
    max_steps: int | None = _like("max_steps")
    batch_size: int = _like(
        "batch_size", 16, "Groups (query, positive and its negatives) per optimizer step, all processes together."
    )
    learning_rate: float = _like("learning_rate")
    warmup_ratio: float = _like("warmup_ratio")
    weight_decay: float = _like("weight_decay")
    max_grad_norm: float = _like("max_grad_norm")
    seed: int = _like("seed", help="Seed for the head's initialisation, data order and dropout.")
    forward_batch_size: int | None = _like(
        "forward_batch_size", help="Pairs per transformer call, length-sorted (default 8 on CPU, all on CUDA; 0 = all)."
    )
    max_length: int | None = _like(
        "max_length", help="Token limit of a (query, document) pair (default the tokenizer's, at most 512)."
    )
    precision: str = _like("precision")
    gradient_checkpointing: bool = _like("gradient_checkpointing")
    eval_data: str | None = _like(
        "eval_data", help="BEIR dataset whose first-stage candidates are reranked (ndcg@10) during training."
    )
    eval_split: str = _like("eval_split")
    eval_candidates: Path | None = field(
        default=None,
        metadata={
            "help": "TREC run of first-stage hits for the evaluation queries (e.g. from `densekit search --out`); "
            "default BM25 (bm25s, in process) over the evaluation corpus."
        },
    )
    eval_depth: int = field(default=30, metadata={"help": "First-stage hits per query reranked in evaluation."})
    eval_steps: int = _like("eval_steps")
    save_steps: int = _like("save_steps")
    keep_checkpoints: int = _like("keep_checkpoints")
    stop_after_steps: int | None = _like("stop_after_steps")
    device: str | None = _like("device")
    log_steps: int = _like("log_steps")

    def validate(self) -> None:
        self.data.validate()
        if self.loss not in RERANKER_LOSSES:
            raise DensekitError(f"unknown reranker loss {self.loss!r}; expected one of {', '.join(RERANKER_LOSSES)}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "keep_checkpoints": self.keep_checkpoints,
            "log_steps": self.log_steps,
            "eval_depth": self.eval_depth,
        }
        optional = {
            "max_steps": self.max_steps,
            "max_length": self.max_length,
            "stop_after_steps": self.stop_after_steps,
        }
        check_loop_settings(self, positive, optional)
        if (self.eval_steps or self.eval_candidates) and not self.eval_data:
            raise DensekitError(
                "eval_steps and eval_candidates need eval_data (a BEIR dataset with an evaluation split)"
            )

    def to_json(self) -> dict:
        out = asdict(self)
        out["output"] = str(self.output)
        out["data"]["negatives"] = str(self.data.negatives)
        out["eval_candidates"] = str(self.eval_candidates) if self.eval_candidates else None
        return out

    @classmethod
    def from_json(cls, obj: dict) -> RerankerTrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in obj.items() if k in known}
        values["output"] = Path(values["output"])
        data = dict(values["data"])
        data["negatives"] = Path(data["negatives"])
        values["data"] = RerankerDataConfig(**data)
        if values.get("eval_candidates"):
            values["eval_candidates"] = Path(values["eval_candidates"])
        return cls(**values)

    def recipe(self) -> dict:
        """The settings that must not change across a resume (everything but run control)."""
        out = self.to_json()
        for key in RUN_CONTROL:
            out.pop(key, None)
        return out
