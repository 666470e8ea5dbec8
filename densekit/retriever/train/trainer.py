"""The contrastive trainer: the dual-encoder task of the shared loop (:mod:`~densekit.retriever.train.loop`:
AdamW, warmup + linear decay, clipping, AMP, checkpoints, resume, DDP), which the cross-encoder
trainer (:mod:`~densekit.retriever.train.cross_encoder`) shares.

Example::

    config = TrainConfig(model="all-MiniLM-L6-v2", output=Path("runs/scifact"),
                         data=DataConfig(negatives=Path("scifact.negatives.jsonl"), corpus="scifact"))
    summary = Trainer(config).train()          # runs/scifact/model is a sentence-transformers folder

Output folder::

    model/            final model (sentence-transformers folder + densekit_config.json + densekit_train.json)
    best/             the best model on the evaluation split (when eval_data is given)
    checkpoints/step-N/state.safetensors + state.json   model, loss, optimizer, scheduler, scaler,
                      RNG states, data position, best, recipe (with the inputs' content hashes)
    guide_cache/      GIST guide embeddings (safetensors + JSON)
    metrics.jsonl     one JSON object per logged step and per evaluation
    summary.json      what `train` returns

A checkpoint is written atomically and never as a pickle (`densekit.serialize`); `resume=True`
continues from the newest one that decodes (see `checkpoints`): same weights, optimizer moments,
learning-rate step, RNG states and the next batch of the same epoch order, so the result equals an
uninterrupted run (tests/test_train_resume.py checks bit equality on CPU). The recipe a checkpoint
records includes the sha256 of the negatives file and the corpus fingerprint, so a resume on
replaced inputs is refused. A new run into a folder that holds a run is refused unless
`overwrite=True` (then the old run is removed first).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from densekit.errors import DensekitError
from densekit.io import atomic_dir, sha256_file, write_json
from densekit.progress import announce
from densekit.retriever.encoder import Encoder, write_sentence_transformers_folder
from densekit.retriever.train.checkpoints import TRAIN_CONFIG, rng_state, set_rng_state
from densekit.retriever.train.config import TrainConfig
from densekit.retriever.train.data import (
    ContrastiveBatch,
    ContrastiveCollator,
    NoDuplicatesBatchSampler,
    TrainingExample,
    read_training_examples,
    resolve_teacher_score,
)
from densekit.retriever.train.distributed import barrier
from densekit.retriever.train.gradcache import contrastive_step
from densekit.retriever.train.guide import GuideCache
from densekit.retriever.train.loop import TrainingLoop
from densekit.retriever.train.losses import LossInputs
from densekit.retriever.train.model import DualEncoder
from densekit.retriever.train.objective import build_objective
from densekit.retriever.train.optim import resolve_forward_batch_size
from densekit.retriever.train.remine import Remining

__all__ = ["GuideCache", "Trainer", "resolve_forward_batch_size", "rng_state", "set_rng_state", "train"]


class Trainer(TrainingLoop):
    """Runs a :class:`TrainConfig` (see the module docstring): the dual-encoder task of the shared
    :class:`~densekit.retriever.train.loop.TrainingLoop`. Under torchrun, one per process."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        super().__init__(config, resume, overwrite)
        self.find_unused_parameters = config.separate_towers
        self.remining = Remining.prepare(config)  # reads the recorded mining before any model loads

    # ---------------------------------------------------------------- setup
    def _setup_task(self) -> None:
        cfg = self.config
        if cfg.separate_towers and cfg.eval_data:
            raise DensekitError("evaluation during training supports shared towers only; drop --eval-data")

        from densekit.data import load_dataset

        self.encoder = Encoder(cfg.model, device=str(self.device), max_length=cfg.max_length, dtype="float32")
        self.corpus = load_dataset(cfg.data.corpus).corpus
        self.teacher_score: str | None = None
        if cfg.loss.distill != "none":
            self.teacher_score = cfg.loss.teacher_score or resolve_teacher_score(cfg.data.negatives)
            announce(f"distillation ({cfg.loss.distill}) reads the teacher score {self.teacher_score}")
        self.examples = read_training_examples(
            cfg.data.negatives, self.corpus, cfg.data.negatives_per_query, self.teacher_score
        )
        # Content, not paths: a negatives file or corpus replaced in place must not be resumed on.
        self.inputs = {
            "negatives_sha256": sha256_file(cfg.data.negatives),
            "corpus_fingerprint": self.corpus.fingerprint(),
        }
        enc_cfg = self.encoder.config
        self.collator = ContrastiveCollator(
            self.encoder.tokenizer,
            self.corpus,
            enc_cfg.max_length,
            min(cfg.query_max_length or enc_cfg.max_length, enc_cfg.max_length),
            enc_cfg.do_lower_case,
            enc_cfg.query_prompt,
            enc_cfg.document_prompt,
        )
        self.sampler = NoDuplicatesBatchSampler(
            self.examples, cfg.batch_size, cfg.seed, one_per_query=cfg.data.positives == "one"
        )

        backbone = self.encoder.model
        backbone.train()
        if cfg.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = DualEncoder(
            backbone,
            enc_cfg.pooling,
            enc_cfg.normalize,
            cfg.separate_towers,
            forward_batch_size=resolve_forward_batch_size(cfg.forward_batch_size, self.device),
        ).to(self.device)
        self.model.train()
        lc = cfg.loss
        self.loss_fn = build_objective(lc, normalize=enc_cfg.normalize, dim=self.encoder.dim).to(self.device)
        self.guide: GuideCache | None = None
        if lc.name == "gist":
            path = self.output / "guide_cache"
            if self.ctx.is_main:
                self.guide = GuideCache.build(lc.guide, self.examples, self.corpus, cfg.device, path)
            barrier(self.ctx)
            if not self.ctx.is_main:
                self.guide = GuideCache.build(lc.guide, self.examples, self.corpus, cfg.device, path)
        self.eval_dataset = load_dataset(cfg.eval_data, split=cfg.eval_split) if cfg.eval_data else None

    # ---------------------------------------------------------------- saving and evaluation
    def _write_model(self, folder: Path) -> None:
        config = self.encoder.config
        with atomic_dir(folder, kind="model") as staging:
            write_sentence_transformers_folder(staging, self.model.document_model, self.encoder.tokenizer, config)
            write_json(staging / TRAIN_CONFIG, self.config.to_json())
            if self.model.query_model is not None:
                write_sentence_transformers_folder(
                    staging / "query_model", self.model.query_model, self.encoder.tokenizer, config
                )

    def evaluate(self) -> dict:
        """ndcg@10 (and recall@100) of the current weights on the evaluation split."""
        from densekit.eval.harness import evaluate_retriever
        from densekit.retriever.dense import DenseRetriever

        assert self.eval_dataset is not None
        self.model.eval()
        try:
            encoder = self.encoder  # shares the training weights; corpus cache off, weights move
            retriever = DenseRetriever.build(encoder, self.eval_dataset.corpus, cache=False)
            report = evaluate_retriever(retriever, self.eval_dataset, ("ndcg@10", "recall@100"))
        finally:
            self.model.train()
        return dict(report.result.metrics)

    def _log_fields(self) -> dict:
        return {"temperature": round(self.loss_fn.temperature, 6)}

    def _summary_fields(self) -> dict:
        return {
            "temperature": self.loss_fn.temperature,
            "teacher_score": self.teacher_score,  # the stored score distillation read (None: no distillation)
            "encoder": asdict(self.encoder.config),
        }

    # ---------------------------------------------------------------- re-mining (remine.py)
    def _after_step(self, log, epoch_done: bool) -> None:
        last_epoch = self.epoch == self.config.epochs - 1
        if self.remining is not None and self.remining.due(self.step, self.total_steps, epoch_done, last_epoch):
            log(self.remining.run(self))

    def _checkpoint_extra(self) -> tuple[dict, dict[str, Path]]:
        if self.remining is None:
            return {}, {}
        return {"remine": self.remining.state()}, self.remining.files()

    def _restore_extra(self, path: Path, state: dict) -> None:
        if self.remining is not None:
            self.remining.restore(self, path, state.get("remine"))

    # ---------------------------------------------------------------- one step
    def _loss_inputs(self, batch: ContrastiveBatch) -> LossInputs:
        per = batch.size // self.ctx.world_size
        guide = self.guide.scores(batch.query_ids, batch.document_ids) if self.guide is not None else None
        rows = slice(self.ctx.rank * per, (self.ctx.rank + 1) * per)
        return LossInputs(batch.positive_index, batch.exclude, rows, guide, batch.distill)

    def _forward_backward(self, examples: list[TrainingExample]) -> torch.Tensor:
        batch = self.collator(examples, shards=self.ctx.world_size)
        out = contrastive_step(
            self.train_model,
            self.loss_fn,
            batch.query_features[self.ctx.rank],
            batch.document_features[self.ctx.rank],
            self._loss_inputs(batch),
            self.ctx,
            self.device,
            self.config.chunk_size,
            self._autocast,
            self.scaler.scale,
        )
        return out.loss


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `config`; see :class:`Trainer`. `resume` continues the run in `config.output`; `overwrite`
    starts over in a folder that holds a run (removing it first); without either such a folder is refused."""
    return Trainer(config, resume, overwrite).train()
