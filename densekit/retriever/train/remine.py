"""Re-mining hard negatives with the weights being trained (Conan-embedding, arXiv 2408.15710).

Negatives mined once, with the starting model, go stale: as the model learns, the documents it ranks
just below the positive change. With ``remine_every`` (``densekit train --remine-every N|epoch``) the
trainer stops every N optimizer steps (or at the end of every epoch but the last), re-encodes the
corpus and the queries with its current weights and re-runs the mining that wrote the negatives file:
the options `densekit mine` recorded beside it (:func:`densekit.mining.config.read_recorded`: filters,
GIST guide, cross-encoder scorer, votes, sources, sampler, seed, depth, dataset and split). The one
change is the teacher: the model being trained replaces it (it also serves the ``teacher`` source); a
guide, a scorer or another source stays the recorded model. Training goes on with the new negatives;
the (query, positive) pairs and hence the batch order do not change.

- Encoding uses the training model in eval mode under ``torch.inference_mode`` (no dropout, no
  gradients) and never touches the embedding cache: the in-training encoder has a fingerprint of its
  own (:class:`TrainingEncoder`: the run folder and step), and its scorer runs with ``cache=False``,
  so no stale entry is written under the base model's key. The guide and other fixed models use the
  cache as the recorded options say. RNG states are restored afterwards.
- Each re-mine writes ``<output>/remined/step-N.negatives.jsonl`` with the miner's sidecars
  (``.config.json``, ``.stats.json``) and logs one ``metrics.jsonl`` record::

      {"step": N, "epoch": E, "remine": {"negatives_changed": C, "queries_changed": Q, "queries": ...,
       "negatives": ..., "seconds": ..., "file": "remined/step-N.negatives.jsonl"}}

  ``negatives_changed`` counts (query, negative) pairs of the new file that the query did not have
  before (in the file in use until then); ``queries_changed`` the queries with at least one.
- Resume: every checkpoint written after a re-mine holds a copy of the negatives in use
  (``checkpoints/step-N/negatives.jsonl``, JSON lines) and their sha256 in its state; ``--resume``
  reads that file instead of mining again, so a run interrupted after a re-mine ends with the same
  weights as one that was not (tests/test_remine.py).
- Under torchrun the main process mines; every process then reads the same file.

Layering: this module imports :mod:`densekit.mining` (the configured miner). Mining imports the
encoder, the hybrid fusion and the reranker from :mod:`densekit.retriever`, never the trainer, so the
edge points one way: ``retriever.train.remine -> mining -> retriever.{encoder,hybrid,rerank,compose}``
(tests/test_layering.py keeps mining away from ``retriever.train``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError, IntegrityError
from densekit.io import atomic_file, sha256_file
from densekit.progress import announce
from densekit.retriever.train.checkpoints import REMINED, rng_state, set_rng_state
from densekit.retriever.train.config import parse_remine_every
from densekit.retriever.train.data import TrainingExample, read_training_examples
from densekit.retriever.train.distributed import barrier

CHECKPOINT_NEGATIVES = "negatives.jsonl"  # the negatives in use, inside a checkpoint folder


class TrainingEncoder:
    """The trainer's :class:`~densekit.retriever.encoder.Encoder` (same weights, same settings) under a
    fingerprint of its own (the run folder and step), so that whatever it encodes can never be cached or
    found under the base model's key."""

    def __init__(self, encoder: Any, run: Path, step: int) -> None:
        self._encoder = encoder
        self._run = str(Path(run).resolve())
        self._step = step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    @property
    def model_id(self) -> str:
        return f"{self._encoder.model_id}@training"

    def fingerprint(self) -> str:
        return f"in-training:{self._run}@step-{self._step}:{self._encoder.fingerprint()}"

    def describe(self) -> dict:
        described = {**self._encoder.describe(), "model": self.model_id, "fingerprint": self.fingerprint()}
        return {**described, "training_run": self._run, "training_step": self._step}


def _negative_ids(path: Path) -> dict[str, list[str]]:
    from densekit.negatives import iter_negatives

    return {record.query_id: [n.id for n in record.negatives] for _, record in iter_negatives(path)}


def count_changes(before: dict[str, list[str]], after: dict[str, list[str]]) -> tuple[int, int]:
    """(negatives of `after` that their query did not have in `before`, queries with at least one)."""
    changed = [sum(d not in set(before.get(q, ())) for d in ids) for q, ids in after.items()]
    return sum(changed), sum(1 for c in changed if c)


class Remining:
    """The re-mining schedule and state of one run (see the module docstring); `trainer` is the
    dual-encoder :class:`~densekit.retriever.train.trainer.Trainer`."""

    def __init__(self, every: int | str, recorded: Any, negatives: Path) -> None:
        self.every = every
        self.recorded = recorded  # densekit.mining.config.RecordedMining
        self.current = Path(negatives)  # the negatives file in use
        self.remined_at: int | None = None  # step of the last re-mine (None: the original file)
        self._dataset = None
        self._ids: dict[str, list[str]] | None = None

    @classmethod
    def prepare(cls, config: Any) -> Remining | None:
        """None without ``remine_every``; else read the recorded mining (before any model loads) and
        refuse what cannot be re-mined."""
        every = parse_remine_every(config.remine_every)
        if every is None:
            return None
        if config.separate_towers:
            raise DensekitError("--remine-every encodes with one shared tower; drop --separate-towers")
        from densekit.mining.config import read_recorded

        return cls(every, read_recorded(config.data.negatives), Path(config.data.negatives))

    def due(self, step: int, total_steps: int, epoch_done: bool, last_epoch: bool) -> bool:
        """Whether to re-mine after optimizer step `step` (never after the last one)."""
        if step >= total_steps:
            return False
        if self.every == "epoch":
            return epoch_done and not last_epoch
        return step % int(self.every) == 0

    # ---------------------------------------------------------------- re-mining
    def run(self, trainer: Any) -> dict:
        """Re-mine with `trainer`'s current weights, switch it to the new negatives; return the log record."""
        out = trainer.output / REMINED / f"step-{trainer.step}.negatives.jsonl"
        started = time.perf_counter()
        if trainer.ctx.is_main:
            self._mine(trainer, out)
        barrier(trainer.ctx)
        before = self._ids if self._ids is not None else _negative_ids(self.current)
        self._switch(trainer, out, trainer.step)
        negatives_changed, queries_changed = count_changes(before, self._ids or {})
        return {
            "step": trainer.step,
            "epoch": trainer.epoch,
            "remine": {
                "negatives_changed": negatives_changed,
                "queries_changed": queries_changed,
                "queries": len(self._ids or {}),
                "negatives": sum(len(ids) for ids in (self._ids or {}).values()),
                "seconds": round(time.perf_counter() - started, 3),
                "file": str(out.relative_to(trainer.output)),
            },
        }

    def _load_dataset(self, trainer: Any):
        if self._dataset is None:
            from densekit.data import load_dataset

            ds = load_dataset(self.recorded.data, split=self.recorded.split)
            recorded = (self.recorded.sidecar.get("dataset") or {}).get("corpus_sha256")
            if ds.corpus.fingerprint() != trainer.corpus.fingerprint() or (
                recorded and recorded != trainer.inputs.get("corpus_fingerprint")
            ):
                raise DensekitError(
                    f"--remine-every: the mined dataset {self.recorded.data} does not hold the training corpus "
                    f"{trainer.config.data.corpus} (fingerprints differ); train on the corpus that was mined"
                )
            self._dataset = ds
        return self._dataset

    def _mine(self, trainer: Any, out: Path) -> None:
        from densekit.mining.config import build_miner
        from densekit.mining.sources import DenseScorer

        ds = self._load_dataset(trainer)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = self.recorded.config
        saved = rng_state()
        trainer.model.eval()  # no dropout; Encoder.encode runs under inference_mode
        try:
            encoder = TrainingEncoder(trainer.encoder, trainer.output, trainer.step)
            teacher = DenseScorer(encoder, ds.corpus, cache=False, index_device=config.index_device)
            build_miner(config, ds.corpus, teacher=teacher).mine(ds, out)
        finally:
            trainer.model.train()
            set_rng_state(saved)

    def _switch(self, trainer: Any, path: Path, step: int) -> None:
        """Train on the negatives of `path` from now on (same (query, positive) pairs, same order)."""
        cfg = trainer.config
        examples = read_training_examples(path, trainer.corpus, cfg.data.negatives_per_query, trainer.teacher_score)
        by_key = {(e.query_id, e.positive_id): e for e in examples}
        aligned: list[TrainingExample] = []
        for old in trainer.examples:
            new = by_key.get((old.query_id, old.positive_id))
            if new is None:
                raise DensekitError(
                    f"{path}: re-mining lost the training pair (query {old.query_id!r}, positive "
                    f"{old.positive_id!r}) of {cfg.data.negatives}; the recorded mining does not match the file"
                )
            aligned.append(new)
        trainer.examples = aligned
        trainer.sampler.examples = aligned  # its batches depend on the pairs only, which are unchanged
        if trainer.guide is not None:  # the GIST guide needs its embeddings of the new negatives
            from densekit.retriever.train.guide import GuideCache

            lc, where = cfg.loss, trainer.output / "guide_cache"
            if trainer.ctx.is_main:
                trainer.guide = GuideCache.build(lc.guide, aligned, trainer.corpus, cfg.device, where)
            barrier(trainer.ctx)
            if not trainer.ctx.is_main:
                trainer.guide = GuideCache.build(lc.guide, aligned, trainer.corpus, cfg.device, where)
        self._ids = _negative_ids(path)
        self.current = path
        self.remined_at = step

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict | None:
        """What a checkpoint records: None before the first re-mine, else the step and the file's sha256."""
        if self.remined_at is None:
            return None
        return {"step": self.remined_at, "sha256": sha256_file(self.current), "file": CHECKPOINT_NEGATIVES}

    def files(self) -> dict[str, Path]:
        """Files a checkpoint holds a copy of (name in the checkpoint -> file)."""
        return {} if self.remined_at is None else {CHECKPOINT_NEGATIVES: self.current}

    def restore(self, trainer: Any, checkpoint: Path, state: dict | None) -> None:
        """Continue with the negatives `checkpoint` was trained on (its copy, checked against its sha256)."""
        if not state:
            return
        stored = checkpoint / CHECKPOINT_NEGATIVES
        try:
            step, digest = int(state["step"]), str(state["sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{checkpoint}: malformed re-mining state ({exc}); delete the checkpoint") from None
        if not stored.is_file() or sha256_file(stored) != digest:
            raise IntegrityError(
                f"{stored}: missing or altered (sha256 differs from the checkpoint's state); delete the checkpoint"
            )
        # The copy under remined/ is the one later checkpoints copy (rotation may delete this checkpoint).
        own = trainer.output / REMINED / f"step-{step}.negatives.jsonl"
        if trainer.ctx.is_main and not (own.is_file() and sha256_file(own) == digest):
            own.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(own, "wb") as handle, open(stored, "rb") as source:
                shutil.copyfileobj(source, handle)
        barrier(trainer.ctx)
        announce(
            f"--resume: training on the negatives re-mined at step {step} ({os.path.relpath(own, trainer.output)})"
        )
        self._switch(trainer, own, step)
