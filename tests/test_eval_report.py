"""`densekit eval` results files and README tables: per-query metrics, configuration, versions, timings,
and `--format markdown` showing the same numbers as the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from densekit.data import load_dataset
from densekit.eval.report import (
    eval_markdown,
    markdown_table,
    mteb_markdown,
    reproduction_markdown,
    retriever_label,
)


@pytest.fixture(scope="module")
def results(tiny_model: Path, scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """`densekit eval --model tiny --out results.json --run-out run.trec` on the SciFact subset."""
    work = tmp_path_factory.mktemp("eval_report")
    code, _, _ = run_cli(
        [
            "eval",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--metrics",
            "ndcg@10,recall@100,mrr@10",
            "--out",
            str(work / "results.json"),
            "--run-out",
            str(work / "run.trec"),
            "--quiet",
        ]
    )
    assert code == 0
    return json.loads((work / "results.json").read_text()), work


def test_results_json_has_per_query_metrics_config_versions_and_timings(results, tiny_model, scifact_small):
    saved, _ = results
    ds = load_dataset(scifact_small, split="test")
    assert saved["dataset"] == ds.name and saved["split"] == "test" and saved["queries"] == 20
    assert set(saved["metrics"]) == {"ndcg@10", "recall@100", "mrr@10"}
    # Per-query values: one entry per judged query, and the aggregate is their mean.
    assert set(saved["per_query"]) == set(ds.qrels)
    for name, mean in saved["metrics"].items():
        values = [saved["per_query"][q][name] for q in saved["per_query"]]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert np.mean(values) == pytest.approx(mean, abs=1e-12)
    config = saved["config"]
    assert config["model"] == str(tiny_model) and config["factory"] == "Flat" and config["depth"] == 1000
    assert config["pooling"] == "mean" and config["ignore_identical_ids"] is False
    assert set(saved["timings_s"]) == {"index", "search", "evaluate"}
    assert all(v >= 0 for v in saved["timings_s"].values())
    versions = saved["versions"]
    import faiss
    import torch
    import transformers

    import densekit

    assert versions["densekit"] == densekit.__version__ and versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__ and versions["faiss"] == faiss.__version__
    assert versions["python"].count(".") == 2


def test_markdown_table_shows_the_json_numbers(results, scifact_small, capsys, monkeypatch):
    saved, work = results
    code, out, _ = run_cli(
        [
            "eval",
            str(scifact_small),
            "--run",
            str(work / "run.trec"),
            "--metrics",
            "ndcg@10,recall@100,mrr@10",
            "--format",
            "markdown",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0
    header, rule, row = out.strip().splitlines()
    assert header == "| model / run | dataset | split | queries | ndcg@10 | recall@100 | mrr@10 |"
    assert rule == "|---|---|---|---:|---:|---:|---:|"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == str(work / "run.trec") and cells[1:4] == [saved["dataset"], "test", "20"]
    # The run file reproduces the model's evaluation, and the table shows it to four decimals.
    assert cells[4:] == [f"{saved['metrics'][m]:.4f}" for m in ("ndcg@10", "recall@100", "mrr@10")]


def test_format_json_equals_json_flag_and_bad_format_is_an_error(results, scifact_small, capsys, monkeypatch):
    _, work = results
    base = ["eval", str(scifact_small), "--run", str(work / "run.trec")]
    code, by_format, _ = run_cli([*base, "--format", "json"], capsys, monkeypatch)
    code2, by_flag, _ = run_cli([*base, "--json"], capsys, monkeypatch)
    assert code == code2 == 0
    a, b = json.loads(by_format), json.loads(by_flag)
    for report in (a, b):
        report.pop("timings_s")
    assert a == b
    code, out, err = run_cli([*base, "--format", "html"], capsys, monkeypatch)
    assert code == 2 and out == "" and "--format must be one of text, markdown, json" in err


def test_markdown_helpers_escape_pipes_and_mark_missing_values():
    table = markdown_table(["name", "score"], [["a|b", 0.5], ["c", None]], [False, True])
    assert table.splitlines() == ["| name | score |", "|---|---:|", "| a\\|b | 0.5000 |", "| c | - |"]
    grade = {
        "retriever": "bm25-flat",
        "dataset": "scifact",
        "metric": "ndcg@10",
        "expected": 0.6789,
        "measured": None,
        "difference": None,
        "tolerance": 0.001,
        "grade": "SKIPPED",
        "reason": "no Java",
        "source": "Pyserini",
    }
    assert "| SKIPPED (no Java) |" in reproduction_markdown([grade])
    summary = {
        "model": "m",
        "tasks": [{"task": "SciFact", "split": "test", "main_score": 0.64508, "scores": {"ndcg_at_10": 0.64508}}],
    }
    assert mteb_markdown(summary).splitlines()[-1] == "| m | SciFact | test | 0.6451 | 0.6451 | - |"
    report = {"dataset": "d", "split": None, "queries": 3, "metrics": {"ndcg@10": 0.25}, "config": {}}
    assert eval_markdown(report, label="x").splitlines()[-1] == "| x | d | - | 3 | 0.2500 |"


def test_rows_are_labelled_by_what_was_evaluated():
    bm25 = {"bm25_backend": "lucene", "k1": 0.9, "b": 0.4}
    dense = {"model": "all-MiniLM-L6-v2", "factory": "Flat"}
    assert retriever_label(bm25) == "BM25 lucene"
    assert retriever_label(dense) == "all-MiniLM-L6-v2"
    assert retriever_label({"index": "scifact.idx"}) == "scifact.idx"
    hybrid = {"bm25": bm25, "dense": dense, "fusion": "rrf", "rrf_k": 60}
    assert retriever_label(hybrid) == "BM25 lucene + all-MiniLM-L6-v2 (rrf)"
    reranked = {"first_stage": hybrid, "reranker": "ce"}
    assert retriever_label(reranked) == "BM25 lucene + all-MiniLM-L6-v2 (rrf) + rerank ce"
