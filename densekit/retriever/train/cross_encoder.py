"""Cross-encoder (reranker) training: the cross-encoder task of the shared training loop.

A cross-encoder reads a query and a document together and outputs one relevance logit (Nogueira
and Cho, arXiv 1901.04085). :class:`CrossEncoderTrainer` starts from any BERT-like folder (a
sentence-transformers bi-encoder such as all-MiniLM-L6-v2 gets a fresh one-logit head,
`AutoModelForSequenceClassification` with ``num_labels=1``, initialised under the run's seed) and
trains it on a negatives file from `densekit mine`: each (query, positive) pair is a group of the
positive and the query's first n mined negatives, scored together, with

- ``listwise`` (default): softmax cross-entropy over the group, the positive the target
  (:class:`ListwiseSoftmaxLoss`; sentence-transformers' ListNetLoss/CrossEntropyLoss setting, and the
  localised contrastive estimation of Gao et al., arXiv 2101.08751), or
- ``bce``: binary cross-entropy with logits on every pair (:class:`PairwiseBCELoss`; sentence-transformers'
  BinaryCrossEntropyLoss).

Everything else is :class:`~densekit.retriever.train.loop.TrainingLoop`'s, shared with the dual
encoder: AdamW with warmup + linear decay, clipping, fp16/bf16 on CUDA, seeds, checkpoints and a
bit-identical ``resume``, evaluation and the best model, torchrun (DDP: each process scores its
share of the groups; gradients are averaged, so the update equals one process's on the whole batch).

Evaluation during training (`eval_data`): the current weights rerank the evaluation queries' first
`eval_depth` first-stage hits, from `eval_candidates` (a TREC run, e.g. the dense run you will rerank
at test time) or by default from BM25 (bm25s, in process) built once over the evaluation corpus; the
metric is ndcg@10 of that reranking. It is a selection signal, cheap because the depth is small; the
number to report comes from `densekit eval --rerank` on the test split.

The output folder is the dual encoder's (model/, best/, checkpoints/, metrics.jsonl, summary.json);
``model/`` is a Hugging Face sequence-classification folder that `densekit eval --rerank`,
:class:`~densekit.retriever.rerank.CrossEncoderReranker` and sentence-transformers' ``CrossEncoder``
load with identical scores: its config records the identity activation, so ``CrossEncoder.predict``
returns the logit as densekit does (see :mod:`densekit.retriever.rerank`).

Example::

    config = RerankerTrainConfig(model="all-MiniLM-L6-v2", output=Path("runs/ce"),
                                 data=RerankerDataConfig(negatives=Path("scifact.neg.jsonl"), corpus="scifact"))
    summary = train_reranker(config)        # runs/ce/model is the cross-encoder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from densekit.data import Corpus, Run, join_title_text
from densekit.errors import DensekitError, InputError
from densekit.io import atomic_dir, sha256_file, write_json
from densekit.negatives import iter_negatives
from densekit.progress import announce
from densekit.retriever.train.checkpoints import TRAIN_CONFIG
from densekit.retriever.train.data import NoDuplicatesBatchSampler, TrainingExample, read_training_examples
from densekit.retriever.train.distributed import DistributedContext, all_reduce_mean
from densekit.retriever.train.loop import TrainingLoop
from densekit.retriever.train.model import length_sorted_groups
from densekit.retriever.train.optim import resolve_forward_batch_size
from densekit.retriever.train.reranker_config import RerankerDataConfig, RerankerTrainConfig

__all__ = [
    "CrossEncoderTrainer",
    "ListwiseSoftmaxLoss",
    "PairwiseBCELoss",
    "RerankerDataConfig",
    "RerankerTrainConfig",
    "train_reranker",
]

# What sentence-transformers' CrossEncoder applies to the logits: recorded so that it applies nothing.
IDENTITY_ACTIVATION = "torch.nn.modules.linear.Identity"
MAX_PAIR_LENGTH = 512


# ----------------------------------------------------------------------------- losses


class ListwiseSoftmaxLoss(nn.Module):
    """Softmax cross-entropy over each group's logits, the positive (column 0) the target.

    Inputs: `logits` [groups, width] (the positive, then the negatives), `mask` [groups, width]
    (False where a group with fewer negatives is padded). Loss per group: ``-log(exp(s_pos) /
    sum_j exp(s_j))``; the mean over groups. Equivalent to sentence-transformers' CrossEntropyLoss on
    (query, [positive, negatives...]) with label 0; the LCE loss of Gao et al., arXiv 2101.08751.

    Example: logits [[2.0, 0.0]] -> log(1 + e^-2) = 0.1269.
    """

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, ctx: DistributedContext | None = None) -> torch.Tensor:
        scores = logits.float().masked_fill(~mask, float("-inf"))
        target = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        return nn.functional.cross_entropy(scores, target)


class PairwiseBCELoss(nn.Module):
    """Binary cross-entropy with logits on every (query, document) pair: the positive labelled 1, each
    negative 0 (sentence-transformers' BinaryCrossEntropyLoss; Nogueira and Cho, arXiv 1901.04085).

    Inputs as :class:`ListwiseSoftmaxLoss`. The mean over the batch's real pairs, all processes
    together: under torchrun each process divides its sum by the global pair count (times the world
    size, which DDP's gradient averaging divides out again).

    Example: logits [[2.0, 0.0]] -> (log(1 + e^-2) + log 2) / 2 = 0.4100.
    """

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, ctx: DistributedContext | None = None) -> torch.Tensor:
        labels = torch.zeros_like(logits, dtype=torch.float32)
        labels[:, 0] = 1.0
        losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        count = mask.sum().to(torch.float32)
        world = 1
        if ctx is not None and ctx.enabled:
            count = all_reduce_mean(count.clone(), ctx) * ctx.world_size
            world = ctx.world_size
        return losses[mask].sum() * world / count


LOSSES = {"listwise": ListwiseSoftmaxLoss, "bce": PairwiseBCELoss}


# ----------------------------------------------------------------------------- data


def check_negatives(path: str | Path, skip: bool) -> int:
    """The number of queries in the negatives file `path` without mined negatives.

    A group of the positive alone teaches a cross-encoder nothing (listwise) or only "relevant"
    (BCE), so unless `skip` such a query is an InputError naming its line (before anything loads);
    with `skip` the trainer leaves them out and announces how many.
    """
    empty = [(line, record.query_id) for line, record in iter_negatives(path) if not record.negatives]
    if empty and not skip:
        line, query_id = empty[0]
        raise InputError(
            path,
            f"query {query_id!r} has no negatives ({len(empty)} queries have none); a cross-encoder group needs the "
            "positive and at least one mined negative: pass --skip-queries-without-negatives, or re-mine",
            line,
        )
    return len(empty)


@dataclass
class PairBatch:
    """Tokenised (query, document) pairs, group-major (each group: positive, then negatives), and
    `mask` [groups, width] marking which columns of each group hold a real pair."""

    features: dict[str, torch.Tensor]
    mask: torch.Tensor


class PairCollator:
    """Pairs of a batch of examples, tokenised as sentence-transformers' CrossEncoder and
    :class:`~densekit.retriever.rerank.CrossEncoderReranker` do (query first, the document as title
    and text joined, ``truncation="longest_first"``)."""

    def __init__(self, tokenizer, corpus: Corpus, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.max_length = max_length

    def _text(self, doc_id: str) -> str:
        doc = self.corpus.document(doc_id)
        return join_title_text(doc["title"], doc["text"])

    def __call__(self, examples: list[TrainingExample]) -> PairBatch:
        width = 1 + max(len(e.negative_ids) for e in examples)
        queries, documents = [], []
        mask = torch.zeros(len(examples), width, dtype=torch.bool)
        for row, example in enumerate(examples):
            group = (example.positive_id, *example.negative_ids)
            mask[row, : len(group)] = True
            queries += [example.query] * len(group)
            documents += [self._text(d) for d in group]
        features = self.tokenizer(
            queries,
            documents,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
        return PairBatch(dict(features), mask)


# ----------------------------------------------------------------------------- the model


class PairScorer(nn.Module):
    """The trained module: a one-logit sequence classifier, run over length-sorted groups of
    `forward_batch_size` pairs (less padding; see :mod:`densekit.retriever.train.model`)."""

    def __init__(self, classifier: nn.Module, forward_batch_size: int | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.forward_batch_size = forward_batch_size

    def _logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(**features).logits[:, -1].float()

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        size = self.forward_batch_size
        if size is None or features["input_ids"].shape[0] <= size:
            return self._logits(features)
        order, groups = length_sorted_groups(features, size)
        logits = torch.cat([self._logits(group) for group in groups])
        return logits[torch.argsort(order)]


def load_classifier(folder: Path) -> tuple[nn.Module, bool]:
    """`AutoModelForSequenceClassification` with one logit from `folder`; True when its head is new
    (the folder is an encoder, not a one-logit cross-encoder). DensekitError when it cannot be."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its "newly initialized" warning is announced below, once
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DensekitError(f"{folder}: cannot load as a one-logit sequence classifier ({first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, bool(info.get("missing_keys"))


# ----------------------------------------------------------------------------- the task


class _FixedRun:
    """A run read from a file behind the Retriever protocol: each asked query's first k hits."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def search(self, queries: dict[str, str], k: int) -> Run:
        return Run({q: self.run.get(q, [])[:k] for q in queries})


class CrossEncoderTrainer(TrainingLoop):
    """Runs a :class:`RerankerTrainConfig` (see the module docstring); under torchrun, one per process."""

    config: RerankerTrainConfig

    def _setup_task(self) -> None:
        from transformers import AutoTokenizer

        from densekit.data import load_dataset
        from densekit.retriever.models import resolve_model

        cfg = self.config
        empty = check_negatives(cfg.data.negatives, cfg.data.skip_queries_without_negatives)
        folder = resolve_model(cfg.model)
        self.corpus = load_dataset(cfg.data.corpus).corpus
        examples = read_training_examples(cfg.data.negatives, self.corpus, cfg.data.negatives_per_query)
        self.examples = [e for e in examples if e.negative_ids]
        if empty:
            announce(
                f"{cfg.data.negatives}: {empty} queries without negatives left out (--skip-queries-without-negatives)"
            )
        if not self.examples:
            raise InputError(
                cfg.data.negatives, "no query has mined negatives; a cross-encoder trains on positive + negatives"
            )
        self.inputs = {
            "negatives_sha256": sha256_file(cfg.data.negatives),
            "corpus_fingerprint": self.corpus.fingerprint(),
        }
        self.sampler = NoDuplicatesBatchSampler(
            self.examples, cfg.batch_size, cfg.seed, one_per_query=cfg.data.positives == "one"
        )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        classifier, fresh = load_classifier(folder)
        if fresh:
            announce(f"{folder}: a new one-logit head on the pretrained encoder (initialised with seed {cfg.seed})")
        limits = [MAX_PAIR_LENGTH, int(self.tokenizer.model_max_length)]
        limits.append(int(getattr(classifier.config, "max_position_embeddings", MAX_PAIR_LENGTH)))
        self.max_length = cfg.max_length or min(limits)
        classifier.train()
        if cfg.gradient_checkpointing:
            classifier.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = PairScorer(classifier, resolve_forward_batch_size(cfg.forward_batch_size, self.device))
        self.model.to(self.device).train()
        self.loss_fn = LOSSES[cfg.loss]().to(self.device)
        self.collator = PairCollator(self.tokenizer, self.corpus, self.max_length)
        self.eval_dataset = None
        if cfg.eval_data:
            self.eval_dataset = load_dataset(cfg.eval_data, split=cfg.eval_split)
            self.first_stage = self._first_stage()

    def _first_stage(self):
        """The evaluation's candidates: the run file, or BM25 over the evaluation corpus (built once)."""
        assert self.eval_dataset is not None
        cfg = self.config
        if cfg.eval_candidates is not None:  # read on every rank, so a bad file fails them all alike
            run = Run.read_trec(cfg.eval_candidates)
            missing = [q for q in self.eval_dataset.queries if q not in run]
            if len(missing) == len(self.eval_dataset.queries):
                raise InputError(cfg.eval_candidates, "the run holds none of the evaluation queries")
            if missing:
                announce(f"{cfg.eval_candidates}: {len(missing)} evaluation queries have no candidates (they score 0)")
            return _FixedRun(run)
        if not self.ctx.is_main:  # only the main process evaluates
            return None
        from densekit.retriever.bm25 import BM25Retriever

        return BM25Retriever.build(self.eval_dataset.corpus, backend="bm25s")

    # ---------------------------------------------------------------- one step
    def _forward_backward(self, examples: list[TrainingExample]) -> torch.Tensor:
        per = len(examples) // self.ctx.world_size
        batch = self.collator(examples[self.ctx.rank * per : (self.ctx.rank + 1) * per])
        features = {k: v.to(self.device) for k, v in batch.features.items()}
        mask = batch.mask.to(self.device)
        with self._autocast():
            logits = self.train_model(features)
        scores = torch.full(mask.shape, float("-inf"), device=self.device)
        scores[mask] = logits.float()  # group-major pairs into [groups, width]
        loss = self.loss_fn(scores.masked_fill(~mask, 0.0), mask, self.ctx)
        self.scaler.scale(loss).backward()
        return loss.detach()

    # ---------------------------------------------------------------- saving and evaluation
    def _write_model(self, folder: Path) -> None:
        classifier = self.model.classifier
        classifier.config.sentence_transformers = {"activation_fn": IDENTITY_ACTIVATION}
        self.tokenizer.model_max_length = self.max_length  # scored at the trained length, here and in ST
        with atomic_dir(folder, kind="model") as staging:
            classifier.save_pretrained(staging, safe_serialization=True)
            self.tokenizer.save_pretrained(staging)
            write_json(staging / TRAIN_CONFIG, self.config.to_json())

    def evaluate(self) -> dict:
        """ndcg@10 of the current weights reranking the first stage's top `eval_depth` (module docstring)."""
        from densekit.eval.harness import evaluate_retriever
        from densekit.retriever.rerank import CrossEncoderReranker

        assert self.eval_dataset is not None
        cfg = self.config
        reranker = CrossEncoderReranker(
            self.first_stage,
            self.model.classifier,
            self.eval_dataset.corpus,
            depth=cfg.eval_depth,
            max_length=self.max_length,
            tokenizer=self.tokenizer,
        )
        self.model.eval()
        try:
            with self._autocast():
                report = evaluate_retriever(reranker, self.eval_dataset, ("ndcg@10",), depth=cfg.eval_depth)
        finally:
            self.model.train()
        return dict(report.result.metrics)

    def _summary_fields(self) -> dict:
        return {"max_length": self.max_length}


def train_reranker(config: RerankerTrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `config`; see :class:`CrossEncoderTrainer`. `resume` continues the run in `config.output`;
    `overwrite` starts over in a folder that holds a run; without either such a folder is refused."""
    return CrossEncoderTrainer(config, resume, overwrite).train()
