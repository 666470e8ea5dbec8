"""Milvus index directories edited like FAISS ones (`densekit index update | remove`: upsert and delete
by id in the collection, docs.jsonl and the manifest kept in step, encoding through the embedding
cache), and torchrun ranks encoding their shards straight into one Milvus collection through Milvus
Lite's gRPC server (issue 17, items 3 and 6). Real Milvus Lite, the tiny random BERT."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


@pytest.fixture(scope="module")
def milvus_dir(tiny_model, scifact_small, tmp_path_factory):
    work = tmp_path_factory.mktemp("milvus_edits")
    out = work / "edit.idx"
    args = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--backend", "milvus"]
    code, _, _ = run_cli([*args, "--uri", str(work / "edits.db"), "--out", str(out), "--quiet"])
    assert code == 0
    return out


def _write_corpus(path, docs: dict[str, str]) -> None:
    path.write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs.items()))


def test_update_and_remove_keep_collection_and_texts_in_step(milvus_dir, tiny_model, tmp_path, capsys, monkeypatch):
    from densekit.data import read_corpus
    from densekit.index.cache import cache_key, load_cached
    from densekit.index.docstore import DocStore
    from densekit.index.milvus import MilvusIndex
    from densekit.retriever.encoder import Encoder

    before = json.loads((milvus_dir / "manifest.json").read_text())["count"]
    old_id = DocStore.open(milvus_dir).ids()[0]
    changes = tmp_path / "changes.jsonl"
    _write_corpus(changes, {old_id: "scurvy is caused by a lack of vitamin C", "new-doc": "a brand new passage"})
    code, out, _ = run_cli(["index", "update", str(milvus_dir), str(changes), "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out) == {"index": str(milvus_dir), "replaced": 1, "added": 1}

    encoder = Encoder(str(tiny_model), device="cpu")
    corpus = read_corpus(changes)
    cached = load_cached(cache_key(encoder.fingerprint(), corpus.fingerprint()))
    assert cached is not None  # encoded through the embedding cache
    index = MilvusIndex.load(milvus_dir)  # the manifest (docs.jsonl's sha256) still verifies
    rows = {r["id"]: r for r in index.client.query(index.collection, ids=corpus.ids, output_fields=["vector", "text"])}
    np.testing.assert_allclose(np.array(rows["new-doc"]["vector"]), cached[1], atol=1e-6)
    assert rows[old_id]["text"].startswith("scurvy")
    manifest = json.loads((milvus_dir / "manifest.json").read_text())
    store = DocStore.open(milvus_dir)
    assert manifest["count"] == len(index) == len(store) == before + 1
    assert store.get(old_id).text.startswith("scurvy") and "new-doc" in store

    code, _, err = run_cli(["index", "remove", str(milvus_dir), "new-doc", "no-such-id"], capsys, monkeypatch)
    assert code == 2 and "no-such-id" in err and index.existing(["new-doc"]) == {"new-doc"}  # nothing deleted
    args = ["index", "remove", str(milvus_dir), "new-doc", old_id, "no-such-id", "--missing-ok", "--json"]
    code, out, _ = run_cli(args, capsys, monkeypatch)
    assert code == 0 and json.loads(out)["removed"] == 2
    store = DocStore.open(milvus_dir)
    assert json.loads((milvus_dir / "manifest.json").read_text())["count"] == len(store) == len(index) == before - 1
    assert index.existing(["new-doc", old_id]) == set() and old_id not in store
    hits = index.search(cached[1:], k=3)[1][0]
    assert "new-doc" not in hits


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
