"""Typed configuration for contrastive training (Tevatron style: one dataclass per concern).

`TrainConfig` is what `densekit train` parses into and what a checkpoint records, so a resumed run
can check that it continues the same recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from densekit.errors import DensekitError

LOSSES = ("infonce", "gist")
POSITIVE_SAMPLING = ("all", "one")
CPU_FORWARD_BATCH_SIZE = 8  # measured on SciFact/MiniLM, benchmarks/RESULTS.md
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class LossConfig:
    """Which contrastive loss, and its knobs.

    name: "infonce" (in-batch + mined negatives) or "gist" (the same, with a guide model's mask).
    temperature: softmax temperature; 0.05 equals sentence-transformers' scale 20.
    learnable_temperature: learn log(1/temperature) with the model (CLIP style).
    symmetric: add the document->query InfoNCE term over the batch's queries.
    guide: model whose similarities GIST uses to mask probable false negatives.
    gist_margin: mask candidates the guide scores above (guide positive score - margin).
    temperature_lr: learning rate of a learnable temperature (the model's is too small to move it).
    """

    name: str = "infonce"
    temperature: float = 0.05
    learnable_temperature: bool = False
    symmetric: bool = False
    guide: str | None = None
    gist_margin: float = 0.0
    temperature_lr: float = 1e-3

    def validate(self) -> None:
        if self.name not in LOSSES:
            raise DensekitError(f"unknown loss {self.name!r}; expected one of {', '.join(LOSSES)}")
        if self.temperature <= 0:
            raise DensekitError(f"temperature must be positive, got {self.temperature}")
        if self.name == "gist" and not self.guide:
            raise DensekitError("the gist loss needs a guide model (--guide)")
        if self.name != "gist" and self.guide:
            raise DensekitError("--guide is only used by the gist loss (--loss gist)")


@dataclass
class DataConfig:
    """Where the training tuples come from.

    negatives: the mining output (JSON lines, one query per line).
    corpus: BEIR folder or dataset name whose corpus.jsonl holds the documents the file names.
    negatives_per_query: mined negatives per example, taken in rank order (0 = in-batch only).
    positives: "all" makes every (query, positive) pair one example of every epoch; "one" gives
    each query one example per epoch, its positive drawn afresh each epoch (DPR/Tevatron style:
    an epoch is a pass over the queries, which keeps datasets with many positives per query,
    such as NFCorpus's 42.7, from being dominated by their most-labelled queries).
    """

    negatives: Path
    corpus: str
    negatives_per_query: int = 1
    positives: str = "all"

    def validate(self) -> None:
        if self.negatives_per_query < 0:
            raise DensekitError(f"negatives_per_query must be >= 0, got {self.negatives_per_query}")
        if self.positives not in POSITIVE_SAMPLING:
            raise DensekitError(
                f"unknown positive sampling {self.positives!r}; expected one of {', '.join(POSITIVE_SAMPLING)}"
            )


@dataclass
class TrainConfig:
    """The full recipe of one training run.

    model: starting encoder (folder or name). output: folder for the model, checkpoints and logs.
    batch_size: examples per optimizer step over all processes together.
    chunk_size: GradCache chunk (texts per forward pass); None embeds the whole batch at once.
    forward_batch_size: rows per transformer call within one embedding pass, longest texts
    grouped together (see `densekit.retriever.train.model`); None picks 8 on CPU (a SciFact step
    about 2x faster there than one call over the batch) and one call on CUDA; 0 always one call.
    max_length / query_max_length: token limits (default the model's).
    eval_data/eval_split: BEIR dataset and split scored (ndcg@10) every `eval_steps` and at the end.
    save_steps: checkpoint period (0 = only at the end). stop_after_steps: stop early, as if
    interrupted, while the schedule still plans `max_steps`/epochs (resume continues it).
    """

    model: str
    output: Path
    data: DataConfig
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    chunk_size: int | None = None
    forward_batch_size: int | None = None
    max_length: int | None = None
    query_max_length: int | None = None
    precision: str = "no"
    gradient_checkpointing: bool = False
    separate_towers: bool = False
    eval_data: str | None = None
    eval_split: str = "dev"
    eval_steps: int = 0
    save_steps: int = 0
    keep_checkpoints: int = 2
    stop_after_steps: int | None = None
    device: str | None = None
    log_steps: int = 1

    def validate(self) -> None:
        self.loss.validate()
        self.data.validate()
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "keep_checkpoints": self.keep_checkpoints,
            "log_steps": self.log_steps,
        }
        for name, value in positive.items():
            if value <= 0:
                raise DensekitError(f"{name} must be positive, got {value}")
        optional_positive = {
            "max_steps": self.max_steps,
            "chunk_size": self.chunk_size,
            "max_length": self.max_length,
            "query_max_length": self.query_max_length,
            "stop_after_steps": self.stop_after_steps,
        }
        for name, value in optional_positive.items():
            if value is not None and value <= 0:
                raise DensekitError(f"{name} must be positive, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise DensekitError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.forward_batch_size is not None and self.forward_batch_size < 0:
            raise DensekitError(f"forward_batch_size must be >= 0, got {self.forward_batch_size}")
        if self.eval_steps < 0 or self.save_steps < 0:
            raise DensekitError("eval_steps and save_steps must be >= 0")
        if self.precision not in PRECISIONS:
            raise DensekitError(
                f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}"
            )
        if self.eval_steps and not self.eval_data:
            raise DensekitError("eval_steps needs eval_data (a BEIR dataset with an evaluation split)")

    def to_json(self) -> dict:
        out = asdict(self)
        out["output"] = str(self.output)
        out["data"]["negatives"] = str(self.data.negatives)
        return out

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in obj.items() if k in known}
        values["output"] = Path(values["output"])
        data = dict(values["data"])
        data["negatives"] = Path(data["negatives"])
        values["data"] = DataConfig(**data)
        values["loss"] = LossConfig(**values.get("loss", {}))
        return cls(**values)

    def recipe(self) -> dict:
        """The settings that must not change across a resume (everything but run control)."""
        out = self.to_json()
        for key in (
            "stop_after_steps",
            "device",
            "eval_steps",
            "save_steps",
            "keep_checkpoints",
            "log_steps",
        ):
            out.pop(key, None)
        return out
