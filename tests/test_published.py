"""Reproductions of published numbers on the full datasets (slow: CI runs them).

all-MiniLM-L6-v2, MTEB's published nDCG@10 on SciFact: 0.6451 (tolerance 0.002), through the real CLI
(`densekit eval DATA --model M --split test --json`) on the shared BEIR data. NFCorpus (0.3159) is
reproduced by tests/test_reproduce.py::test_reproduce_minilm_and_bm25 through the same retriever and
metrics; here it held a worker for two minutes, waiting for the shared embedding cache entry that
the other test was encoding.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

PUBLISHED = [("scifact", 0.6451)]


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "expected"), PUBLISHED)
def test_minilm_reproduces_mteb(dataset, expected, beir_root, capsys, monkeypatch) -> None:
    code, out, err = run_cli(
        ["eval", dataset, "--model", "all-MiniLM-L6-v2", "--split", "test", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    result = json.loads(out)
    assert abs(result["metrics"]["ndcg@10"] - expected) <= 0.002, result["metrics"]
