"""DenseRetriever over a real FAISS index; the embedding cache; reopening a saved index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from densekit.data import load_dataset
from densekit.errors import DensekitError
from densekit.index.cache import encode_corpus, load_cached
from densekit.retriever.base import Retriever
from densekit.retriever.dense import DenseRetriever
from densekit.retriever.encoder import Encoder


@pytest.fixture(scope="module")
def small(scifact_small: Path):
    return load_dataset(scifact_small, split="test")


def test_search_matches_brute_force(tiny_model: Path, small) -> None:
    encoder = Encoder(tiny_model, device="cpu")
    retriever = DenseRetriever.build(encoder, small.corpus, cache=False)
    assert isinstance(retriever, Retriever)
    run = retriever.search(small.queries, k=7)
    docs = encoder.encode_documents(small.corpus.texts())
    queries = encoder.encode_queries(list(small.queries.values()))
    expected = np.argsort(-(queries @ docs.T), axis=1)[:, :7]
    for row, query_id in zip(expected, small.queries, strict=True):
        assert [d for d, _ in run[query_id]] == [small.corpus.ids[j] for j in row]


def test_cache_reuses_embeddings(tiny_model: Path, small, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = Encoder(tiny_model, device="cpu")
    first = np.array(encode_corpus(encoder, small.corpus))
    calls = []
    monkeypatch.setattr(encoder, "encode_documents", lambda *a, **k: calls.append(1))
    second = encode_corpus(encoder, small.corpus)
    assert calls == [] and isinstance(second, np.memmap)
    assert np.array_equal(first, second)
    # A different encoding config is a different cache entry.
    other = Encoder(tiny_model, device="cpu", pooling="cls")
    assert not np.allclose(first, encode_corpus(other, small.corpus))


def test_damaged_cache_entry_is_refused(tiny_model: Path, small) -> None:
    from densekit.errors import IntegrityError
    from densekit.index.cache import cache_key, cache_root

    encoder = Encoder(tiny_model, device="cpu", max_length=64)
    encode_corpus(encoder, small.corpus)
    key = cache_key(encoder.fingerprint(), small.corpus.fingerprint())
    array_path = cache_root() / key / "embeddings.npy"
    data = bytearray(array_path.read_bytes())
    data[-1] ^= 0xFF
    array_path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged"):  # every read verifies, no flag needed
        load_cached(key)
    with pytest.raises(IntegrityError, match="--no-cache"):
        encode_corpus(encoder, small.corpus)


def test_saved_index_reopens_with_its_encoder(tiny_model: Path, small, tmp_path: Path) -> None:
    retriever = DenseRetriever.build(Encoder(tiny_model, device="cpu", query_prompt="q: "), small.corpus)
    retriever.save(tmp_path / "idx")
    again = DenseRetriever.load(tmp_path / "idx", device="cpu")
    assert again.encoder.config.query_prompt == "q: "
    assert again.search(small.queries, 10) == retriever.search(small.queries, 10)


def test_dimension_mismatch_is_an_error(tiny_model: Path, minilm: Encoder, small) -> None:
    index = DenseRetriever.build(Encoder(tiny_model, device="cpu"), small.corpus).index
    with pytest.raises(DensekitError, match="dimension 384 differs"):
        DenseRetriever(minilm, index)


def test_python_save_keeps_texts_like_the_cli(tiny_model: Path, small, tmp_path: Path) -> None:
    from densekit.index.docstore import DocStore

    retriever = DenseRetriever.build(Encoder(tiny_model, device="cpu"), small.corpus)
    retriever.save(tmp_path / "with")
    store = DocStore.open(tmp_path / "with")
    assert store is not None and len(store) == len(small.corpus)
    doc_id = small.corpus.ids[3]
    assert store.get(doc_id).text == small.corpus.document(doc_id)["text"]
    retriever.save(tmp_path / "without", store_texts=False)
    assert DocStore.open(tmp_path / "without") is None
