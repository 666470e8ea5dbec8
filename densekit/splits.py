"""A dev slice held out of a training split, for datasets without a dev split (SciFact).

:func:`split_queries` divides the judged queries of a split into a training part and a dev part,
deterministically: the sorted query ids are shuffled by a seeded generator and the first
``round(fraction * n)`` (at least one) become dev. The same ids, fraction and seed always give the
same slice, whatever the file order.

:func:`write_holdout` materialises the slice as a small BEIR folder, so every command that takes a
dataset (mining, both trainers' dev evaluation, re-mining, evaluation) reads it unchanged::

    <target>/corpus.jsonl       a symbolic link to the source corpus file (never copied)
    <target>/queries.jsonl      only the split's judged queries (train and dev parts)
    <target>/qrels/train.tsv    the judgements of the training part
    <target>/qrels/dev.tsv      the judgements of the dev part

The folder holds no other split: nothing that trains on it can read test queries or judgements.
Training examples come from ``qrels/train.tsv`` only, so no dev query is ever a training example.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from densekit.data import Qrels, qrels_path, read_qrels, read_queries, resolve_dataset
from densekit.errors import DensekitError, InputError
from densekit.io import atomic_dir

TRAIN, DEV = "train", "dev"


def split_queries(query_ids: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training ids, dev ids), both sorted: a seeded `fraction` of the ids (at least one) held out.

    Raises DensekitError when `fraction` is not in (0, 1) or fewer than two ids leave nothing to
    train on."""
    if not 0 < fraction < 1:
        raise DensekitError(f"the dev fraction must be between 0 and 1 (exclusive), got {fraction}")
    ids = sorted(set(query_ids))
    if len(ids) < 2:
        raise DensekitError(f"a dev slice needs at least 2 judged queries to split, got {len(ids)}")
    n_dev = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    dev = sorted(ids[i] for i in order[:n_dev])
    held = set(dev)
    return [q for q in ids if q not in held], dev


def _beir_file(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise InputError(root / name, "missing: a BEIR folder needs it (or its .gz)")


def _write_qrels(path: Path, qrels: Qrels, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for query_id in ids:
            for doc_id, score in qrels[query_id].items():
                handle.write(f"{query_id}\t{doc_id}\t{score}\n")


def split_folds(query_ids: Iterable[str], folds: int, seed: int) -> list[list[str]]:
    """`folds` disjoint parts of the ids (each sorted, sizes differing by at most one) that together hold
    every id: the sorted ids shuffled by a seeded generator and dealt out in turn (cross-fitting).

    Raises DensekitError when `folds` is below 2 or above the number of ids."""
    ids = sorted(set(query_ids))
    if not 2 <= folds <= len(ids):
        raise DensekitError(f"cross-fitting needs 2 to {len(ids)} folds for {len(ids)} queries, got {folds}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [sorted(ids[i] for i in order[k::folds]) for k in range(folds)]


def _judged_queries(root: Path, split: str) -> tuple[Qrels, dict[str, str], list[str]]:
    qrels = read_qrels(qrels_path(root, split))
    queries = read_queries(_beir_file(root, "queries.jsonl"))
    judged = [q for q in qrels if q in queries]
    if not judged:
        raise InputError(qrels_path(root, split), "judges no query that queries.jsonl holds")
    return qrels, queries, judged


def write_holdout(
    data: str | Path, split: str, target: str | Path, fraction: float, seed: int, overwrite: bool = False
) -> dict:
    """Write the BEIR folder of the module docstring at `target` (atomically) from `data`'s `split`.

    Returns ``{"train_queries", "dev_queries", "dev_ids", "source"}``. Only judged queries that
    queries.jsonl holds are split; a split with none is an error.
    """
    root = resolve_dataset(data)
    loaded = _judged_queries(root, split)
    _, dev_ids = split_queries(loaded[2], fraction, seed)
    return _write_folder(root, split, loaded, target, dev_ids, overwrite)


def write_folds(data: str | Path, split: str, target: str | Path, folds: int, seed: int) -> list[dict]:
    """Cross-fitting folders: ``<target>/fold<k>`` (k = 0..folds-1) is the folder of the module docstring
    whose dev part is fold k of :func:`split_folds` and whose training part is every other fold.

    A fold folder already there is kept (the same data, folds and seed write the same folder). Returns
    one summary a fold, as :func:`write_holdout` returns."""
    root = resolve_dataset(data)
    loaded = _judged_queries(root, split)
    judged = loaded[2]
    summaries = []
    for k, dev_ids in enumerate(split_folds(judged, folds, seed)):
        folder = Path(target) / f"fold{k}"
        if (folder / "qrels" / f"{DEV}.tsv").is_file():
            held = sorted(read_qrels(folder / "qrels" / f"{DEV}.tsv"))
            if held != dev_ids:
                raise InputError(folder, f"holds another fold {k} than {folds} folds of seed {seed}; delete it")
            summaries.append(_summary(root, split, len(judged) - len(held), held))
            continue
        summaries.append(_write_folder(root, split, loaded, folder, dev_ids))
    return summaries


def _write_folder(
    root: Path,
    split: str,
    loaded: tuple[Qrels, dict[str, str], list[str]],
    target: str | Path,
    dev_ids: list[str],
    overwrite: bool = False,
) -> dict:
    qrels, queries, judged = loaded
    corpus = _beir_file(root, "corpus.jsonl")
    held = set(dev_ids)
    train_ids = sorted(q for q in judged if q not in held)
    with atomic_dir(target, kind="dataset", overwrite=overwrite) as staging:
        (staging / corpus.name).symlink_to(corpus.resolve())
        with open(staging / "queries.jsonl", "w", encoding="utf-8") as handle:
            for query_id in sorted(judged):
                handle.write(json.dumps({"_id": query_id, "text": queries[query_id]}) + "\n")
        _write_qrels(staging / "qrels" / f"{TRAIN}.tsv", qrels, train_ids)
        _write_qrels(staging / "qrels" / f"{DEV}.tsv", qrels, dev_ids)
    return _summary(root, split, len(train_ids), dev_ids)


def _summary(root: Path, split: str, train_queries: int, dev_ids: list[str]) -> dict:
    """What :func:`write_holdout` and :func:`write_folds` return for one folder."""
    return {
        "source": str(root.resolve()),
        "split": split,
        "train_queries": train_queries,
        "dev_queries": len(dev_ids),
        "dev_ids": dev_ids,
    }
