"""The contrastive trainer: AdamW, warmup + linear decay, clipping, AMP, checkpoints, resume, DDP.

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

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from densekit.errors import DensekitError, IntegrityError
from densekit.io import atomic_dir, sha256_file, write_json
from densekit.progress import announce, progress_bar
from densekit.retriever.encoder import Encoder, write_sentence_transformers_folder
from densekit.retriever.train.checkpoints import (
    TRAIN_CONFIG,
    check_training_folder,
    clear_training_folder,
    read_newest,
    rng_state,
    rotate,
    set_rng_state,
    trim_metrics,
    write_checkpoint,
)
from densekit.retriever.train.config import TrainConfig
from densekit.retriever.train.data import (
    ContrastiveBatch,
    ContrastiveCollator,
    NoDuplicatesBatchSampler,
    TrainingExample,
    read_training_examples,
    resolve_teacher_score,
)
from densekit.retriever.train.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    init_distributed,
)
from densekit.retriever.train.gradcache import contrastive_step
from densekit.retriever.train.guide import GuideCache
from densekit.retriever.train.losses import LossInputs
from densekit.retriever.train.model import DualEncoder
from densekit.retriever.train.objective import build_objective
from densekit.retriever.train.optim import (
    build_optimizer,
    resolve_forward_batch_size,
    seed_everything,
    warmup_linear_schedule,
)

__all__ = ["GuideCache", "Trainer", "resolve_forward_batch_size", "rng_state", "set_rng_state", "train"]


class Trainer:
    """Runs a :class:`TrainConfig` (see the module docstring). Under torchrun, one per process."""

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        config.validate()
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.output = Path(config.output)

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.config
        device_type = torch.device(cfg.device).type if cfg.device else ("cuda" if torch.cuda.is_available() else "cpu")
        self.ctx: DistributedContext = init_distributed(device_type)
        if device_type == "cuda":
            self.device = torch.device(cfg.device or f"cuda:{self.ctx.local_rank}")
            if self.ctx.enabled:
                self.device = torch.device(f"cuda:{self.ctx.local_rank}")
                torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if cfg.precision != "no" and self.device.type != "cuda":
            raise DensekitError(f"--precision {cfg.precision} needs a CUDA device; use --precision no on CPU")
        if cfg.batch_size % self.ctx.world_size:
            raise DensekitError(f"batch size {cfg.batch_size} must split evenly over {self.ctx.world_size} processes")
        if cfg.separate_towers and cfg.eval_data:
            raise DensekitError("evaluation during training supports shared towers only; drop --eval-data")
        seed_everything(cfg.seed)

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
        self.examples_per_epoch = sum(len(batch) for batch in self.sampler.batches(0))
        per_epoch = [len(self.sampler.batches(e)) for e in range(cfg.epochs)]
        self.total_steps = min(cfg.max_steps, sum(per_epoch)) if cfg.max_steps else sum(per_epoch)
        if cfg.max_steps and cfg.max_steps > sum(per_epoch):
            announce(
                f"max_steps {cfg.max_steps} exceeds {cfg.epochs} epoch(s) of {sum(per_epoch)} steps; "
                f"stopping after {sum(per_epoch)}"
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
        self.loss_fn = build_objective(lc).to(self.device)
        self.optimizer = build_optimizer(self.model, self.loss_fn, cfg)
        warmup = math.ceil(self.total_steps * cfg.warmup_ratio)
        self.scheduler = warmup_linear_schedule(self.optimizer, warmup, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.train_model: nn.Module = self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.separate_towers,
            )
        self.guide: GuideCache | None = None
        if lc.name == "gist":
            path = self.output / "guide_cache"
            if self.ctx.is_main:
                self.guide = GuideCache.build(lc.guide, self.examples, self.corpus, cfg.device, path)
            barrier(self.ctx)
            if not self.ctx.is_main:
                self.guide = GuideCache.build(lc.guide, self.examples, self.corpus, cfg.device, path)
        self.eval_dataset = load_dataset(cfg.eval_data, split=cfg.eval_split) if cfg.eval_data else None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-N atomically (main process) and keep the newest `keep_checkpoints`."""
        if not self.ctx.is_main:
            return None
        state = {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch},
            "best": self.best,
            "recipe": {**self.config.recipe(), "inputs": self.inputs},
        }
        target = self.output / "checkpoints" / f"step-{self.step}"
        write_checkpoint(target, state, self.config.to_json())
        rotate(self.output, self.config.keep_checkpoints, target)
        return target

    def load_checkpoint(self, found: tuple[Path, dict] | None) -> Path | None:
        """Restore `found` (from `read_newest`); refuse a checkpoint written for another recipe or inputs."""
        if found is None:
            announce(f"--resume: no checkpoint under {self.output / 'checkpoints'}; starting from step 0")
            return None
        path, state = found
        try:  # a state that decodes but is not what densekit writes is damage, not a traceback
            saved = TrainConfig.from_json(state["recipe"]).recipe()  # a later-added setting counts as its default
            saved_inputs = state["recipe"].get("inputs") or {}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{path}: the checkpoint's recipe is malformed ({exc}); delete it") from None
        current = self.config.recipe()
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            raise DensekitError(
                f"{path}: the checkpoint was written with different settings ({', '.join(changed)}); "
                f"resume with the same recipe or start a new output folder"
            )
        # Checkpoints from before content hashes were recorded resume as before.
        what = {
            "negatives_sha256": f"the negatives file {self.config.data.negatives}",
            "corpus_fingerprint": f"the corpus {self.config.data.corpus}",
        }
        changed = [what[k] for k in what if k in saved_inputs and saved_inputs[k] != self.inputs[k]]
        if changed:
            raise DensekitError(
                f"{path}: {' and '.join(changed)} changed since the checkpoint was written (content hash "
                "differs); resume with the same inputs, or start over with --overwrite or another --output"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.loss_fn.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            position = state["position"]
            self.step, self.epoch, self.batch_in_epoch = (int(position[k]) for k in ("step", "epoch", "batch"))
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise IntegrityError(f"{path}: the checkpoint does not fit this run ({first}); delete it") from None
        self.best = state["best"]
        return path

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

    def _maybe_evaluate(self, log) -> None:
        if self.ctx.is_main:
            metrics = self.evaluate()
            record = {"step": self.step, "eval": metrics, "split": self.config.eval_split}
            if self.best is None or metrics["ndcg@10"] > self.best["ndcg@10"]:
                self.best = {"step": self.step, **metrics}
                self._write_model(self.output / "best")
                record["best"] = True
            log(record)
        barrier(self.ctx)

    # ---------------------------------------------------------------- the loop
    def _loss_inputs(self, batch: ContrastiveBatch) -> LossInputs:
        per = batch.size // self.ctx.world_size
        guide = self.guide.scores(batch.query_ids, batch.document_ids) if self.guide is not None else None
        rows = slice(self.ctx.rank * per, (self.ctx.rank + 1) * per)
        return LossInputs(batch.positive_index, batch.exclude, rows, guide, batch.distill)

    def train(self) -> dict:
        """Train to the end of the schedule (or `stop_after_steps`); return the summary."""
        check_training_folder(self.output, self.resume, self.overwrite)  # every rank, before any barrier
        found = read_newest(self.output) if self.resume else None  # read (and fail) before loading models
        self._setup()
        cfg = self.config
        if self.ctx.is_main:
            if self.overwrite:
                clear_training_folder(self.output)
            self.output.mkdir(parents=True, exist_ok=True)
        barrier(self.ctx)
        resumed_from = self.load_checkpoint(found) if self.resume else None
        metrics_path = self.output / "metrics.jsonl"
        if self.ctx.is_main:
            trim_metrics(metrics_path, self.step)

        def log(record: dict) -> None:
            if self.ctx.is_main:
                with open(metrics_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")

        start_step = self.step
        bar = progress_bar("training", total=self.total_steps, unit="step") if self.ctx.is_main else None
        if bar is not None:
            bar.update(self.step)
        train_seconds, examples_seen, last_loss = 0.0, 0, float("nan")
        stop = False
        while self.epoch < cfg.epochs and not stop:
            batches = self.sampler.batches(self.epoch)
            while self.batch_in_epoch < len(batches):
                if self.step >= self.total_steps or (cfg.stop_after_steps and self.step >= cfg.stop_after_steps):
                    stop = True
                    break
                indices = batches[self.batch_in_epoch]
                usable = len(indices) - len(indices) % self.ctx.world_size
                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses (logged with its loss)
                t0 = time.perf_counter()
                last_loss = self._train_step([self.examples[i] for i in indices[:usable]])
                train_seconds += time.perf_counter() - t0
                examples_seen += usable
                self.step += 1
                self.batch_in_epoch += 1
                if self.step % cfg.log_steps == 0 or self.step == self.total_steps:
                    log(
                        {
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": round(last_loss, 6),
                            "lr": lr,
                            "temperature": round(self.loss_fn.temperature, 6),
                            "examples_per_s": round(examples_seen / max(train_seconds, 1e-9), 3),
                        }
                    )
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                if self.eval_dataset is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0:
                    self._maybe_evaluate(log)
                if cfg.save_steps and self.step % cfg.save_steps == 0:
                    self.save_checkpoint()
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
        if bar is not None:
            bar.close()
        finished = self.step >= self.total_steps
        if self.eval_dataset is not None and finished and not (cfg.eval_steps and self.step % cfg.eval_steps == 0):
            self._maybe_evaluate(log)
        if not cfg.save_steps or self.step % cfg.save_steps:
            self.save_checkpoint()
        if self.ctx.is_main and finished:
            self._write_model(self.output / "model")
        summary = {
            "finished": finished,
            "steps": self.step,
            "total_steps": self.total_steps,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "steps_this_run": self.step - start_step,
            "examples_this_run": examples_seen,
            "train_seconds": round(train_seconds, 3),
            "examples_per_s": round(examples_seen / train_seconds, 3) if train_seconds else None,
            "final_loss": last_loss,
            "temperature": self.loss_fn.temperature,
            "best": self.best,
            "model": str(self.output / "model") if finished else None,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "config": self.config.to_json(),
            "examples": len(self.examples),  # (query, positive) pairs read from the negatives file
            "examples_per_epoch": self.examples_per_epoch,
            "teacher_score": self.teacher_score,  # the stored score distillation read (None: no distillation)
            "encoder": asdict(self.encoder.config),
        }
        if self.ctx.is_main:
            write_json(self.output / "summary.json", summary)
        barrier(self.ctx)
        return summary

    def _train_step(self, examples: list[TrainingExample]) -> float:
        cfg = self.config
        batch = self.collator(examples, shards=self.ctx.world_size)
        inputs = self._loss_inputs(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out = contrastive_step(
            self.train_model,
            self.loss_fn,
            batch.query_features[self.ctx.rank],
            batch.document_features[self.ctx.rank],
            inputs,
            self.ctx,
            self.device,
            cfg.chunk_size,
            self._autocast,
            self.scaler.scale,
        )
        for param in self.loss_fn.parameters():  # outside DDP: average its gradient by hand
            if param.grad is not None:
                all_reduce_mean(param.grad, self.ctx)
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                list(self.model.parameters()) + list(self.loss_fn.parameters()), cfg.max_grad_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        loss = all_reduce_mean(out.loss.clone(), self.ctx)
        return float(loss)


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `config`; see :class:`Trainer`. `resume` continues the run in `config.output`; `overwrite`
    starts over in a folder that holds a run (removing it first); without either such a folder is refused."""
    return Trainer(config, resume, overwrite).train()
