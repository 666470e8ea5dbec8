"""The training loop every densekit trainer shares; a trainer subclass supplies the task.

:class:`TrainingLoop` owns what does not depend on what is trained: torchrun and the device,
seeding, AdamW with warmup + linear decay, gradient clipping and the fp16 scaler, the seeded
epoch/batch order and the data position, checkpoints and `resume` (bit-identical: weights, optimizer
moments, schedule step, RNG states and the next batch), the refusal of a resume on another recipe or
replaced inputs, evaluation every `eval_steps` with the best model kept, `metrics.jsonl`, progress
and `summary.json`.

A subclass is the task. It implements:

- ``_setup_task()``: set ``self.model`` (the module trained and checkpointed), ``self.loss_fn`` (a
  module; its parameters, if any, train too), ``self.examples`` and ``self.sampler`` (``batches(epoch)``
  -> lists of example indices, a pure function of the seed and epoch), ``self.inputs`` (content hashes a
  resume must match, keys of ``INPUTS``) and ``self.eval_dataset`` (None: no evaluation);
- ``_forward_backward(examples) -> loss tensor`` (gradients land in ``.grad``);
- ``_write_model(folder)`` (inside an atomic write) and ``evaluate() -> metrics`` with ``ndcg@10``;
- optionally ``_log_fields()`` / ``_summary_fields()`` for extra keys in the logs and summary.

The dual-encoder trainer (:mod:`~densekit.retriever.train.trainer`) and the cross-encoder trainer
(:mod:`~densekit.retriever.train.cross_encoder`) are the two tasks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densekit.errors import DensekitError, IntegrityError
from densekit.io import write_json
from densekit.progress import announce, progress_bar
from densekit.retriever.train.checkpoints import (
    check_training_folder,
    clear_training_folder,
    read_newest,
    rng_state,
    rotate,
    set_rng_state,
    trim_metrics,
    write_checkpoint,
)
from densekit.retriever.train.distributed import DistributedContext, all_reduce_mean, barrier, init_distributed
from densekit.retriever.train.optim import build_optimizer, seed_everything, warmup_linear_schedule

# What each recorded input hash names in the refusal of a resume on replaced inputs.
INPUTS = {"negatives_sha256": "the negatives file {data.negatives}", "corpus_fingerprint": "the corpus {data.corpus}"}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_type_of(device: str | None) -> str:
    """'cuda' or 'cpu' (or another torch device type): the given device's, else cuda when there is one."""
    return torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")


def check_precision(precision: str, device_type: str) -> None:
    """Refuse a mixed precision this device cannot run: fp16 needs CUDA; bf16 needs CUDA or a CPU with
    native bf16 (elsewhere CPU autocast would emulate it, slower than float32)."""
    if precision == "no" or device_type == "cuda":
        return
    if precision == "fp16":
        raise DensekitError("--precision fp16 needs a CUDA device; use --precision no (or bf16) on CPU")
    if not cpu_has_bf16():
        raise DensekitError(
            "--precision bf16 on CPU needs native bf16 (AVX512-BF16 or AMX), which this CPU lacks; use --precision no"
        )


class TrainingLoop:
    """Runs a training config (see the module docstring); under torchrun, one per process.

    `config` needs the run-control fields of :class:`~densekit.retriever.train.config.TrainConfig`
    (epochs, max_steps, batch_size, learning rate and schedule, seed, precision, eval and save
    steps, ...), `validate()`, `to_json()`, `recipe()` and a `from_json` classmethod.
    """

    find_unused_parameters = False  # DDP: True when some trained parameters get no gradient in a step

    def __init__(self, config: Any, resume: bool = False, overwrite: bool = False) -> None:
        config.validate()
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.output = Path(config.output)

    # ---------------------------------------------------------------- the task's part
    def _setup_task(self) -> None:
        raise NotImplementedError

    def _forward_backward(self, examples: list) -> torch.Tensor:
        raise NotImplementedError

    def _write_model(self, folder: Path) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError

    def _log_fields(self) -> dict:
        return {}

    def _summary_fields(self) -> dict:
        return {}

    def _after_step(self, log, epoch_done: bool) -> None:
        """Called after each optimizer step, before evaluation and checkpointing (`epoch_done`: the
        step ended an epoch); e.g. re-mining negatives. Records go to `log`."""

    def _checkpoint_extra(self) -> tuple[dict, dict[str, Path]]:
        """Task state for a checkpoint (extra JSON-able keys) and files it holds a copy of (name -> file)."""
        return {}, {}

    def _restore_extra(self, path: Path, state: dict) -> None:
        """Restore what `_checkpoint_extra` saved, from the checkpoint folder `path` and its `state`."""

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.config
        device_type = device_type_of(cfg.device)
        self.ctx: DistributedContext = init_distributed(device_type)
        if device_type == "cuda":
            self.device = torch.device(cfg.device or f"cuda:{self.ctx.local_rank}")
            if self.ctx.enabled:
                self.device = torch.device(f"cuda:{self.ctx.local_rank}")
                torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        check_precision(cfg.precision, self.device.type)
        if cfg.batch_size % self.ctx.world_size:
            raise DensekitError(f"batch size {cfg.batch_size} must split evenly over {self.ctx.world_size} processes")
        seed_everything(cfg.seed)
        self._setup_task()
        self.examples_per_epoch = sum(len(batch) for batch in self.sampler.batches(0))
        per_epoch = [len(self.sampler.batches(e)) for e in range(cfg.epochs)]
        self.total_steps = min(cfg.max_steps, sum(per_epoch)) if cfg.max_steps else sum(per_epoch)
        if cfg.max_steps and cfg.max_steps > sum(per_epoch):
            announce(
                f"max_steps {cfg.max_steps} exceeds {cfg.epochs} epoch(s) of {sum(per_epoch)} steps; "
                f"stopping after {sum(per_epoch)}"
            )
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
                find_unused_parameters=self.find_unused_parameters,
            )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

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
        extra, files = self._checkpoint_extra()
        target = self.output / "checkpoints" / f"step-{self.step}"
        write_checkpoint(target, {**state, **extra}, self.config.to_json(), files)
        rotate(self.output, self.config.keep_checkpoints, target)
        return target

    def load_checkpoint(self, found: tuple[Path, dict] | None) -> Path | None:
        """Restore `found` (from `read_newest`); refuse a checkpoint written for another recipe or inputs."""
        if found is None:
            announce(f"--resume: no checkpoint under {self.output / 'checkpoints'}; starting from step 0")
            return None
        path, state = found
        try:  # a state that decodes but is not what densekit writes is damage, not a traceback
            saved = type(self.config).from_json(state["recipe"]).recipe()  # a later-added setting: its default
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
        changed = [
            INPUTS[k].format(data=self.config.data)
            for k in INPUTS
            if k in saved_inputs and k in self.inputs and saved_inputs[k] != self.inputs[k]
        ]
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
        self._restore_extra(path, state)
        return path

    # ---------------------------------------------------------------- evaluation
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
                            **self._log_fields(),
                            "examples_per_s": round(examples_seen / max(train_seconds, 1e-9), 3),
                        }
                    )
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                self._after_step(log, epoch_done=self.batch_in_epoch == len(batches))
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
            **self._summary_fields(),
            "best": self.best,
            "model": str(self.output / "model") if finished else None,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "config": self.config.to_json(),
            "examples": len(self.examples),  # (query, positive) pairs read from the negatives file
            "examples_per_epoch": self.examples_per_epoch,
        }
        if self.ctx.is_main:
            write_json(self.output / "summary.json", summary)
        barrier(self.ctx)
        return summary

    def _train_step(self, examples: list) -> float:
        """One optimizer step on `examples` (this step's batch, all processes); returns the mean loss."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(examples)
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
        return float(all_reduce_mean(loss.detach().clone(), self.ctx))
