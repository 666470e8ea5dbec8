"""The Milvus backend on Milvus Lite: built from a corpus and exported from FAISS, searched like FAISS
(FLAT gives FAISS Flat's hits and scores), updated by id, filtered inside Milvus, reached through the
local file and through Milvus Lite's gRPC server on 127.0.0.1 (the network path a cluster uses), and a
kill -9 during ingestion followed by --resume leaves each id exactly once (issue 17)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from densekit.errors import DensekitError, IntegrityError  # noqa: E402

# `--json` keys of the two Milvus commands (tests/data/cli_json_keys.json holds the README's commands only).
KEYS = {
    "index build --backend milvus": [
        "already_there",
        "collection",
        "count",
        "dataset",
        "dim",
        "documents",
        "index",
        "index_type",
        "model",
        "seconds",
        "uri",
        "vectors_per_second",
        "written",
    ],
    "index export --to milvus": [
        "already_there",
        "collection",
        "count",
        "from",
        "index",
        "index_type",
        "seconds",
        "uri",
        "vectors_from",
        "vectors_per_second",
        "written",
    ],
}
from densekit.index.milvus_filter import milvus_filter_expression  # noqa: E402


@pytest.fixture(scope="module")
def built(tiny_model, scifact_small, tmp_path_factory):
    """A FAISS Flat index and a Milvus FLAT index of the same corpus with the tiny model (via the CLI)."""
    work = tmp_path_factory.mktemp("milvus")
    faiss_dir, milvus_dir, db = work / "flat.idx", work / "flat-milvus.idx", work / "lite.db"
    code, _, _ = run_cli(["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(faiss_dir)])
    assert code == 0
    code, _, _ = run_cli(
        [
            "index",
            "build",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--backend",
            "milvus",
            "--uri",
            str(db),
            "--out",
            str(milvus_dir),
            "--quiet",
        ]
    )
    assert code == 0
    return {"faiss": faiss_dir, "milvus": milvus_dir, "db": db, "work": work}


def test_flat_search_equals_faiss_flat(built, scifact_small) -> None:
    from densekit.data import load_dataset
    from densekit.retriever.compose import open_index

    queries = load_dataset(scifact_small).queries
    faiss_run = open_index(built["faiss"]).search(dict(queries.items()), k=10)
    milvus = open_index(built["milvus"])
    assert milvus.index_kind == "milvus" and len(milvus.index) == len(open_index(built["faiss"]).index)
    milvus_run = milvus.search(dict(queries.items()), k=10)
    for query_id, hits in faiss_run.items():
        other = milvus_run[query_id]
        assert [d for d, _ in other] == [d for d, _ in hits]
        np.testing.assert_allclose([s for _, s in other], [s for _, s in hits], atol=1e-5)
    from densekit.retriever.compose import RetrieverSpec, build_retriever

    hybrid, config = build_retriever(
        RetrieverSpec(index=built["milvus"], bm25=True, backend="bm25s"), load_dataset(scifact_small).corpus
    )
    fused = hybrid.search(dict(queries.items()), k=10)
    assert config["dense"]["backend"] == "milvus" and all(len(hits) == 10 for hits in fused.values())
    manifest = json.loads((built["milvus"] / "manifest.json").read_text())
    assert manifest["kind"] == "milvus" and manifest["index_type"] == "FLAT"
    assert manifest["model"]["fingerprint"] and "token" not in json.dumps(manifest)


def test_filter_expressions() -> None:
    assert milvus_filter_expression({}) == ""
    assert milvus_filter_expression({"source": "faq"}) == 'metadata["source"] == "faq"'
    assert (
        milvus_filter_expression({"lang": ["en", 'd"e'], "year": 2024, "ok": True})
        == '(metadata["lang"] == "en" or metadata["lang"] == "d\\"e") and metadata["year"] == 2024 '
        'and metadata["ok"] == true'
    )
    assert milvus_filter_expression({"lang": []}) == "false"
    assert milvus_filter_expression({"doc_id": ["a", "b"], "title": "T"}) == 'id in ["a", "b"] and title == "T"'
    with pytest.raises(DensekitError, match="compare strings"):
        milvus_filter_expression({"x": None})


def test_updates_by_id(built) -> None:
    from densekit.index.docstore import StoredDocument
    from densekit.retriever.compose import open_index

    index = open_index(built["milvus"]).index
    first = index.client.query(index.collection, limit=2, output_fields=["id", "vector"])
    ids = [row["id"] for row in first]
    vectors = np.array([row["vector"] for row in first], dtype=np.float32)
    total = len(index)
    with pytest.raises(DensekitError, match="already in the index"):
        index.add(vectors, ids)
    assert index.update(vectors[::-1], ids, [StoredDocument(i, "new", "text") for i in ids]) == (2, 0)
    scores, hits = index.search(vectors[:1], k=1)
    assert hits[0] == [ids[1]] and scores[0, 0] == pytest.approx(float(vectors[0] @ vectors[0]), abs=1e-4)
    assert index.documents(ids[:1])[ids[1] if False else ids[0]]["title"] == "new"
    assert index.remove([ids[0], "no-such-id"], missing_ok=True) == 1
    with pytest.raises(DensekitError, match="not in the index"):
        index.remove([ids[0]])
    assert len(index) == total - 1 and index.existing(ids) == {ids[1]}
    index.add(vectors[:1], ids[:1])
    assert len(index) == total


def test_search_parameters_map_to_milvus(built) -> None:
    from densekit.index.milvus import MilvusIndex, milvus_search_params
    from densekit.retriever.compose import SearchOptions, open_index

    retriever = open_index(built["milvus"])
    with pytest.raises(DensekitError, match="does not apply to a Milvus FLAT"):
        SearchOptions(ef_search=64).apply(retriever)
    with pytest.raises(DensekitError, match="apply to FAISS"):
        SearchOptions(k_factor=4).apply(retriever)
    assert milvus_search_params("HNSW", {"efSearch": 64}) == {"ef": 64}
    assert milvus_search_params("IVF_FLAT", {"nprobe": 8}) == {"nprobe": 8}
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hnsw = MilvusIndex.create(str(built["db"]), "hnsw_params", 16, preset="hnsw", n_expected=300)
    hnsw.add(vectors, [f"v{i}" for i in range(300)])
    hnsw.flush()
    hnsw.set_search_params({"efSearch": 8})
    with pytest.raises(DensekitError, match="nprobe"):
        hnsw.set_search_params({"nprobe": 8})
    _, ids = hnsw.search(vectors[:5], k=10)  # ef is raised to k
    assert [row[0] for row in ids] == [f"v{i}" for i in range(5)] and all(len(row) == 10 for row in ids)
    with pytest.raises(DensekitError, match="no Milvus counterpart"):
        MilvusIndex.create(str(built["db"]), "bad", 16, preset="ivf-pqr")
    with pytest.raises(DensekitError, match="Milvus Lite cannot build IVF_PQ"):
        MilvusIndex.create(str(built["db"]), "pq", 16, preset="ivf-pq", n_expected=300)


def test_filters_run_inside_milvus(built, tiny_model) -> None:
    """Only matching documents come back, and the filter is Milvus's: k hits even when the matches are
    far down the unfiltered ranking."""
    from densekit.index.docstore import StoredDocument
    from densekit.index.milvus import MilvusIndex
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.milvus import MilvusRetriever

    encoder = Encoder(str(tiny_model), device="cpu")
    docs = [
        StoredDocument(
            f"d{i}", "", f"document number {i} about topic {i % 7}", {"source": ["faq", "web"][i % 2], "n": i}
        )
        for i in range(60)
    ]
    index = MilvusIndex.create(str(built["db"]), "filtered", encoder.dim, model=encoder.describe())
    index.add(encoder.encode_documents([d.content for d in docs], show_progress=False), [d.id for d in docs], docs)
    retriever = MilvusRetriever(encoder, index)
    run = retriever.search({"q": "topic 3"}, k=5, filter={"source": "faq"})
    assert len(run["q"]) == 5 and all(int(d[1:]) % 2 == 0 for d, _ in run["q"])
    run = retriever.search({"q": "topic 3"}, k=5, filter={"n": [7, 11, 59], "source": "web"})
    assert sorted(d for d, _ in run["q"]) == ["d11", "d59", "d7"]
    assert retriever.search({"q": "topic"}, k=5, filter={"source": []})["q"] == []
    assert sorted(d for d, _ in retriever.search({"q": "topic"}, k=5, filter={"doc_id": ["d3", "d8"]})["q"]) == [
        "d3",
        "d8",
    ]

    # The LangChain face hands its filter to Milvus: one search of depth k, whose hits all match.
    from densekit.index.docstore import DocStore
    from densekit.integrations.langchain import DensekitRetriever

    calls = []
    search = retriever.search

    def counted(queries, k, **kwargs):
        calls.append((k, kwargs.get("filter")))
        return search(queries, k, **kwargs)

    retriever.search = counted
    face = DensekitRetriever(retriever=retriever, docstore=DocStore.from_documents(docs), k=4)
    found = face.invoke("topic 3", filter={"source": "web", "n": [1, 3, 5, 57]})
    assert sorted(d.id for d in found) == ["d1", "d3", "d5", "d57"]
    assert all(d.metadata["source"] == "web" for d in found)
    assert calls == [(4, {"source": "web", "n": [1, 3, 5, 57]})]


def test_kill_during_ingestion_then_resume_leaves_each_id_once(built, tmp_path) -> None:
    """kill -9 after the 3rd batch of an export (the ingestion `index build --backend milvus` uses too), then
    --resume: every id exactly once, and the rerun says how many it found already there."""
    from densekit.index.milvus import MilvusIndex

    db, out = tmp_path / "kill.db", tmp_path / "kill.idx"
    args = ["index", "export", str(built["faiss"]), "--to", "milvus", "--uri", str(db), "--out", str(out)]
    args += ["--insert-batch", "40", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DENSEKIT_FAULT": "milvus-batch:3"}
    killed = subprocess.run([sys.executable, "-m", "densekit.cli", *args], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "densekit.cli", *args, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    info = json.loads(resumed.stdout)
    ids = json.loads((built["faiss"] / "ids.json").read_text())
    assert info["already_there"] == 120 and info["written"] == len(ids) - 120
    index = MilvusIndex.load(out)
    rows = index.client.query(index.collection, filter="", output_fields=["id"], limit=16384)
    assert len(index) == len(ids) and sorted(r["id"] for r in rows) == sorted(ids)


def test_resume_reports_what_was_there(tiny_model, scifact_small, built, capsys, monkeypatch, tmp_path) -> None:
    args = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--backend", "milvus"]
    args += ["--uri", str(built["db"]), "--collection", "flat_milvus", "--out", str(tmp_path / "again.idx")]
    code, _, err = run_cli([*args, "--json"], capsys, monkeypatch)
    assert code == 2 and "--resume" in err
    code, _, err = run_cli([*args, "--json", "--resume", "--factory", "hnsw"], capsys, monkeypatch)
    assert code == 2 and "has a FLAT index, not HNSW" in err
    code, out, _ = run_cli([*args, "--json", "--resume"], capsys, monkeypatch)
    info = json.loads(out)
    assert sorted(info) == KEYS["index build --backend milvus"]
    assert code == 0 and info["written"] == 0 and info["already_there"] == info["count"] == info["documents"]


def test_export_through_the_grpc_server(built, scifact_small, tmp_path, capsys, monkeypatch) -> None:
    """A FAISS index moved into a Milvus Lite server reached at http://127.0.0.1:PORT, as a cluster is."""
    import socket

    from densekit.data import load_dataset
    from densekit.retriever.compose import open_index

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "server"), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "listening" in server.stdout.readline()
        monkeypatch.setenv("DENSEKIT_MILVUS_TOKEN", "root:Milvus")
        out = tmp_path / "exported.idx"
        args = ["index", "export", str(built["faiss"]), "--to", "milvus", "--uri", f"http://127.0.0.1:{port}"]
        code, stdout, _ = run_cli([*args, "--collection", "exported", "--out", str(out), "--json"], capsys, monkeypatch)
        info = json.loads(stdout)
        assert sorted(info) == KEYS["index export --to milvus"]
        assert code == 0 and info["vectors_from"] == "embedding cache" and info["count"] == info["written"]
        assert "root:Milvus" not in (out / "manifest.json").read_text()
        queries = dict(load_dataset(scifact_small).queries.items())
        expected = open_index(built["faiss"]).search(queries, k=10)
        got = open_index(out).search(queries, k=10)
        assert {q: [d for d, _ in h] for q, h in got.items()} == {q: [d for d, _ in h] for q, h in expected.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_missing_collection_and_missing_extra(built, tmp_path, monkeypatch) -> None:
    from densekit.index.milvus import MilvusIndex, connect
    from densekit.retriever.milvus_indexing import MilvusOptions

    manifest = json.loads((built["milvus"] / "manifest.json").read_text())
    copy = tmp_path / "gone.idx"
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps({**manifest, "collection": "gone", "files": {}}))
    with pytest.raises(IntegrityError, match="no collection 'gone'"):
        MilvusIndex.load(copy)
    connect(manifest["uri"])
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(DensekitError, match=r"pip install 'densekit\[milvus\]'"):
        MilvusOptions(uri=str(tmp_path / "x.db")).validate()
    with pytest.raises(DensekitError, match=r"densekit\[milvus\]"):
        MilvusIndex.load(built["milvus"])


def test_export_a_shard_directory(tiny_model, scifact_small, built, tmp_path) -> None:
    """Shards written by `index encode` (one process here, torchrun ranks on several nodes alike) feed Milvus."""
    from densekit.data import load_dataset
    from densekit.index.docstore import DocStore
    from densekit.index.shards import encode_shards
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.milvus_indexing import MilvusOptions, export_to_milvus

    corpus = load_dataset(scifact_small).corpus
    encode_shards(Encoder(str(tiny_model), device="cpu"), corpus, tmp_path / "shards", 64, 0, 1)
    options = MilvusOptions(uri=str(built["db"]), collection="from_shards", insert_batch=50)
    info = export_to_milvus(tmp_path / "shards", options, tmp_path / "sh.idx", texts=scifact_small, show_progress=False)
    assert info["vectors_from"] == "shards" and info["count"] == len(corpus)
    assert len(DocStore.open(tmp_path / "sh.idx")) == len(corpus)
    queries = dict(load_dataset(scifact_small).queries.items())
    from densekit.retriever.compose import open_index

    expected = open_index(built["faiss"]).search(queries, k=5)
    got = open_index(tmp_path / "sh.idx").search(queries, k=5)
    assert {q: [d for d, _ in h] for q, h in got.items()} == {q: [d for d, _ in h] for q, h in expected.items()}
