"""`FinetuneConfig`: every setting of `densekit finetune`, with its help text once (field metadata).

Settings come from three places, later ones winning: the defaults below, a TOML file
(`--config`, one flat table whose keys are the field names) and the command-line flags. An unknown
key or a value of the wrong type in the file is a one-line error naming the file and the key.

Each stage of the pipeline reads some of the fields (:data:`STAGE_FIELDS`); a stage's recorded
inputs are those fields' values plus the fingerprints of the stages before it, so changing a setting
re-runs the first stage that reads it and every stage after it.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.retriever.train.config import (
    DISTILL_LOSSES,
    LOSSES,
    POSITIVE_SAMPLING,
    PRECISIONS,
    parse_remine_every,
)

STAGES = ("split", "mine", "reranker", "score", "train", "refit", "eval")


@dataclass
class FinetuneConfig:
    """The whole recipe: dev slice, mining, cross-encoder, scoring, bi-encoder training, evaluation."""

    data: str | None = field(default=None, metadata={"help": "BEIR folder or dataset name (with train and test)."})
    model: str | None = field(
        default=None, metadata={"flags": ("--model", "-m"), "help": "Base encoder to fine-tune (folder or name)."}
    )
    output: Path | None = field(
        default=None, metadata={"flags": ("--output", "-o"), "help": "Finetune folder (stages, model, report)."}
    )
    train_split: str = field(default="train", metadata={"help": "qrels split trained on (its dev slice held out)."})
    test_split: str = field(
        default="test", metadata={"help": "qrels split read only by the final report ('none': no test evaluation)."}
    )
    dev_fraction: float = field(
        default=0.15, metadata={"help": "Fraction of the training queries held out as the dev slice (seeded)."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the dev slice."})
    mine_method: str = field(
        default="percpos", metadata={"help": "Mining filters with the base model, as `densekit mine --method`."}
    )
    mine_percentage: float = field(default=0.95, metadata={"help": "percpos: drop if s > pos - (1-p)|pos|."})
    mine_margin: float | None = field(default=None, metadata={"help": "margin filter: drop if s > pos - margin."})
    mine_threshold: float | None = field(default=None, metadata={"help": "abs filter: drop if s > threshold."})
    mine_negatives: int = field(default=8, metadata={"help": "Negatives mined per query."})
    mine_depth: int = field(default=100, metadata={"help": "Candidates per query."})
    cross_encoder: bool = field(
        default=True,
        metadata={
            "help": "Train the cross-encoder (teacher, filter and reranker). --no-cross-encoder skips it: the "
            "mined negatives train the 'none' candidate alone and the report has no reranked rows."
        },
    )
    ce_model: str | None = field(
        default=None, metadata={"help": "Starting weights of the cross-encoder (default: the base model)."}
    )
    ce_loss: str = field(default="listwise", metadata={"help": "Cross-encoder loss: listwise or bce."})
    # The cross-encoder's defaults were chosen on SciFact's dev slice (docs/finetune.md, "The cross-encoder
    # recipe"): a fresh one-logit head on a bi-encoder learns nothing at 2e-5 in 60 steps; at 1e-4, 8 groups
    # a step and 128 tokens it passes the start model on dev within 200 steps.
    ce_epochs: int = field(default=8, metadata={"help": "Cross-encoder epochs."})
    ce_max_steps: int | None = field(default=600, metadata={"help": "Cross-encoder step limit."})
    ce_batch_size: int = field(default=8, metadata={"help": "Cross-encoder groups per step."})
    ce_lr: float = field(default=1e-4, metadata={"help": "Cross-encoder learning rate."})
    ce_negatives: int = field(default=4, metadata={"help": "Mined negatives per cross-encoder group."})
    ce_max_length: int | None = field(default=128, metadata={"help": "Cross-encoder pair token limit."})
    ce_eval_steps: int = field(
        default=100, metadata={"help": "Evaluate the cross-encoder on dev every N steps (0 = only at the end)."}
    )
    ce_filter: bool = field(
        default=True,
        metadata={"help": "Score stage: drop candidates the cross-encoder scores >= positive - --ce-margin."},
    )
    ce_margin: float = field(default=0.0, metadata={"help": "Margin of the cross-encoder false-negative filter."})
    teacher_min_gain: float = field(
        default=0.0,
        metadata={
            "help": "The cross-encoder teaches (its filter, the distillation candidates) only if its best dev "
            "ndcg@10, reranking the base model's dev top --rerank-depth, beats the base model's by more than "
            "this; otherwise the score stage keeps the mined negatives and only 'none' is trained (announced, "
            "in the report). A negative value such as -1 always uses it."
        },
    )
    score_depth: int | None = field(
        default=None,
        metadata={
            "help": "Candidates per query in the score stage (default --mine-depth); with the ce filter the "
            "cross-encoder scores each of them, the costliest pass on a CPU."
        },
    )
    loss: str = field(default="infonce", metadata={"help": "Bi-encoder loss: infonce, gist or none."})
    guide: str | None = field(default=None, metadata={"help": "GIST guide model (with --loss gist)."})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature."})
    distill: str = field(
        default="none,kl",
        metadata={
            "help": "Candidate distillations from the cross-encoder's scores, comma-separated (none, margin-mse, "
            "kl): one bi-encoder is trained per candidate and the best on the dev slice is kept."
        },
    )
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation term."})
    distill_temperature: float = field(
        default=1.0, metadata={"help": "The cross-encoder's scores are divided by this (1 for logits)."}
    )
    negatives_per_query: int = field(default=1, metadata={"help": "Mined negatives per bi-encoder example."})
    positives: str = field(
        default="all",
        metadata={
            "help": "Bi-encoder positives: all (every (query, positive) pair each epoch) or one (one pair per "
            "query, drawn afresh each epoch, as DPR/Tevatron; for datasets with many positives per query)."
        },
    )
    epochs: int = field(default=2, metadata={"help": "Bi-encoder epochs."})
    max_steps: int | None = field(default=None, metadata={"help": "Bi-encoder step limit."})
    batch_size: int = field(default=32, metadata={"help": "Bi-encoder examples per step."})
    learning_rate: float = field(default=2e-5, metadata={"flags": ("--lr",), "help": "Bi-encoder learning rate."})
    max_length: int | None = field(default=None, metadata={"help": "Bi-encoder document token limit."})
    remine_every: str | None = field(
        default=None, metadata={"help": "Re-mine with the current weights every N steps or 'epoch'."}
    )
    matryoshka_dims: str | None = field(default=None, metadata={"help": "Matryoshka loss dimensions, e.g. 384,128."})
    eval_steps: int = field(
        default=50, metadata={"help": "Evaluate both trainers on the dev slice every N steps (0: at the end)."}
    )
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (an interrupted stage resumes)."})
    refit: bool = field(
        default=False,
        metadata={
            "help": "After the dev choice, train the chosen candidate again on the whole training split (dev "
            "slice included), to the chosen step scaled to the larger split, and deliver that model. Dev can no "
            "longer score it: the report gives its test metrics beside the dev-chosen model's."
        },
    )
    rerank_depth: int = field(default=100, metadata={"help": "Dense hits per query the cross-encoder reranks."})
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the bi-encoder training (a new seed re-runs only the train and eval stages)."},
    )
    teacher_seed: int = field(default=42, metadata={"help": "Seed of the mining samplers and the cross-encoder."})
    device: str | None = field(default=None, metadata={"help": "Torch device (default: cuda if available)."})
    precision: str = field(
        default="no",
        metadata={"help": "Mixed precision of both trainers: no, bf16 (CUDA or a bf16 CPU) or fp16 (CUDA)."},
    )
    encode_batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch (mining, evaluation)."})

    def candidates(self) -> list[str]:
        """The distillation candidates, in the order given."""
        return [c.strip() for c in self.distill.split(",") if c.strip()]

    def validate(self) -> None:
        """Every check that needs no model and no data read."""
        for name in ("data", "model", "output"):
            if getattr(self, name) in (None, ""):
                raise DensekitError(f"finetune needs {name} (the {name.upper()} argument/option or the config file)")
        if not 0 < self.dev_fraction < 1:
            raise DensekitError(f"dev_fraction must be between 0 and 1 (exclusive), got {self.dev_fraction}")
        if self.train_split == self.test_split:
            raise DensekitError(f"train_split and test_split are both {self.train_split!r}; the test must stay unseen")
        if self.loss not in LOSSES:
            raise DensekitError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if not self.candidates():
            raise DensekitError("distill names no candidate; give e.g. 'none' or 'none,kl'")
        for name in self.candidates():
            if name not in DISTILL_LOSSES:
                raise DensekitError(f"unknown distillation {name!r}; expected one of {', '.join(DISTILL_LOSSES)}")
        if len(set(self.candidates())) != len(self.candidates()):
            raise DensekitError(f"distill repeats a candidate: {self.distill!r}")
        if not self.cross_encoder and "none" not in self.candidates():
            raise DensekitError(f"distill {self.distill!r} needs the cross-encoder's scores; with --no-cross-encoder "
                                "give --distill none")  # fmt: skip
        parse_remine_every(self.remine_every)
        if self.positives not in POSITIVE_SAMPLING:
            raise DensekitError(f"unknown positives {self.positives!r}; expected one of {', '.join(POSITIVE_SAMPLING)}")
        if self.precision not in PRECISIONS:
            raise DensekitError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        positive = (
            "mine_negatives",
            "mine_depth",
            "ce_epochs",
            "ce_batch_size",
            "ce_negatives",
            "epochs",
            "batch_size",
            "rerank_depth",
            "encode_batch_size",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise DensekitError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("ce_max_steps", "max_steps", "ce_max_length", "max_length", "score_depth"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise DensekitError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_steps < 0 or self.save_steps < 0 or self.ce_eval_steps < 0:
            raise DensekitError("eval_steps, ce_eval_steps and save_steps must be >= 0")

    def to_json(self) -> dict:
        out = asdict(self)
        out["output"] = None if self.output is None else str(self.output)
        return out


# Which settings each stage reads (its inputs, besides the stages before it).
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "split": ("data", "train_split", "dev_fraction", "split_seed"),
    "mine": (
        "model",
        "mine_method",
        "mine_percentage",
        "mine_margin",
        "mine_threshold",
        "mine_negatives",
        "mine_depth",
        "teacher_seed",
    ),
    "reranker": (
        "model",
        "ce_model",
        "ce_loss",
        "ce_epochs",
        "ce_max_steps",
        "ce_batch_size",
        "ce_lr",
        "ce_negatives",
        "ce_max_length",
        "ce_eval_steps",
        "rerank_depth",
        "teacher_seed",
        "precision",
    ),
    "score": ("cross_encoder", "ce_filter", "ce_margin", "score_depth", "teacher_min_gain"),
    "train": (
        "loss",
        "guide",
        "temperature",
        "distill",
        "distill_weight",
        "distill_temperature",
        "negatives_per_query",
        "positives",
        "epochs",
        "max_steps",
        "batch_size",
        "learning_rate",
        "max_length",
        "remine_every",
        "matryoshka_dims",
        "eval_steps",
        "seed",
        "precision",
    ),
    "refit": ("data", "train_split", "refit"),
    "eval": ("data", "test_split", "rerank_depth"),
}

# Settings added after finetune folders existed: left out of a stage's inputs while at these defaults,
# so a folder made before them is still done (its stages are not re-run for a setting it could not have).
ADDED_LATER: dict[str, Any] = {"positives": "all", "precision": "no", "cross_encoder": True}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a TOML value fits a field's type hint (an int is a float; a string is a Path)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    for option in options or (hint,):
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in (str, Path) and isinstance(value, str):
            return True
    return False


def _type_name(hint: Any) -> str:
    names = [getattr(a, "__name__", str(a)) for a in typing.get_args(hint) if a is not type(None)]
    return " or ".join(names) if names else getattr(hint, "__name__", str(hint))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file, each checked against :class:`FinetuneConfig` (name and type)."""
    path = Path(path)
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser as the tomli package
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise DensekitError(f"{path}: reading TOML needs Python 3.11+ or `pip install tomli`") from None
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise DensekitError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DensekitError(f"{path}: not valid TOML ({exc})") from None
    hints = typing.get_type_hints(FinetuneConfig)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise DensekitError(f"{path}: unknown setting {key!r} (the settings are `densekit finetune --help`'s)")
        if not _accepts(hints[name], value):
            raise DensekitError(f"{path}: setting {key!r} must be {_type_name(hints[name])}, got {value!r}")
        values[name] = Path(value) if name == "output" else (float(value) if hints[name] is float else value)
    return values


def build_config(file_values: dict[str, Any], cli_values: dict[str, Any]) -> FinetuneConfig:
    """Defaults, then the file's settings, then every command-line value that is not None."""
    values = {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(FinetuneConfig)
    }
    values.update(file_values)
    values.update({k: v for k, v in cli_values.items() if v is not None})
    config = FinetuneConfig(**values)
    if config.output is not None:
        config.output = Path(config.output)
    return config
