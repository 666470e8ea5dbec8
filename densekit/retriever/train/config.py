"""Typed configuration for contrastive training (Tevatron style: one dataclass per concern).

`TrainConfig` is what `densekit train` parses into and what a checkpoint records, so a resumed run
can check that it continues the same recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from densekit.errors import DensekitError

LOSSES = ("infonce", "gist", "none")
DISTILL_LOSSES = ("none", "margin-mse", "kl")
POSITIVE_SAMPLING = ("all", "one")
CPU_FORWARD_BATCH_SIZE = 8  # measured on SciFact/MiniLM, benchmarks/RESULTS.md
PRECISIONS = ("no", "bf16", "fp16")


def parse_remine_every(value: str | None) -> int | str | None:
    """`--remine-every`: None (off), a positive number of steps, or ``"epoch"``; DensekitError otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "epoch":
        return "epoch"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise DensekitError(f"--remine-every must be a positive number of steps or 'epoch', got {value!r}")


@dataclass
class LossConfig:
    """Which contrastive loss, and its knobs (each field's help says what it does)."""

    name: str = field(
        default="infonce",
        metadata={
            "flags": ("--loss",),
            "help": "infonce (in-batch + mined negatives), gist (the same, masked by a guide model, GISTEmbed) "
            "or none (only the --distill loss).",
        },
    )
    temperature: float = field(
        default=0.05, metadata={"help": "Softmax temperature (0.05 = sentence-transformers' scale 20)."}
    )
    learnable_temperature: bool = field(
        default=False, metadata={"help": "Learn log(1/temperature) with the model (CLIP style)."}
    )
    symmetric: bool = field(
        default=False, metadata={"help": "Add the document->query InfoNCE term over the batch's queries."}
    )
    guide: str | None = field(
        default=None,
        metadata={"help": "GIST guide model (with --loss gist): its similarities mask probable false negatives."},
    )
    gist_margin: float = field(
        default=0.0, metadata={"help": "GIST: mask candidates the guide scores above (guide positive score - margin)."}
    )
    temperature_lr: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of a learnable temperature (the model's is too small to move it)."},
    )
    distill: str = field(
        default="none",
        metadata={
            "help": "Distillation from teacher scores in the negatives file: none, margin-mse (Hofstaetter et al.) "
            "or kl (listwise KL over positive + mined negatives). Added to --loss; --loss none trains on it alone."
        },
    )
    distill_weight: float = field(
        default=1.0, metadata={"help": "Weight of the distillation term (loss = contrastive + weight * distill)."}
    )
    distill_temperature: float = field(
        default=1.0,
        metadata={
            "help": "The teacher's scores are divided by this before comparison with the student's "
            "(similarity / --temperature): 1 for cross-encoder logits, about --temperature for a dense teacher."
        },
    )
    teacher_score: str | None = field(
        default=None,
        metadata={
            "help": "Stored score that teaches (a negative's <name>_score key, e.g. ce_score); default the first "
            "the file has of ce_score, guide_score, teacher_score."
        },
    )
    matryoshka_dims: str | None = field(
        default=None,
        metadata={
            "help": "Matryoshka loss (Kusupati et al. 2022): the loss summed over these prefixes of the "
            "embeddings, each re-normalised, e.g. 384,256,128,64 (at most the model's dimension)."
        },
    )
    matryoshka_weights: str | None = field(
        default=None, metadata={"help": "Weights of the --matryoshka-dims terms, in the same order (default 1 each)."}
    )

    def validate(self) -> None:
        if self.name not in LOSSES:
            raise DensekitError(f"unknown loss {self.name!r}; expected one of {', '.join(LOSSES)}")
        if self.temperature <= 0:
            raise DensekitError(f"temperature must be positive, got {self.temperature}")
        if self.distill not in DISTILL_LOSSES:
            raise DensekitError(f"unknown distillation {self.distill!r}; expected one of {', '.join(DISTILL_LOSSES)}")
        if self.name == "none" and self.distill == "none":
            raise DensekitError("--loss none leaves nothing to train on; add --distill margin-mse or --distill kl")
        if self.name == "none" and self.symmetric:
            raise DensekitError("--symmetric is an InfoNCE option; it does nothing with --loss none")
        if self.distill_weight <= 0 or self.distill_temperature <= 0:
            raise DensekitError(
                f"distill_weight and distill_temperature must be positive, got {self.distill_weight} "
                f"and {self.distill_temperature}"
            )
        if self.distill == "none" and self.teacher_score is not None:
            raise DensekitError("--teacher-score is only read by distillation (--distill margin-mse or kl)")
        if self.teacher_score is not None and not (
            self.teacher_score.endswith("_score") and len(self.teacher_score) > len("_score")
        ):
            raise DensekitError(f"--teacher-score names a <name>_score key (e.g. ce_score), got {self.teacher_score!r}")
        if self.name == "gist" and not self.guide:
            raise DensekitError("the gist loss needs a guide model (--guide)")
        if self.name != "gist" and self.guide:
            raise DensekitError("--guide is only used by the gist loss (--loss gist)")
        from densekit.retriever.train.matryoshka import parse_dims, parse_weights

        if self.matryoshka_weights is not None and not self.matryoshka_dims:
            raise DensekitError("--matryoshka-weights needs --matryoshka-dims")
        parse_weights(self.matryoshka_weights, len(parse_dims(self.matryoshka_dims)))


@dataclass
class DataConfig:
    """Where the training tuples come from.

    `positives="one"` follows DPR/Tevatron (an epoch is a pass over the queries), which keeps datasets
    with many positives per query, such as NFCorpus's 42.7, from being dominated by their most-labelled
    queries.
    """

    negatives: Path = field(metadata={"help": "Negatives file from `densekit mine` (JSON lines, one query a line)."})
    corpus: str = field(metadata={"help": "BEIR folder or name whose corpus.jsonl holds the documents the file names."})
    negatives_per_query: int = field(
        default=1, metadata={"help": "Mined negatives per example, taken in rank order (0 = in-batch only)."}
    )
    positives: str = field(
        default="all",
        metadata={
            "help": "all: every (query, positive) pair each epoch; one: one pair per query, drawn afresh each epoch."
        },
    )

    def validate(self) -> None:
        if self.negatives_per_query < 0:
            raise DensekitError(f"negatives_per_query must be >= 0, got {self.negatives_per_query}")
        if self.positives not in POSITIVE_SAMPLING:
            raise DensekitError(
                f"unknown positive sampling {self.positives!r}; expected one of {', '.join(POSITIVE_SAMPLING)}"
            )


@dataclass
class TrainConfig:
    """The full recipe of one training run; `densekit train` has one option per field (help on the field).

    forward_batch_size None picks 8 on CPU (a SciFact step about 2x faster there than one call over
    the batch, see `densekit.retriever.train.model`) and one call on CUDA.
    """

    model: str = field(metadata={"flags": ("--model", "-m"), "help": "Starting encoder (folder or name)."})
    output: Path = field(metadata={"flags": ("--output", "-o"), "help": "Folder for model, checkpoints, logs."})
    data: DataConfig
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = field(default=1, metadata={"help": "Passes over the examples."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop the schedule after this many steps."})
    batch_size: int = field(default=32, metadata={"help": "Examples per optimizer step, all processes together."})
    learning_rate: float = field(default=2e-5, metadata={"flags": ("--lr",), "help": "Peak learning rate (AdamW)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps of linear warmup."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, dropout and init."})
    chunk_size: int | None = field(
        default=None, metadata={"help": "GradCache chunk (texts per forward pass); default: the whole batch at once."}
    )
    forward_batch_size: int | None = field(
        default=None,
        metadata={"help": "Rows per transformer call, length-sorted (default 8 on CPU, all on CUDA; 0 = all)."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Document token limit (default the model's)."})
    query_max_length: int | None = field(default=None, metadata={"help": "Query token limit (default the model's)."})
    precision: str = field(
        default="no", metadata={"help": "no, bf16 (CUDA, or a CPU with native bf16) or fp16 (CUDA)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    separate_towers: bool = field(default=False, metadata={"help": "Separate query and document encoders."})
    eval_data: str | None = field(
        default=None, metadata={"help": "BEIR dataset scored (ndcg@10) during training and at the end."}
    )
    eval_split: str = field(default="dev", metadata={"help": "Its split."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0 = only at the end)."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = only at the end)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Newest checkpoints kept."})
    stop_after_steps: int | None = field(
        default=None,
        metadata={
            "help": "Stop early, as if interrupted, while the schedule still plans --max-steps/--epochs; --resume "
            "continues."
        },
    )
    device: str | None = field(default=None, metadata={"help": "Torch device (default: cuda if available)."})
    log_steps: int = field(default=1, metadata={"help": "Log the loss every N steps."})
    remine_every: str | None = field(
        default=None,
        metadata={
            "help": "Re-mine the negatives with the current weights every N steps, or every 'epoch' (Conan-embedding): "
            "re-runs the mining recorded beside the negatives file (filters, guide, scorer, sampler, seed) with the "
            "model being trained as the teacher; the counts of changed negatives go to metrics.jsonl."
        },
    )

    def validate(self) -> None:
        self.loss.validate()
        self.data.validate()
        parse_remine_every(self.remine_every)
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "keep_checkpoints": self.keep_checkpoints,
            "log_steps": self.log_steps,
        }
        optional_positive = {
            "max_steps": self.max_steps,
            "chunk_size": self.chunk_size,
            "max_length": self.max_length,
            "query_max_length": self.query_max_length,
            "stop_after_steps": self.stop_after_steps,
        }
        check_loop_settings(self, positive, optional_positive)
        if self.eval_steps and not self.eval_data:
            raise DensekitError("eval_steps needs eval_data (a BEIR dataset with an evaluation split)")
        if self.loss.distill != "none" and self.data.negatives_per_query == 0:
            raise DensekitError(
                "distillation compares the positive with mined negatives; set --negatives-per-query >= 1"
            )

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


def check_loop_settings(config, positive: dict[str, float], optional: dict[str, float | None]) -> None:
    """The checks every trainer's config shares (the loop's settings): `positive` values must be > 0,
    `optional` ones None or > 0; warm-up ratio, forward batch size, eval/save steps and precision."""
    for name, value in [*positive.items(), *optional.items()]:
        if value is not None and value <= 0:
            raise DensekitError(f"{name} must be positive, got {value}")
    if not 0 <= config.warmup_ratio < 1:
        raise DensekitError(f"warmup_ratio must be in [0, 1), got {config.warmup_ratio}")
    if config.forward_batch_size is not None and config.forward_batch_size < 0:
        raise DensekitError(f"forward_batch_size must be >= 0, got {config.forward_batch_size}")
    if config.eval_steps < 0 or config.save_steps < 0:
        raise DensekitError("eval_steps and save_steps must be >= 0")
    if config.precision not in PRECISIONS:
        raise DensekitError(f"unknown precision {config.precision!r}; expected one of {', '.join(PRECISIONS)}")
