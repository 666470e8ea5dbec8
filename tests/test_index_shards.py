"""Sharded encoding: an interrupted encode resumes and yields the same index; shards build the same IVF
index as the concatenated array; a changed plan or a damaged shard is refused; two torchrun processes
(gloo, CPU) write the same shards and index as one process.

Real encoders: the tiny random BERT (fast) over a 300-document SciFact subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from densekit.data import load_dataset
from densekit.errors import DensekitError, IntegrityError
from densekit.index.dense import DenseIndex
from densekit.index.shards import build_from_shards, encode_shards, finished_shards, iter_shards, read_plan
from densekit.retriever.encoder import Encoder

SHARD = 64
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def subset(scifact_dir, tmp_path_factory) -> Path:
    """SciFact: 10 test queries, their judged documents and 280 others (5 shards of 64)."""
    from conftest import write_subset

    return write_subset(scifact_dir, tmp_path_factory.mktemp("scifact300"), n_queries=10, n_distractors=280)


@pytest.fixture(scope="module")
def corpus(subset):
    return load_dataset(subset).corpus


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(str(tiny_model), device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def reference(encoder, corpus, tmp_path_factory):
    """Shards written in one uninterrupted run, and the embeddings of the whole corpus at once."""
    directory = tmp_path_factory.mktemp("reference") / "shards"
    encode_shards(encoder, corpus, directory, shard_size=SHARD, show_progress=False)
    return directory, encoder.encode_documents(corpus.texts(), show_progress=False)


class Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_encode_resumes_and_yields_the_same_index(encoder, corpus, reference, tmp_path, monkeypatch):
    directory = tmp_path / "shards"
    calls = []
    real = encoder.encode_documents

    def dies_on_third_shard(texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise Interrupt("killed")
        return real(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode_documents", dies_on_third_shard)
    with pytest.raises(Interrupt):
        encode_shards(encoder, corpus, directory, shard_size=SHARD, show_progress=False)
    assert finished_shards(directory) == {0, 1}
    assert not list(directory.glob(".*.tmp"))  # nothing half-written
    with pytest.raises(DensekitError, match="3 of 5 shard"):
        list(iter_shards(directory))
    resumed = []

    def counts(texts, **kwargs):
        resumed.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode_documents", counts)
    plan = encode_shards(encoder, corpus, directory, shard_size=SHARD, show_progress=False)
    assert resumed == [SHARD, SHARD, len(corpus) - 4 * SHARD]  # only shards 2, 3 and 4 were encoded
    assert plan.shards == 5 and finished_shards(directory) == set(range(5))

    ref_dir, whole = reference
    for (ids, part), (ref_ids, ref_part) in zip(iter_shards(directory), iter_shards(ref_dir), strict=True):
        assert ids == ref_ids
        np.testing.assert_array_equal(part, ref_part)
    queries = whole[:12]
    resumed_index = build_from_shards(directory, "IVF8,Flat", train_sample=200)
    reference_index = build_from_shards(ref_dir, "IVF8,Flat", train_sample=200)
    assert resumed_index.ids == reference_index.ids == corpus.ids
    assert resumed_index.search(queries, 10)[1] == reference_index.search(queries, 10)[1]


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,PQ4x4", "Flat"])
def test_index_built_by_adding_shards_equals_one_shot(factory, corpus, reference):
    directory, whole = reference
    sharded = build_from_shards(directory, factory, train_sample=150, seed=7)
    one_shot = DenseIndex.build(whole, corpus.ids, factory, train_sample=150, seed=7)
    scores, found = sharded.search(whole[:20], 10)
    assert found == one_shot.search(whole[:20], 10)[1]
    np.testing.assert_allclose(scores, one_shot.search(whole[:20], 10)[0], rtol=1e-5, atol=1e-5)
    assert sharded.train_sample == (None if factory == "Flat" else 150)


def test_changed_plan_and_damaged_shard_are_refused(encoder, corpus, reference, tmp_path):
    directory, _ = reference
    with pytest.raises(DensekitError, match=r"Number of training points \(100\) should be at least"):
        build_from_shards(directory, "IVF8,PQ4", train_sample=100)
    with pytest.raises(DensekitError, match="shard_size differ"):
        encode_shards(encoder, corpus, directory, shard_size=SHARD * 2, show_progress=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    npy = copy / "shard-00001.npy"
    npy.write_bytes(npy.read_bytes()[:-64])
    with pytest.raises(IntegrityError, match="shard-00001.npy: sha256 differs"):
        build_from_shards(copy)
    with pytest.raises(DensekitError, match="not a shard directory"):
        read_plan(tmp_path)


@pytest.mark.slow  # two torch processes start (about a minute on 2 busy cores); CI runs it
def test_torchrun_two_processes_encode_and_merge(tiny_model, subset, corpus, reference, tmp_path):
    """`densekit index encode` under torchrun: ranks 0 and 1 encode alternate shards, rank 0 builds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DENSEKIT_QUIET": "1"}
    out, idx = tmp_path / "shards", tmp_path / "idx"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "densekit.cli",
        "index",
        "encode",
        str(subset),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--shard-size",
        str(SHARD),
        "--device",
        "cpu",
        "--batch-size",
        "32",
        "--index",
        str(idx),
        "--factory",
        "IVF8,Flat",
        "--train-sample",
        "200",
        "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # only rank 0 prints
    assert report["world_size"] == 2 and report["shards"] == 5 and report["index"] == str(idx)
    ref_dir, whole = reference
    for (ids, part), (ref_ids, ref_part) in zip(iter_shards(out), iter_shards(ref_dir), strict=True):
        assert ids == ref_ids
        np.testing.assert_allclose(part, ref_part, atol=1e-6)
    merged = DenseIndex.load(idx)
    expected = build_from_shards(ref_dir, "IVF8,Flat", train_sample=200)
    assert merged.ids == corpus.ids and merged.factory == "IVF8,Flat"
    assert merged.search(whole[:12], 10)[1] == expected.search(whole[:12], 10)[1]
