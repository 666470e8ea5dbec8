"""Encoder: identical to sentence-transformers for all-MiniLM-L6-v2; pooling; save/load round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from densekit.data import load_dataset
from densekit.errors import DensekitError
from densekit.retriever.encoder import Encoder, pool


@pytest.fixture(scope="module")
def scifact_texts(scifact_small: Path) -> list[str]:
    ds = load_dataset(scifact_small, split="test")
    # Mixed lengths: short queries, long abstracts (truncated at 256 tokens), an empty string.
    return list(ds.queries.values())[:12] + ds.corpus.texts()[:36] + [""]


def test_minilm_matches_sentence_transformers(minilm: Encoder, minilm_folder: Path, scifact_texts: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_folder), device="cpu")
    expected = reference.encode(scifact_texts, batch_size=16, convert_to_numpy=True)
    ours = minilm.encode_documents(scifact_texts, batch_size=16)
    assert ours.dtype == np.float32 and ours.shape == (len(scifact_texts), 384)
    assert np.abs(ours - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_output_order_does_not_depend_on_batching(minilm: Encoder, scifact_texts: list[str]) -> None:
    a = minilm.encode(scifact_texts, batch_size=3)
    b = minilm.encode(scifact_texts, batch_size=64, block_size=7)
    assert np.abs(a - b).max() < 1e-5


def test_minilm_config_read_from_sentence_transformers_folder(minilm: Encoder) -> None:
    assert minilm.config.pooling == "mean"
    assert minilm.config.normalize is True
    assert minilm.config.max_length == 256


def test_pooling_modes_on_handmade_states() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(pool(hidden, mask, "cls"), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(pool(hidden, mask, "last"), torch.tensor([[3.0, 2.0]]))
    left_padded = torch.tensor([[0, 1, 1]])
    assert torch.allclose(pool(hidden, left_padded, "last"), torch.tensor([[9.0, 9.0]]))


def test_prompts_are_prepended(tiny_model: Path) -> None:
    plain = Encoder(tiny_model, device="cpu")
    prompted = Encoder(tiny_model, device="cpu", query_prompt="query: ")
    text = ["vitamin c"]
    assert np.allclose(prompted.encode_queries(text), plain.encode(["query: vitamin c"]), atol=1e-6)
    assert np.allclose(prompted.encode_documents(text), plain.encode(text), atol=1e-6)


def test_saved_folder_loads_in_sentence_transformers_and_densekit(tiny_model: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    enc = Encoder(tiny_model, device="cpu", pooling="cls", query_prompt="q: ")
    saved = enc.save(tmp_path / "saved")
    texts = ["a short text", "another, longer text about iron deficiency"]
    again = Encoder(saved, device="cpu")
    assert again.config.pooling == "cls" and again.config.query_prompt == "q: "
    assert np.abs(again.encode(texts) - enc.encode(texts)).max() < 1e-6
    st = SentenceTransformer(str(saved), device="cpu")
    assert np.abs(st.encode(texts) - enc.encode(texts)).max() < 1e-5


def test_bad_options_are_errors(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(DensekitError, match="unknown pooling"):
        Encoder(tiny_model, device="cpu", pooling="max")
    with pytest.raises(DensekitError, match="unknown dtype"):
        Encoder(tiny_model, device="cpu", dtype="float8")
    with pytest.raises(DensekitError, match="not found"):
        Encoder("no-such-model-anywhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DensekitError, match="not a model folder"):
        Encoder(tmp_path / "empty", device="cpu")


def test_name_with_org_prefix_resolves_to_packaged_weights(minilm_folder: Path) -> None:
    from densekit.retriever.models import resolve_model

    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_model("all-MiniLM-L6-v2")


def test_weights_load_only_when_something_is_encoded(tiny_model: Path) -> None:
    """A warm run (every embedding cached) never loads the torch weights (issue 23)."""
    from densekit.data import Corpus
    from densekit.index.cache import encode_corpus

    corpus = Corpus(["a", "b"], ["", ""], ["first text", "second text"])
    first = Encoder(tiny_model, device="cpu")
    assert first._model is None and first.dim > 0  # the dimension comes from the config alone
    stored = np.array(encode_corpus(first, corpus, show_progress=False))
    assert first._model is not None
    warm = Encoder(tiny_model, device="cpu")
    assert np.array_equal(np.array(encode_corpus(warm, corpus, show_progress=False)), stored)
    assert warm._model is None


def test_a_corpus_being_encoded_elsewhere_is_waited_for_not_encoded_twice(tiny_model: Path, monkeypatch) -> None:
    """While another process holds a cache key's encoding lock, encode_corpus waits and then reads that
    process's entry (parallel evaluations and test workers encode each corpus once)."""
    import threading
    import time

    from densekit.data import Corpus
    from densekit.index.cache import cache_key, cache_root, encode_corpus, store
    from densekit.io import write_lock

    corpus = Corpus(["x", "y"], ["", ""], ["a text being encoded elsewhere", "and its neighbour"])
    encoder = Encoder(tiny_model, device="cpu")
    key = cache_key(encoder.fingerprint(), corpus.fingerprint())
    calls: list[int] = []
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, **kw: calls.append(len(texts)))
    theirs = np.full((2, encoder.dim), 0.5, dtype=np.float32)
    got: list[np.ndarray] = []
    with write_lock(cache_root() / f"{key}.encoding"):  # "the other process", encoding
        waiter = threading.Thread(
            target=lambda: got.append(np.array(encode_corpus(encoder, corpus, show_progress=False)))
        )
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not got  # waiting on the lock, not encoding
        store(key, theirs, {"model": encoder.model_id, "documents": 2, "corpus": "", "cut": 0})
    waiter.join(timeout=30)
    assert calls == [] and np.array_equal(got[0], theirs)
