"""MTEB adapter: local BEIR tasks agree with densekit eval, mteb prompt rules, results, offline errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_subprocess

pytest.importorskip("mteb")

from densekit.data import load_dataset  # noqa: E402
from densekit.errors import DensekitError  # noqa: E402
from densekit.eval.harness import evaluate_retriever  # noqa: E402
from densekit.eval.mteb import local_retrieval_task, make_encoder_class, mteb_task, run_mteb  # noqa: E402
from densekit.retriever.dense import DenseRetriever  # noqa: E402
from densekit.retriever.encoder import Encoder  # noqa: E402


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model: Path) -> Encoder:
    return Encoder(tiny_model, device="cpu")


def test_local_task_agrees_with_densekit_eval_and_writes_mteb_results(tiny_encoder, scifact_small, tmp_path):
    ds = load_dataset(scifact_small, split="test")
    report = evaluate_retriever(
        DenseRetriever.build(tiny_encoder, ds.corpus, show_progress=False), ds, ["ndcg@10", "recall@100"]
    )
    summary = run_mteb(tiny_encoder, [str(scifact_small)], out=tmp_path / "mteb")
    (task,) = summary.tasks
    assert task.task == scifact_small.name and task.split == "test"
    # mteb rounds its scores to 5 decimals
    assert abs(task.scores["ndcg_at_10"] - report.result.metrics["ndcg@10"]) < 1e-4
    assert abs(task.scores["recall_at_100"] - report.result.metrics["recall@100"]) < 1e-4
    assert summary.cache_hits == 1  # the corpus came from densekit's embedding cache
    files = list((tmp_path / "mteb" / "results").rglob("*.json"))
    result_file = next(p for p in files if p.name == f"{scifact_small.name}.json")
    assert (result_file.parent / "model_meta.json").is_file()
    from mteb.results import TaskResult

    loaded = TaskResult.from_disk(result_file)
    assert loaded.scores["test"][0]["ndcg_at_10"] == pytest.approx(task.scores["ndcg_at_10"], abs=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]  # no staging


def test_beir_folder_named_like_an_mteb_task_takes_its_metadata(scifact_dir):
    task = local_retrieval_task(load_dataset(scifact_dir, split="test"))
    assert task.metadata.name == "SciFact"
    assert task.metadata.prompt == {
        "query": "Given a scientific claim, retrieve documents that support or refute the claim"
    }
    assert task.metadata.dataset["path"] == str(scifact_dir)
    assert task.metadata.dataset["revision"].startswith("local-")
    split = task.dataset["default"]["test"]
    assert len(split["queries"]) == 300 and len(split["corpus"]) == 5183


def test_prompts_follow_mteb_priority_and_are_applied(tiny_model, scifact_small):
    import mteb
    from mteb.types import PromptType

    encoder = Encoder(tiny_model, device="cpu", query_prompt="base query: ")
    model_class = make_encoder_class()
    prompts = {"SciFact-query": "scifact query: ", "Retrieval": "retrieval: "}
    model = model_class(encoder, prompts=prompts)
    scifact = mteb.get_task("SciFact").metadata
    nfcorpus = mteb.get_task("NFCorpus").metadata
    assert model.prompt_for(scifact, PromptType.query) == "scifact query: "  # task-name + type wins
    assert model.prompt_for(scifact, PromptType.document) == "retrieval: "  # then task type
    assert model.prompt_for(nfcorpus, PromptType.query) == "retrieval: "
    only_base = model_class(encoder)
    assert only_base.prompt_for(scifact, PromptType.query) == "base query: "  # the encoder's own prompt
    assert only_base.prompt_for(scifact, PromptType.document) == ""
    # the chosen prompt is what gets encoded
    from torch.utils.data import DataLoader

    texts = ["Vitamin D deficiency increases the risk of MS.", "Aspirin lowers fever."]
    loader = DataLoader([{"text": t} for t in texts], batch_size=1)
    got = model.encode(
        loader, task_metadata=scifact, hf_split="test", hf_subset="default", prompt_type=PromptType.query
    )
    want = encoder.encode(texts, prompt="scifact query: ", show_progress=False)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(want, encoder.encode(texts, show_progress=False), atol=1e-3)


def test_unknown_prompt_key_and_unknown_task_are_errors(tiny_encoder, scifact_small):
    with pytest.raises(DensekitError, match="prompt key 'SciFactt-query'"):
        run_mteb(tiny_encoder, [str(scifact_small)], prompts={"SciFactt-query": "x"})
    with pytest.raises(DensekitError, match="neither a BEIR folder"):
        run_mteb(tiny_encoder, ["NoSuchTaskAnywhere"])


def test_mteb_task_without_cached_data_is_a_clear_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(DensekitError, match="not in the local Hugging Face datasets cache"):
        mteb_task("SciFact")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.slow
def test_mteb_cli_agrees_with_densekit_eval_on_scifact(scifact_dir, tmp_path):
    """`densekit mteb scifact` and `densekit eval scifact` with all-MiniLM-L6-v2: ndcg@10 within 1e-4."""
    env = {"DENSEKIT_DATA": str(scifact_dir.parent)}
    evaluated = run_cli_subprocess(
        ["eval", "scifact", "--model", "all-MiniLM-L6-v2", "--metrics", "ndcg@10", "--json"], env, check=True
    )
    mteb_out = run_cli_subprocess(
        ["mteb", "scifact", "--model", "all-MiniLM-L6-v2", "--out", str(tmp_path / "mteb"), "--json"], env, check=True
    )
    ndcg_eval = json.loads(evaluated.stdout)["metrics"]["ndcg@10"]
    summary = json.loads(mteb_out.stdout)
    (task,) = summary["tasks"]
    assert task["task"] == "SciFact"
    assert abs(task["scores"]["ndcg_at_10"] - ndcg_eval) < 1e-4
    assert summary["corpus_cache_hits"] == 1
    assert abs(ndcg_eval - 0.6451) < 0.001  # and both reproduce MTEB's published number
