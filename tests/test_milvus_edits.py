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


@pytest.mark.slow  # torchrun (2 processes) and a Milvus Lite server: 14 to 30 s on 2 busy cores
def test_torchrun_ranks_write_their_shards_into_one_collection(tiny_model, scifact_small, tmp_path):
    """`index encode --backend milvus --resume` under torchrun (gloo, CPU) through Milvus Lite's gRPC server
    (a Lite file opens in one process only), into a collection an interrupted run left with 100 rows
    spread over both ranks' shards: each rank skips what is there and writes the rest, rank 0 saves the
    directory; each id exactly once, search as the single-process FAISS Flat build."""
    from densekit.data import load_dataset
    from densekit.index.cache import encode_corpus
    from densekit.index.docstore import DocStore
    from densekit.index.milvus import MilvusIndex
    from densekit.retriever.compose import open_index
    from densekit.retriever.encoder import Encoder

    corpus = load_dataset(scifact_small).corpus
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "server"), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "listening" in server.stdout.readline()
        uri, shards, idx = f"http://127.0.0.1:{port}", tmp_path / "shards", tmp_path / "ranks.idx"
        encoder = Encoder(str(tiny_model), device="cpu")
        before = MilvusIndex.create(uri, "ranks", encoder.dim, model=encoder.describe(), token="root:Milvus")
        rows = list(range(0, 50)) + list(range(64, 114))  # parts of shard 0 (rank 0) and shard 1 (rank 1)
        vectors = encode_corpus(encoder, corpus, show_progress=False)[rows]
        docs = list(DocStore.from_corpus(corpus))
        before.write(vectors, [corpus.ids[i] for i in rows], [docs[i] for i in rows], upsert=False)

        args = ["index", "encode", str(scifact_small), "--model", str(tiny_model), "--out", str(shards)]
        args += ["--shard-size", "64", "--device", "cpu", "--backend", "milvus", "--uri", uri, "--collection", "ranks"]
        args += ["--index", str(idx), "--insert-batch", "40", "--resume", "--json"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DENSEKIT_QUIET": "1", "DENSEKIT_MILVUS_TOKEN": "root:Milvus"}
        done = subprocess.run(
            [*torchrun, "-m", "densekit.cli", *args], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)  # only rank 0 prints
        assert report["world_size"] == 2 and report["shards"] == 4 and report["count"] == len(corpus)
        assert report["already_there"] == 100 and report["written"] == len(corpus) - 100
        index = MilvusIndex.load(idx)
        found = index.client.query(index.collection, filter="", output_fields=["id"], limit=16384)
        assert sorted(r["id"] for r in found) == sorted(corpus.ids)  # every id exactly once

        flat = tmp_path / "flat.idx"
        assert run_cli(["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(flat)])[0] == 0
        queries = dict(load_dataset(scifact_small).queries.items())
        expected, got = open_index(flat).search(queries, k=10), open_index(idx).search(queries, k=10)
        for query_id, hits in expected.items():
            assert [d for d, _ in got[query_id]] == [d for d, _ in hits]
            np.testing.assert_allclose([s for _, s in got[query_id]], [s for _, s in hits], atol=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_torchrun_refuses_a_milvus_lite_file(tiny_model, scifact_small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["index", "encode", str(scifact_small), "--model", str(tiny_model), "--out", str(tmp_path / "s")]
    args += ["--backend", "milvus", "--uri", str(tmp_path / "x.db"), "--index", str(tmp_path / "x.idx")]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "one process only" in err and not (tmp_path / "s").exists()
    monkeypatch.delenv("WORLD_SIZE")
    code, _, err = run_cli([*args[:-6], "--uri", str(tmp_path / "x.db")], capsys, monkeypatch)
    assert code == 2 and "apply to --backend milvus" in err
