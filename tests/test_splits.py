"""Dev slices and cross-fitting folds of a training split (densekit.splits) on real SciFact queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from densekit.data import read_qrels
from densekit.errors import DensekitError, InputError
from densekit.splits import split_folds, split_queries, write_folds, write_holdout


def test_split_folds_partitions_the_ids_evenly_and_deterministically() -> None:
    ids = [f"q{i}" for i in range(11)]
    folds = split_folds(reversed(ids), 3, seed=0)
    assert sorted(q for fold in folds for q in fold) == sorted(ids)  # every id once
    assert sorted(len(f) for f in folds) == [3, 4, 4] and all(f == sorted(f) for f in folds)
    assert split_folds(ids, 3, seed=0) == folds  # input order does not matter
    assert split_folds(ids, 3, seed=1) != folds
    for bad in (1, 12):
        with pytest.raises(DensekitError, match="cross-fitting needs 2 to 11 folds"):
            split_folds(ids, bad, seed=0)


def test_write_folds_holds_each_fold_out_once(scifact_small: Path, tmp_path: Path) -> None:
    judged = set(read_qrels(scifact_small / "qrels" / "test.tsv"))
    summaries = write_folds(scifact_small, "test", tmp_path / "folds", 3, seed=0)
    held = []
    for k, summary in enumerate(summaries):
        folder = tmp_path / "folds" / f"fold{k}"
        dev, train = set(read_qrels(folder / "qrels" / "dev.tsv")), set(read_qrels(folder / "qrels" / "train.tsv"))
        assert dev == set(summary["dev_ids"]) and not dev & train and dev | train == judged
        assert summary["dev_queries"] == len(dev) and summary["train_queries"] == len(train)
        held.append(dev)
    assert set().union(*held) == judged and sum(map(len, held)) == len(judged)
    assert write_folds(scifact_small, "test", tmp_path / "folds", 3, seed=0) == summaries  # kept, same answer
    with pytest.raises(InputError, match="holds another fold 0 than 3 folds of seed 1"):
        write_folds(scifact_small, "test", tmp_path / "folds", 3, seed=1)


def test_write_holdout_is_split_queries_slice(scifact_small: Path, tmp_path: Path) -> None:
    summary = write_holdout(scifact_small, "test", tmp_path / "slice", 0.25, seed=3)
    train, dev = split_queries(read_qrels(scifact_small / "qrels" / "test.tsv"), 0.25, 3)
    assert summary["dev_ids"] == dev and set(read_qrels(tmp_path / "slice" / "qrels" / "train.tsv")) == set(train)
