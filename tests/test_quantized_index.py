"""Embedding quantisation in the index (issue 18 item 3): the binary preset (sign bits, FAISS IndexBinaryFlat,
Hamming search) against a brute-force numpy Hamming search, int8 (SQ8) recall, rescoring of the top
multiplier x k against float32 vectors kept memory-mapped beside the index (exact inner-product order),
save/load/remove/shards, and `index build --factory binary --rescore-multiplier` -> `search` -> `index info`
through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from densekit.errors import DensekitError
from densekit.index.binary import binarize
from densekit.index.dense import DenseIndex
from densekit.index.manifest import read_manifest
from densekit.index.synthetic import clustered_vectors

N, DIM = 2000, 64


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], np.ndarray]:
    vectors = clustered_vectors(N, DIM, clusters=20, seed=3)
    queries = clustered_vectors(30, DIM, clusters=20, seed=3, stream=1)
    return vectors, [f"d{i}" for i in range(N)], queries


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[str]]:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return [{f"d{j}" for j in row} for row in order]


def recall(found: list[list[str]], exact: list[set[str]]) -> float:
    return float(np.mean([len(set(f) & e) / len(e) for f, e in zip(found, exact, strict=True)]))


def test_binary_search_equals_brute_force_hamming(data) -> None:
    vectors, ids, queries = data
    index = DenseIndex.build(vectors, ids, "binary")
    assert index.factory == "BFlat" and index.index_bytes() < vectors.nbytes / 16
    scores, found = index.search(queries, 10)
    bits_q = np.unpackbits(binarize(queries), axis=1).astype(bool)
    bits_d = np.unpackbits(binarize(vectors), axis=1).astype(bool)
    hamming = (bits_q[:, None, :] != bits_d[None, :, :]).sum(-1)
    for row, (row_scores, row_ids) in enumerate(zip(scores, found, strict=True)):
        expected = np.sort(hamming[row])[:10]
        got = np.array([hamming[row, int(doc[1:])] for doc in row_ids])
        assert np.array_equal(got, expected)  # the same distances (ties may pick other documents)
        assert np.allclose(row_scores, 1 - 2 * expected / DIM)  # score = +-1 sign agreement / d


def test_rescoring_gives_exact_inner_product_order(data, tmp_path: Path) -> None:
    vectors, ids, queries = data
    np.save(tmp_path / "vectors.npy", vectors)
    on_disk = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    index = DenseIndex.build(vectors, ids, "binary")
    _, labels = index.search_labels(queries, 40)  # the candidates rescoring sees at multiplier 4, k 10
    index.use_reranking(on_disk, multiplier=4)
    scores, found = index.search(queries, 10)
    for row, (row_scores, row_ids) in enumerate(zip(scores, found, strict=True)):
        exact = vectors[labels[row]] @ queries[row]
        order = np.argsort(-exact, kind="stable")[:10]
        assert row_ids == [ids[j] for j in labels[row][order]]
        assert np.allclose(row_scores, exact[order], atol=1e-6)
    bits_only = [[ids[j] for j in row] for row in index.search_labels(queries, 10)[1]]
    exact_ids = exact_top(vectors, queries, 10)
    assert recall(found, exact_ids) >= 0.8 and recall(found, exact_ids) > recall(bits_only, exact_ids) + 0.2
    with pytest.raises(DensekitError, match="rescore-multiplier must be positive"):
        index.use_reranking(on_disk, multiplier=0)


def test_int8_recall_and_rescoring(data) -> None:
    vectors, ids, queries = data
    index = DenseIndex.build(vectors, ids, "int8")
    assert index.factory == "SQ8" and index.index_bytes() < vectors.nbytes / 3.9
    exact = exact_top(vectors, queries, 10)
    assert recall(index.search(queries, 10)[1], exact) >= 0.9
    index.use_reranking(vectors, multiplier=4)
    assert recall(index.search(queries, 10)[1], exact) >= 0.99


def test_saved_binary_index_keeps_its_vectors_and_rescores_when_loaded(data, tmp_path: Path) -> None:
    vectors, ids, queries = data
    index = DenseIndex.build(vectors, ids, "binary")
    index.use_reranking(vectors, multiplier=5)
    expected_scores, expected = index.search(queries, 10)
    index.save(tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["rescore"] == {"file": "vectors.npy", "candidates": 100, "multiplier": 5}
    assert "vectors.npy" in manifest["files"]
    for mmap in (False, True):
        loaded = DenseIndex.load(tmp_path / "idx", mmap=mmap)
        assert isinstance(loaded._rerank[0], np.memmap)  # float32 vectors stay on disk
        scores, found = loaded.search(queries, 10)
        assert found == expected and np.allclose(scores, expected_scores)
    loaded = DenseIndex.load(tmp_path / "idx")
    assert loaded.remove(["d0", "d1"]) == 2 and len(loaded) == N - 2
    loaded.save(tmp_path / "idx")  # the vectors no longer follow the labels: saved without rescoring
    again = DenseIndex.load(tmp_path / "idx")
    assert again._rerank is None and read_manifest(tmp_path / "idx")["rescore"] is None
    assert "d0" not in again.search(queries[:1], 5)[1][0]


def test_binary_needs_whole_bytes_and_inner_product() -> None:
    with pytest.raises(DensekitError, match="multiple of 8"):
        DenseIndex.create(12, 100, "binary")
    with pytest.raises(DensekitError, match="use --metric ip"):
        DenseIndex.create(16, 100, "binary", metric="l2")
    index = DenseIndex.build(np.eye(16, dtype=np.float32), [str(i) for i in range(16)], "binary")
    with pytest.raises(DensekitError, match="nprobe=4 does not apply"):
        index.search(np.eye(16, dtype=np.float32)[:2], 3, params={"nprobe": 4})
    with pytest.raises(RuntimeError, match="sign bits"):  # LangChain's MMR then embeds again, announced
        index.index.reconstruct_batch(np.array([0]))
    from densekit.index.milvus_export import is_exact

    assert not is_exact("BFlat") and not is_exact("BHNSW32")  # Milvus export wants --vectors or the cache


def test_binary_from_shards_rescores_against_the_shards(data, tmp_path: Path) -> None:
    from densekit.index.shards import ShardPlan, _start_plan, _write_shard, build_from_shards

    vectors, ids, queries = data
    plan = ShardPlan("synthetic", "synthetic", N, 700, DIM)
    _start_plan(tmp_path / "shards", plan)
    for shard in range(plan.shards):
        rows = plan.rows(shard)
        _write_shard(tmp_path / "shards", shard, ids[rows.start : rows.stop], vectors[rows.start : rows.stop])
    built = build_from_shards(tmp_path / "shards", factory="binary", rescore_multiplier=4)
    direct = DenseIndex.build(vectors, ids, "binary")
    direct.use_reranking(vectors, multiplier=4)
    assert built.search(queries, 10)[1] == direct.search(queries, 10)[1]


def test_cli_binary_build_search_info_round_trip(
    tiny_model: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "binary.idx"
    build = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(out), "--json"]
    code, _, err = run_cli([*build, "--factory", "binary", "--rescore-multiplier", "4"], capsys, monkeypatch)
    assert code == 0, err
    code, stdout, err = run_cli(["index", "info", str(out), "--json"], capsys, monkeypatch)
    info = json.loads(stdout)
    assert code == 0, err
    assert info["factory"] == "BFlat" and info["faiss_classes"] == ["IndexBinaryFlat"] and info["bits"] == 32
    assert info["fraction_of_flat"] < 1 / 16 and info["rescore"]["multiplier"] == 4

    flat = tmp_path / "flat.idx"
    code, _, err = run_cli([*build[:-2], str(flat)], capsys, monkeypatch)
    assert code == 0, err

    def hits(index: Path, *extra: str, k: int = 5) -> list[tuple[str, float]]:
        query = "vitamin d and the immune system"
        code, stdout, err = run_cli(["search", str(index), query, "-k", str(k), "--json", *extra], capsys, monkeypatch)
        assert code == 0, err
        return [(h["doc_id"], h["score"]) for h in json.loads(stdout)["hits"]]

    exact = dict(hits(flat, k=10_000))
    rescored = hits(out)  # 4 x 5 = 20 candidates from the sign bits, rescored: Flat's scores, in order
    assert [s for _, s in rescored] == pytest.approx(sorted((exact[d] for d, _ in rescored), reverse=True), abs=1e-5)
    everything = hits(out, "--rescore-multiplier", "10000")  # every document rescored: Flat's ranking
    assert [d for d, _ in everything] == [d for d, _ in hits(flat)]
    code, _, err = run_cli(["search", str(flat), "q", "--rescore-multiplier", "2"], capsys, monkeypatch)
    assert code == 2 and "needs float32 vectors" in err
    code, _, err = run_cli([*build[:-1], "--factory", "binary", "--rescore-multiplier", "0"], capsys, monkeypatch)
    assert code == 2 and "--rescore-multiplier must be positive" in err


def test_binary_hnsw_searches_with_ef_search_and_rebuilds_on_remove(data, tmp_path: Path) -> None:
    vectors, ids, queries = data
    flat = DenseIndex.build(vectors, ids, "binary")
    graph = DenseIndex.build(vectors, ids, "binary-hnsw")
    assert graph.factory == "BHNSW32" and graph.search_params == {"efSearch": 128}
    wide = graph.search(queries, 10, params={"efSearch": 512})[0]
    assert np.allclose(wide, flat.search(queries, 10)[0])  # a wide graph search finds the same distances
    graph.use_reranking(vectors, multiplier=10)
    assert recall(graph.search(queries, 10)[1], exact_top(vectors, queries, 10)) >= 0.8
    graph.save(tmp_path / "g")
    loaded = DenseIndex.load(tmp_path / "g", mmap=True)
    assert loaded.search(queries, 10)[1] == graph.search(queries, 10)[1]
    loaded = DenseIndex.load(tmp_path / "g")
    assert loaded.remove(["d3", "d4"]) == 2 and loaded.ids[3] == "d5" and loaded.index.ntotal == N - 2
    with pytest.raises(DensekitError, match="added or removed since rescoring was set up"):
        loaded.search(queries, 10)
    loaded.use_reranking(None)
    scores, found = loaded.search(vectors[5:6], 1, params={"efSearch": 512})
    assert found[0] == ["d5"] and scores[0, 0] == pytest.approx(1.0)  # labels renumbered with the ids
