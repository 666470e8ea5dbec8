"""DenseIndex at scale: every factory preset saves, loads (also memory-mapped) and searches the same;
damaged files are refused; search parameters live in the manifest and can be overridden; documents
are removed and updated by id; GPU placement (marked `gpu`, skipped without one).

Real FAISS on small clustered vectors (32-d, a few thousand), so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from densekit.errors import DensekitError, IntegrityError
from densekit.index.dense import DenseIndex, read_manifest
from densekit.index.factory import PRESETS, check_search_params, ivf_lists, resolve
from densekit.index.gpu import GPU_MAX_K, gpu_count, parse_device, place
from densekit.index.synthetic import clustered_vectors

DIM = 32
N = 3000


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """One OpenMP thread: FAISS's spinning workers are slower than one thread on a shared, busy CPU."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, list[str]]:
    vectors = clustered_vectors(N, DIM, clusters=30, seed=1)
    return vectors, [f"doc{i}" for i in range(N)]


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered_vectors(40, DIM, clusters=30, seed=1, stream=1)


def recall_at(k: int, found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def exact(corpus, queries) -> list[list[str]]:
    vectors, ids = corpus
    return DenseIndex.build(vectors, ids, "flat").search(queries, 10)[1]


# -- factories -------------------------------------------------------------------------------------


def test_presets_at_a_million_384d_vectors():
    specs = {name: resolve(name, 1_000_000, 384) for name in PRESETS}
    assert specs["flat"].factory == "Flat" and specs["flat"].train_sample is None
    assert specs["ivf-flat"].factory == "IVF1024,Flat" and specs["ivf-flat"].search_params == {"nprobe": 64}
    assert specs["ivf-pq"].factory == "OPQ96,IVF1024,PQ96" and specs["ivf-pq"].train_sample == 65536
    assert specs["ivf-pqr"].factory == "IVF1024,PQ48+128"  # 176 B of codes + 8 B id: 0.12 of Flat's 1,536 B
    assert specs["ivf-pqr"].search_params == {"nprobe": 64, "k_factor": 16}
    assert specs["hnsw"].factory == "HNSW32" and specs["hnsw"].search_params == {"efSearch": 128}
    assert specs["sq8"].factory == "SQ8" and specs["sq8"].train_sample == 65536
    assert specs["fp16"].factory == "SQfp16" and specs["fp16"].train_sample is None  # nothing to train


def test_raw_factory_strings_and_overrides():
    spec = resolve("OPQ48,IVF4096,PQ48", 1_000_000, 384, train_sample=200_000)
    assert (spec.factory, spec.train_sample, spec.search_params) == ("OPQ48,IVF4096,PQ48", 200_000, {"nprobe": 256})
    assert resolve("ivf-pq", 10_000, 384, nlist=64, pq_bytes=48).factory == "OPQ48,IVF64,PQ48"
    assert resolve("ivf-flat", 500, 8, train_sample=10_000).train_sample == 500  # never more than the corpus
    assert ivf_lists(10) == 16 and ivf_lists(10**12) == 65536
    with pytest.raises(DensekitError, match="invalid FAISS factory string 'IVFx'"):
        resolve("IVFx", 1000, 32)
    with pytest.raises(DensekitError, match="train sample must be positive"):
        resolve("ivf-flat", 1000, 32, train_sample=0)


def test_search_parameter_validation():
    assert check_search_params({"nprobe": 4, "efSearch": None}) == {"nprobe": 4}
    with pytest.raises(DensekitError, match="unknown search parameter 'k_factor_rf'"):
        check_search_params({"k_factor_rf": 4})
    with pytest.raises(DensekitError, match="positive integer"):
        check_search_params({"nprobe": 0})


FACTORIES = [*PRESETS, "IVF32,SQ8", "PCA16,IVF16,Flat"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_save_load_search_identical(factory, corpus, queries, exact, tmp_path):
    vectors, ids = corpus
    index = DenseIndex.build(vectors, ids, factory, train_sample=2500, model={"model": "synthetic"})
    scores, found = index.search(queries, 10)
    lossy = "PQ" in index.factory or "PCA" in index.factory  # codes or fewer dimensions
    floor = 0.2 if factory.startswith("binary") else (0.5 if lossy else 0.8)  # 1 bit a dimension, no rescoring
    assert recall_at(10, found, exact) >= floor
    index.save(tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["factory"] == index.factory and manifest["count"] == N and manifest["dim"] == DIM
    assert manifest["search_params"] == index.search_params
    assert manifest["train_sample"] == (None if factory in ("flat", "hnsw", "fp16", "binary", "binary-hnsw") else 2500)
    for mmap in (False, True):
        loaded = DenseIndex.load(tmp_path / "idx", mmap=mmap)
        again_scores, again = loaded.search(queries, 10)
        assert again == found, f"{factory} mmap={mmap}"
        np.testing.assert_array_equal(again_scores, scores)
        assert loaded.search_params == index.search_params and loaded.factory == index.factory


def test_ivf_pqr_serves_inner_product_scores_through_l2_on_unit_vectors(corpus, queries, exact, tmp_path):
    vectors, ids = corpus
    index = DenseIndex.build(vectors, ids, "ivf-pqr", train_sample=2500)
    assert index.index.metric_type == faiss.METRIC_L2 and index.metric == "ip"
    scores, found = index.search(queries, 10)
    distances, _ = index.index.search(queries, 10)  # FAISS's own L2 distances, same nprobe/k_factor
    np.testing.assert_allclose(scores, ((queries**2).sum(1, keepdims=True) + 1 - distances) / 2, atol=1e-6)
    exact_scores = np.array([[vectors[int(d[3:])] @ q for d in row] for row, q in zip(found, queries, strict=True)])
    assert np.abs(scores - exact_scores).mean() < 0.03  # inner products up to the codes' error
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first, like every ip index
    assert recall_at(10, found, exact) >= 0.5
    one = recall_at(10, index.search(queries, 10, params={"k_factor": 1})[1], exact)
    assert one <= recall_at(10, index.search(queries, 10, params={"k_factor": 64})[1], exact)
    with pytest.raises(DensekitError, match="unit-length vectors; the training sample's row 0 has norm 2.0000"):
        DenseIndex.build(vectors * 2, ids, "ivf-pqr", train_sample=2500)
    with pytest.raises(DensekitError, match="added embeddings' row 1 has norm"):
        index.add(np.vstack([vectors[:1], vectors[1:2] * 1.5]), ["new0", "new1"])
    assert len(index) == N  # nothing half-added
    with pytest.raises(DensekitError, match="IndexIVFPQR cannot remove vectors"):
        index.remove(["doc0"])
    with pytest.raises(DensekitError, match="k_factor=4 does not apply"):
        DenseIndex.build(vectors, ids, "ivf-flat").search(queries, 10, params={"k_factor": 4})


def test_manifest_search_defaults_and_overrides(corpus, queries, exact, tmp_path):
    vectors, ids = corpus
    index = DenseIndex.build(vectors, ids, "ivf-flat", search_params={"nprobe": 1})
    nlist = faiss.extract_index_ivf(index.index).nlist
    assert index.search_params == {"nprobe": 1}
    one_list = recall_at(10, index.search(queries, 10)[1], exact)
    every_list = index.search(queries, 10, params={"nprobe": nlist})[1]
    assert every_list == exact  # visiting every list is exhaustive
    assert one_list < 1.0
    index.save(tmp_path / "idx")
    assert DenseIndex.load(tmp_path / "idx").search(queries, 10)[1] == index.search(queries, 10)[1]
    with pytest.raises(DensekitError, match="efSearch=16 does not apply"):
        index.search(queries, 10, params={"efSearch": 16})
    hnsw = DenseIndex.build(vectors, ids, "hnsw")
    assert recall_at(10, hnsw.search(queries, 10, params={"efSearch": 10})[1], exact) <= recall_at(
        10, hnsw.search(queries, 10, params={"efSearch": 200})[1], exact
    )


def test_training_sample_is_seeded_and_too_small_samples_are_announced(corpus, queries, capfd):
    vectors, ids = corpus
    a = DenseIndex.build(vectors, ids, "IVF64,Flat", train_sample=1000, seed=3)
    b = DenseIndex.build(vectors, ids, "IVF64,Flat", train_sample=1000, seed=3)
    assert a.search(queries, 10)[1] == b.search(queries, 10)[1]
    assert "please provide at least" in capfd.readouterr().err  # 1000 < 39 * 64 training points


def test_incremental_build_equals_one_shot(corpus, queries):
    vectors, ids = corpus
    one_shot = DenseIndex.build(vectors, ids, "IVF16,Flat", train_sample=N)
    incremental = DenseIndex.create(DIM, N, "IVF16,Flat", train_sample=N)
    assert incremental.needs_training
    with pytest.raises(DensekitError, match="not trained yet"):
        incremental.add(vectors[:10], ids[:10])
    incremental.train(vectors)
    for start in range(0, N, 1000):  # e.g. one shard at a time
        incremental.add(vectors[start : start + 1000], ids[start : start + 1000])
    scores, found = incremental.search(queries, 10)
    assert found == one_shot.search(queries, 10)[1]
    np.testing.assert_array_equal(scores, one_shot.search(queries, 10)[0])


def test_exact_rerank_from_memory_mapped_vectors(corpus, queries, exact, tmp_path):
    vectors, ids = corpus
    np.save(tmp_path / "vectors.npy", vectors)
    on_disk = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    index = DenseIndex.build(vectors, ids, "IVF16,PQ4x4", train_sample=2500)  # 2-byte codes: poor alone
    every_list = {"nprobe": 16}
    alone = recall_at(10, index.search(queries, 10, params=every_list)[1], exact)
    reranked = recall_at(10, index.search_reranked(queries, 10, on_disk, 100, every_list)[1], exact)
    assert alone < 0.6 < reranked
    scores, found = index.search_reranked(queries, 10, on_disk, candidates=N, params=every_list)
    assert found == exact  # every vector re-scored exactly: Flat's answer
    np.testing.assert_allclose(scores, DenseIndex.build(vectors, ids, "flat").search(queries, 10)[0], rtol=1e-5)
    with pytest.raises(DensekitError, match="label order"):
        index.search_reranked(queries, 10, on_disk[:10])
    index.use_reranking(on_disk, candidates=100)  # search() re-ranks from now on
    assert (
        index.search(queries, 10, params=every_list)[1]
        == index.search_reranked(queries, 10, on_disk, 100, every_list)[1]
    )
    index.remove(["doc0"])
    with pytest.raises(DensekitError, match="removed or updated since the index was built"):
        index.use_reranking(np.load(tmp_path / "vectors.npy", mmap_mode="r")[1:])


# -- integrity -------------------------------------------------------------------------------------


@pytest.fixture
def saved(corpus, tmp_path):
    vectors, ids = corpus
    DenseIndex.build(vectors, ids, "ivf-flat").save(tmp_path / "idx")
    return tmp_path / "idx"


def test_truncated_index_file_is_refused(saved):
    path = saved / "index.faiss"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IntegrityError, match=r"index\.faiss: sha256 .* altered or truncated"):
        DenseIndex.load(saved)
    with pytest.raises(IntegrityError, match=r"index\.faiss: FAISS cannot read it"):
        DenseIndex.load(saved, verify=False)


def test_altered_index_file_is_refused(saved):
    path = saved / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size, one byte of a stored vector changed
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="altered or truncated"):
        DenseIndex.load(saved)


def test_ids_and_manifest_disagreeing_are_refused(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    ids = json.loads((copy / "ids.json").read_text())
    (copy / "ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(IntegrityError, match="ids.json: sha256"):
        DenseIndex.load(copy)
    with pytest.raises(IntegrityError, match=f"manifest says {N} vectors .* {N - 1} ids"):
        DenseIndex.load(copy, verify=False)
    manifest = json.loads((saved / "manifest.json").read_text())
    (saved / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IntegrityError, match="format_version 99"):
        DenseIndex.load(saved)


# -- remove and update by id ---------------------------------------------------------------------

# IVF-PQ without the OPQ rotation: removal works on the inverted lists alike, and OPQ training is slow.
EDITABLE = ["flat", "ivf-flat", "IVF16,PQ8", "hnsw", "sq8", "fp16"]


@pytest.mark.parametrize("factory", EDITABLE)
def test_remove_and_update_by_id(factory, corpus, queries, tmp_path):
    vectors, ids = corpus
    index = DenseIndex.build(vectors, list(ids), factory, train_sample=2500)
    params = {"nprobe": 16} if "IVF" in index.factory else {}
    _, before = index.search(queries, 10, params=params)
    gone = sorted({hit for row in before for hit in row[:3]})  # documents that certainly were hits
    assert index.remove(gone) == len(gone)
    assert len(index) == index.index.ntotal == N - len(gone)
    _, after = index.search(queries, 10, params=params)
    assert not {hit for row in after for hit in row} & set(gone)
    # Labels stay compact: every id still resolves to its own vector.
    keep = [i for i, doc in enumerate(ids) if doc not in set(gone)]
    probe = keep[:: len(keep) // 20]
    _, self_hits = index.search(vectors[probe], 1, params=params)
    if factory in ("flat", "ivf-flat", "fp16", "hnsw"):
        assert [row[0] for row in self_hits] == [ids[i] for i in probe]
    with pytest.raises(DensekitError, match="not in the index"):
        index.remove(["no-such-doc"])
    assert index.remove(["no-such-doc"], missing_ok=True) == 0
    # Update: an existing id gets a new vector (a query's own), a new id is inserted.
    replaced, added = index.update(np.vstack([queries[:1], queries[1:2]]), [ids[keep[0]], "new-doc"])
    assert (replaced, added) == (1, 1)
    _, top = index.search(queries[:2], 1, params=params)
    assert top == [[ids[keep[0]]], ["new-doc"]]
    with pytest.raises(DensekitError, match="already in the index"):
        index.add(queries[:1], ["new-doc"])
    index.save(tmp_path / "idx")
    reloaded = DenseIndex.load(tmp_path / "idx")
    assert reloaded.search(queries, 10, params=params)[1] == index.search(queries, 10, params=params)[1]


def test_memory_mapped_index_is_read_only(saved, queries):
    index = DenseIndex.load(saved, mmap=True)
    assert index.read_only
    with pytest.raises(DensekitError, match="memory-mapped"):
        index.remove(["doc0"])


# -- placement -------------------------------------------------------------------------------------


def test_device_strings_without_gpu(corpus, capfd):
    vectors, ids = corpus
    assert parse_device("cpu") is None
    with pytest.raises(DensekitError, match="bad device"):
        parse_device("tpu")
    if gpu_count() == 0:
        flat = faiss.IndexFlatIP(DIM)
        assert place(flat, "auto") == (flat, "cpu")
        assert "no GPU visible to FAISS" in capfd.readouterr().err
        with pytest.raises(DensekitError, match="FAISS sees no GPU"):
            DenseIndex.build(vectors, ids, "flat", device="gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("factory", ["flat", "ivf-flat", "ivf-pq"])
@pytest.mark.parametrize("float16", [False, True])
def test_gpu_and_back_keeps_results(factory, float16, corpus, queries):
    if gpu_count() == 0:
        pytest.skip("faiss-gpu is not installed (the `gpu` extra)")
    vectors, ids = corpus
    index = DenseIndex.build(vectors, ids, factory, train_sample=2500)
    cpu_scores, cpu_ids = index.search(queries, 10)
    index.to_device("gpu:0", float16=float16)
    assert index.device == "gpu:0"
    gpu_scores, gpu_ids = index.search(queries, 10)
    if not float16:
        assert recall_at(10, gpu_ids, cpu_ids) >= 0.95
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
    index.to_device("cpu")
    assert index.search(queries, 10)[1] == cpu_ids


@pytest.mark.gpu
def test_gpu_top_k_beyond_the_limit_searches_a_cpu_copy(corpus, queries, capfd):
    if gpu_count() == 0:
        pytest.skip("faiss-gpu is not installed (the `gpu` extra)")
    vectors, ids = corpus
    index = DenseIndex.build(vectors, ids, "flat", device="gpu:0")
    _, hits = index.search(queries[:2], GPU_MAX_K + 1)
    assert len(hits[0]) == GPU_MAX_K + 1
    assert "exceeds FAISS's GPU limit" in capfd.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("shard", [False, True])
def test_every_gpu_sharded_or_replicated(shard, corpus, queries):
    if gpu_count() < 2:
        pytest.skip("needs two GPUs")
    vectors, ids = corpus
    cpu = DenseIndex.build(vectors, ids, "ivf-flat").search(queries, 10)[1]
    index = DenseIndex.build(vectors, ids, "ivf-flat", device="gpu", shard=shard)
    assert ("sharded" if shard else "replicated") in index.device
    assert recall_at(10, index.search(queries, 10)[1], cpu) >= 0.95
