"""MTEB adapter: evaluate a densekit Encoder with the `mteb` package, offline, and write MTEB results.

Two kinds of tasks:

- a local BEIR folder (a path or a name under `$DENSEKIT_DATA`) becomes an mteb retrieval task whose
  data comes from densekit's own loader (:func:`local_retrieval_task`). When the folder's name is an
  mteb task (``scifact`` -> ``SciFact``), the task copies that task's metadata (name, prompt,
  identical-ids convention), so results files and prompt keys match the leaderboard's; the dataset
  path and revision point at the local folder.
- an mteb task name (``SciFact``) whose data is already in the Hugging Face datasets cache. The hub
  is never contacted (:func:`enforce_offline`); a task whose data is not cached is a clear error.

:class:`DensekitMtebEncoder` makes an Encoder an mteb model. It chooses prompts the way mteb's
sentence-transformers wrapper does (``get_prompt_name``: ``"{task}-{query|document}"``, ``"{task}"``,
``"{type}-{query|document}"``, ``"{type}"``, ``"query"``/``"document"``), starting from the
encoder's own query/document prompts, and it reads corpus embeddings from densekit's embedding
cache when mteb asks for exactly a known corpus, so `densekit eval` and `densekit mteb` encode a
corpus once between them.

Results are written in MTEB's layout, ``OUT/results/<model>/<revision>/<Task>.json`` plus
``model_meta.json``, by mteb's own ``ResultCache``, into a directory that replaces OUT atomically.

Judged queries without results: mteb scores with pytrec_eval over the queries present in its run
(``mteb._evaluators.retrieval_metrics.calculate_retrieval_scores``), i.e. BEIR's "skip" convention,
not densekit's default zero rule (:mod:`densekit.eval.metrics`). For a dense encoder the two agree,
because mteb's exact search returns the top k documents for every query, so no query is missing; the
rule only matters for retrievers that can return nothing (BM25), which this adapter does not run.

Example::

    enc = Encoder("all-MiniLM-L6-v2")
    summary = run_mteb(enc, ["scifact"], out="results/mteb")
    summary.tasks[0].scores["ndcg_at_10"]           # equals `densekit eval scifact` ndcg@10
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densekit.data import BeirDataset, Corpus, fingerprint, load_dataset
from densekit.errors import DensekitError
from densekit.index.cache import encode_corpus
from densekit.progress import announce, is_quiet
from densekit.retriever.encoder import Encoder

#: Environment that keeps huggingface_hub, datasets and transformers from any network access.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PROMPT_TYPES = ("query", "document")


def enforce_offline() -> None:
    """Put huggingface_hub, datasets and transformers in offline mode, even if already imported.

    The libraries read these variables into module constants at import time, and densekit may have
    imported transformers (hence huggingface_hub) before this runs, so the constants are set too.
    """
    os.environ.update(OFFLINE_ENV)
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config as datasets_config

        datasets_config.HF_HUB_OFFLINE = True
        if hasattr(datasets_config, "HF_DATASETS_OFFLINE"):
            datasets_config.HF_DATASETS_OFFLINE = True
    except ImportError:  # pragma: no cover - mteb depends on datasets
        pass


def import_mteb():
    """The mteb module, imported offline; a clear error when the optional dependency is missing."""
    enforce_offline()
    try:
        import mteb
    except ImportError as exc:
        raise DensekitError(f"the mteb package is not installed ({exc}); pip install 'densekit[mteb]'") from None
    logging_quiet()
    return mteb


def logging_quiet() -> None:
    import logging

    for name in ("mteb", "datasets", "codecarbon"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if is_quiet():
        import datasets

        datasets.disable_progress_bars()


# ----------------------------------------------------------------------------- model


def make_encoder_class():
    """Define :class:`DensekitMtebEncoder` on mteb's ``AbsEncoder`` (mteb is imported lazily)."""
    import_mteb()
    from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

    class DensekitMtebEncoder(AbsEncoder):
        """A densekit :class:`Encoder` as an mteb model (mteb's ``EncoderProtocol``).

        Args:
            encoder: the densekit encoder; its query/document prompts are the base prompts.
            prompts: extra mteb-style prompts, keyed like mteb's ``model_prompts`` (task name, task
                type, prompt type, or ``"<task or type>-<query|document>"``); they win over the base.
            corpora: corpora whose embeddings may come from densekit's cache when mteb encodes them.
            cache: use the embedding cache at all.
        """

        def __init__(
            self,
            encoder: Encoder,
            prompts: dict[str, str] | None = None,
            corpora: Iterable[Corpus] = (),
            cache: bool = True,
        ) -> None:
            self.model = encoder
            base = {"query": encoder.config.query_prompt, "document": encoder.config.document_prompt}
            self.model_prompts = {k: v for k, v in {**base, **(prompts or {})}.items() if v} or None
            self.cache = cache
            self._corpora = {fingerprint(c.texts()): c for c in corpora}
            self.cache_hits = 0
            self.mteb_model_meta = ModelMeta.create_empty(
                overwrites=dict(
                    name=mteb_model_name(encoder.model_name),
                    revision=hashlib.sha256(encoder.fingerprint().encode()).hexdigest()[:12],
                    embed_dim=encoder.dim,
                    max_tokens=encoder.config.max_length,
                    framework=["PyTorch"],
                    similarity_fn_name=ScoringFunction.COSINE
                    if encoder.config.normalize
                    else ScoringFunction.DOT_PRODUCT,
                    modalities=["text"],
                )
            )

        def prompt_for(self, task_metadata, prompt_type) -> str:
            """The prompt mteb's sentence-transformers wrapper would prepend for this task and side."""
            name = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
            return self.model_prompts[name] if name else ""

        def encode(
            self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs: Any
        ) -> np.ndarray:
            texts = [text for batch in inputs for text in batch["text"]]
            prompt = self.prompt_for(task_metadata, prompt_type)
            show = bool(kwargs.get("show_progress_bar", True)) and not is_quiet()
            if self.cache and prompt_type == PromptType.document and prompt == self.model.config.document_prompt:
                corpus = self._corpora.get(fingerprint(texts))
                if corpus is not None:
                    self.cache_hits += 1
                    return np.asarray(encode_corpus(self.model, corpus, cache=True, show_progress=show))
            desc = f"encoding {prompt_type.value if prompt_type else 'texts'} ({task_metadata.name})"
            return self.model.encode(
                texts, prompt=prompt, batch_size=kwargs.get("batch_size"), desc=desc, show_progress=show
            )

    return DensekitMtebEncoder


def mteb_model_name(name: str) -> str:
    """MTEB names models ``org/name``; a bare packaged name gets sentence-transformers' org."""
    if "/" in name and not Path(name).exists():
        return name
    if Path(name).exists():
        return f"local/{Path(name).resolve().name}"
    return f"sentence-transformers/{name}"


# ----------------------------------------------------------------------------- tasks


def official_task_class(name: str):
    """The mteb retrieval task class whose name equals `name` case-insensitively, or None."""
    mteb = import_mteb()
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    try:
        task = mteb.get_task(name)
    except (KeyError, ValueError):
        matches = [t for t in mteb.get_tasks(task_types=["Retrieval"]) if t.metadata.name.lower() == name.lower()]
        if not matches:
            return None
        task = matches[0]
    return type(task) if isinstance(task, AbsTaskRetrieval) else None


def local_retrieval_task(dataset: BeirDataset, language: str = "eng-Latn"):
    """An mteb retrieval task over a loaded BEIR split, with its data already in place (no hub).

    Queries are the split's judged queries, the corpus is the whole corpus in file order, and the
    relevance judgements are the split's qrels, exactly what `densekit eval` scores.
    """
    import_mteb()
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    if dataset.split is None:
        raise DensekitError(f"{dataset.root}: a split is needed to build an mteb task")
    official = official_task_class(dataset.name)
    revision = dataset.corpus.fingerprint()[:12]
    local_source = {"path": str(dataset.root), "revision": f"local-{revision}"}
    if official is not None:
        metadata = official.metadata.model_copy(
            update={
                "dataset": local_source,
                "eval_splits": [dataset.split],
                "description": f"{official.metadata.description} (local BEIR folder {dataset.root})",
            }
        )
        base = official
    else:
        metadata = TaskMetadata(
            name=dataset.name,
            description=f"Local BEIR folder {dataset.root}",
            dataset=local_source,
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[dataset.split],
            eval_langs=[language],
            main_score="ndcg_at_10",
        )
        base = AbsTaskRetrieval

    corpus = Dataset.from_dict({"id": dataset.corpus.ids, "title": dataset.corpus.titles, "text": dataset.corpus.body})
    queries = Dataset.from_dict({"id": list(dataset.queries), "text": list(dataset.queries.values())})
    split_data = {"corpus": corpus, "queries": queries, "relevant_docs": dataset.qrels, "top_ranked": None}

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = {"default": {dataset.split: dict(split_data)}}
        self.data_loaded = True

    task_class = type(f"Local{metadata.name}", (base,), {"metadata": metadata, "load_data": load_data})
    task = task_class()
    task.load_data()
    return task


def mteb_task(name: str):
    """An mteb task by name, its data loaded from the local Hugging Face cache only."""
    mteb = import_mteb()
    try:
        task = mteb.get_task(name)
    except (KeyError, ValueError) as exc:
        raise DensekitError(
            f"{name!r} is neither a BEIR folder (path or name under $DENSEKIT_DATA) nor an mteb task name ({exc})"
        ) from None
    try:
        task.load_data()
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "not reachable"
        raise DensekitError(
            f"mteb task {task.metadata.name}: its data ({task.metadata.dataset.get('path')}) is not in the "
            f"local Hugging Face datasets cache and the hub is not contacted (offline); download it on a "
            f"machine with internet, or give a local BEIR folder instead ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return task


def resolve_tasks(names: Sequence[str], split: str, language: str = "eng-Latn") -> tuple[list, list[BeirDataset]]:
    """Each name as a local BEIR task when it resolves to a folder, else as an mteb task."""
    from densekit.data import resolve_dataset

    tasks, datasets = [], []
    for name in names:
        try:
            resolve_dataset(name)
        except DensekitError:
            tasks.append(mteb_task(name))
            continue
        dataset = load_dataset(name, split=split)
        datasets.append(dataset)
        tasks.append(local_retrieval_task(dataset, language))
    return tasks, datasets


# ----------------------------------------------------------------------------- running


@dataclass
class MtebTaskScores:
    """One task's main score and every score mteb reported for one split and subset."""

    task: str
    split: str
    subset: str
    main_score: float
    scores: dict[str, float]
    local_path: str | None = None

    def to_json(self, all_scores: bool = False) -> dict:
        families = ("ndcg", "map", "recall", "mrr", "precision")
        keep = (
            self.scores
            if all_scores
            else {
                k: v
                for k, v in self.scores.items()
                if k.split("_at_")[0] in families and k.rsplit("_", 1)[-1] in ("10", "100")
            }
        )
        return {
            "task": self.task,
            "split": self.split,
            "subset": self.subset,
            "main_score": self.main_score,
            "scores": keep,
            "local_path": self.local_path,
        }


@dataclass
class MtebSummary:
    model: str
    revision: str
    tasks: list[MtebTaskScores] = field(default_factory=list)
    out: str | None = None
    cache_hits: int = 0

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "revision": self.revision,
            "results_dir": self.out,
            "corpus_cache_hits": self.cache_hits,
            "tasks": [t.to_json() for t in self.tasks],
        }


def validate_prompt_keys(prompts: dict[str, str], task_names: Iterable[str]) -> None:
    """Each key must be a prompt type, a task type or a task being run, optionally + -query/-document."""
    import_mteb()
    from typing import get_args

    from mteb.abstasks.task_metadata import TaskType

    known = set(PROMPT_TYPES) | set(get_args(TaskType)) | set(task_names)
    for key in prompts:
        base = key.rsplit("-", 1)[0] if key.endswith(tuple(f"-{p}" for p in PROMPT_TYPES)) else key
        if base not in known:
            raise DensekitError(
                f"prompt key {key!r} matches no prompt type, task type or task being run "
                f"({', '.join(sorted(task_names))})"
            )


def run_mteb(
    encoder: Encoder,
    names: Sequence[str],
    out: str | Path | None = None,
    split: str = "test",
    prompts: dict[str, str] | None = None,
    batch_size: int = 64,
    cache: bool = True,
    language: str = "eng-Latn",
    overwrite: bool = False,
) -> MtebSummary:
    """Evaluate `encoder` with mteb on each named task; write MTEB results under `out` if given.

    An existing `out` must be an MTEB results folder densekit wrote (or empty) unless `overwrite`;
    that is checked before any encoding."""
    from densekit.io import check_output_target

    if out is not None:
        check_output_target(out, "mteb-results", overwrite)
    mteb = import_mteb()
    from densekit.io import atomic_dir

    tasks, datasets = resolve_tasks(names, split, language)
    if prompts:
        validate_prompt_keys(prompts, [t.metadata.name for t in tasks])
    encoder_class = make_encoder_class()
    model = encoder_class(encoder, prompts=prompts, corpora=[d.corpus for d in datasets], cache=cache)
    local_paths = {
        t.metadata.name: t.metadata.dataset["path"]
        for t in tasks
        if str(t.metadata.dataset.get("revision", "")).startswith("local-")
    }
    encode_kwargs = {"batch_size": batch_size, "show_progress_bar": not is_quiet()}

    def evaluate(cache_dir: Path | None):
        result_cache = mteb.ResultCache(cache_path=cache_dir) if cache_dir is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mteb.evaluate(
                model,
                tasks,
                cache=result_cache,
                overwrite_strategy="always",
                encode_kwargs=encode_kwargs,
                show_progress_bar=not is_quiet(),
                co2_tracker=False,
            )

    if out is not None:
        with atomic_dir(out, kind="mteb-results", overwrite=overwrite) as staging:
            results = evaluate(staging)
    else:
        results = evaluate(None)
    if getattr(results, "exceptions", None):
        raise DensekitError(f"mteb failed: {results.exceptions}")
    meta = model.mteb_model_meta
    summary = MtebSummary(
        model=meta.name, revision=meta.revision, out=str(out) if out else None, cache_hits=model.cache_hits
    )
    for task_result in results.task_results:
        for split_name, rows in task_result.scores.items():
            for row in rows:
                numbers = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
                summary.tasks.append(
                    MtebTaskScores(
                        task=task_result.task_name,
                        split=split_name,
                        subset=row.get("hf_subset", "default"),
                        main_score=float(row["main_score"]),
                        scores=numbers,
                        local_path=local_paths.get(task_result.task_name),
                    )
                )
    if cache and datasets and model.cache_hits == 0:
        announce("mteb encoded the corpus itself (no corpus matched densekit's embedding cache)")
    return summary
