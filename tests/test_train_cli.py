"""`densekit train` end to end with a tiny model: GIST loss with a cached guide, evaluation during
training, the saved folder loading in sentence-transformers and `densekit eval`, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli


def test_train_gist_evaluates_and_saves_a_sentence_transformers_folder(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--model",
            str(tiny_model),
            "--negatives",
            str(train_negatives),
            "--corpus",
            str(scifact_small),
            "--output",
            str(out),
            "--loss",
            "gist",
            "--guide",
            str(tiny_model),
            "--negatives-per-query",
            "2",
            "--batch-size",
            "4",
            "--max-steps",
            "3",
            "--max-length",
            "48",
            "--lr",
            "1e-3",
            "--eval-data",
            str(scifact_small),
            "--eval-split",
            "test",
            "--eval-steps",
            "2",
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["finished"] and summary["steps"] == 3 and summary["examples_this_run"] == 12
    assert summary["config"]["loss"]["name"] == "gist"
    assert (out / "guide_cache" / "state.safetensors").is_file()  # guide embeddings computed once, kept beside the run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["lr"] > 0 for r in steps)
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 3] and 0 <= evals[0]["eval"]["ndcg@10"] <= 1
    assert summary["best"]["step"] in (2, 3) and (out / "best" / "modules.json").is_file()

    model = out / "model"
    from sentence_transformers import SentenceTransformer

    from densekit.retriever.encoder import Encoder

    texts = ["Vitamin C deficiency causes scurvy.", "Coffee intake and heart disease in a cohort."]
    ours = Encoder(str(model), device="cpu").encode_documents(texts)
    theirs = SentenceTransformer(str(model), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    start = Encoder(str(tiny_model), device="cpu").encode_documents(texts)
    assert not np.allclose(ours, start, atol=1e-4)  # the saved weights are the trained ones

    code, stdout, stderr = run_cli(
        ["eval", str(scifact_small), "--model", str(model), "--json", "--quiet"], capsys, monkeypatch
    )
    assert code == 0, stderr
    assert 0 <= json.loads(stdout)["metrics"]["ndcg@10"] <= 1


def test_train_bad_input_exits_2_naming_the_file(
    tiny_model: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "q1", "query": "x", "positives": ["nope"], "negatives": []}\n')
    base = ["train", "--model", str(tiny_model), "--corpus", str(scifact_small), "--output", str(tmp_path / "o")]
    code, _, stderr = run_cli([*base, "--negatives", str(bad)], capsys, monkeypatch)
    assert code == 2 and str(bad) in stderr and "'nope' is not in the corpus" in stderr
    code, _, stderr = run_cli([*base, "--negatives", str(tmp_path / "absent.jsonl")], capsys, monkeypatch)
    assert code == 2 and "absent.jsonl" in stderr
    code, _, stderr = run_cli([*base, "--negatives", str(bad), "--loss", "gist"], capsys, monkeypatch)
    assert code == 2 and "guide" in stderr
    code, _, stderr = run_cli([*base, "--negatives", str(bad), "--forward-batch-size", "-1"], capsys, monkeypatch)
    assert code == 2 and "forward_batch_size must be >= 0, got -1" in stderr
    code, _, stderr = run_cli([*base, "--negatives", str(bad), "--positives", "some"], capsys, monkeypatch)
    assert code == 2 and "unknown positive sampling 'some'; expected one of all, one" in stderr
    code, _, _ = run_cli([*base, "--negatives", str(bad), "--no-such-option"], capsys, monkeypatch)
    assert code != 0
    assert not (tmp_path / "o" / "model").exists()


def test_guide_cache_reuses_corpus_embeddings(
    tiny_model: Path,
    train_negatives: Path,
    scifact_small: Path,
    tmp_path: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the guide's corpus embeddings cached, GIST's guide cache takes its document rows from there."""
    # An empty cache of our own: other tests of the session may already have cached this corpus.
    monkeypatch.setenv("DENSEKIT_HOME", str(tmp_path / "home"))
    from densekit.data import load_dataset
    from densekit.index.cache import encode_corpus
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.train.data import read_training_examples
    from densekit.retriever.train.trainer import GuideCache

    corpus = load_dataset(scifact_small).corpus
    examples = read_training_examples(train_negatives, corpus, 2)
    fresh = GuideCache.build(str(tiny_model), examples, corpus, "cpu", tmp_path / "fresh.pt")
    assert "corpus embedding cache" not in capsys.readouterr().err
    encode_corpus(Encoder(str(tiny_model), device="cpu"), corpus, show_progress=False)
    reused = GuideCache.build(str(tiny_model), examples, corpus, "cpu", tmp_path / "reused.pt")
    assert "corpus embedding cache" in capsys.readouterr().err
    assert reused.doc_rows == fresh.doc_rows and len(reused.doc_rows) > 10
    assert np.allclose(reused.documents.numpy(), fresh.documents.numpy(), atol=1e-5)
    ids = [e.query_id for e in examples[:3]]
    docs = [e.positive_id for e in examples[:3]]
    assert np.allclose(reused.scores(ids, docs).numpy(), fresh.scores(ids, docs).numpy(), atol=1e-5)


def test_a_folder_saved_by_sentence_transformers_6_loads_in_densekit(tiny_model: Path, tmp_path: Path) -> None:
    """sentence-transformers 6 saves `"pooling_mode": "mean"` and keeps max_seq_length in the tokenizer
    config; benchmarks/train.py evaluates such a folder with densekit's harness."""
    from sentence_transformers import SentenceTransformer

    from densekit.retriever.encoder import Encoder

    st_model = SentenceTransformer(str(tiny_model), device="cpu")
    st_model.max_seq_length = 96
    st_model.save(str(tmp_path / "st"))
    encoder = Encoder(str(tmp_path / "st"), device="cpu")
    assert encoder.config.pooling == "mean" and encoder.config.normalize and encoder.config.max_length == 96
    texts = ["Vitamin C deficiency causes scurvy.", "a longer document " * 40]
    np.testing.assert_allclose(encoder.encode_documents(texts), st_model.encode(texts), atol=1e-5)
