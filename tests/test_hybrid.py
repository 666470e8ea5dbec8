"""Hybrid fusion: RRF and score interpolation against hand computation, a HybridRetriever over a real
BM25 and a real (tiny) dense retriever, and the CLI's hybrid evaluation."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from densekit.data import Run, load_dataset
from densekit.errors import DensekitError
from densekit.retriever.base import Retriever
from densekit.retriever.bm25 import BM25Retriever
from densekit.retriever.dense import DenseRetriever
from densekit.retriever.encoder import Encoder
from densekit.retriever.hybrid import HybridRetriever, interpolate, normalize, reciprocal_rank_fusion

A = Run({"q": [("d1", 10.0), ("d2", 8.0), ("d3", 2.0)]})
B = Run({"q": [("d3", 0.9), ("d4", 0.5)], "only_b": [("d9", 0.1)]})


def test_rrf_matches_hand_computation() -> None:
    fused = reciprocal_rank_fusion([A, B], k=60)
    expected = {"d1": 1 / 61, "d2": 1 / 62, "d3": 1 / 63 + 1 / 61, "d4": 1 / 62}
    assert [d for d, _ in fused["q"]] == ["d3", "d1", "d2", "d4"]  # d2 and d4 tie: broken by id
    assert dict(fused["q"]) == pytest.approx(expected)
    assert fused["only_b"] == [("d9", pytest.approx(1 / 61))]
    weighted = reciprocal_rank_fusion([A, B], k=0, weights=[3, 1], depth=2)
    assert weighted["q"] == [("d1", pytest.approx(3.0)), ("d3", pytest.approx(3 / 3 + 1 / 1))]


def test_interpolation_minmax_and_zscore() -> None:
    fused = interpolate([A, B], weights=[0.5, 0.5], normalization="minmax")
    # A: d1 1, d2 0.75, d3 0; B: d3 1, d4 0; missing documents get the run's minimum (0).
    assert dict(fused["q"]) == pytest.approx({"d1": 0.5, "d2": 0.375, "d3": 0.5, "d4": 0.0})
    assert [d for d, _ in fused["q"]] == ["d1", "d3", "d2", "d4"]
    z = interpolate([A, B], normalization="zscore")
    za = normalize(A["q"], "zscore")
    assert za["d1"] == pytest.approx(
        (10 - 20 / 3) / ((((10 - 20 / 3) ** 2 + (8 - 20 / 3) ** 2 + (2 - 20 / 3) ** 2) / 3) ** 0.5)
    )
    assert dict(z["q"])["d1"] == pytest.approx(za["d1"] + -1.0)  # d1 missing from B: B's minimum z (-1)
    assert normalize([("x", 3.0), ("y", 3.0)], "minmax") == {"x": 1.0, "y": 1.0}
    assert normalize([("x", 3.0), ("y", 3.0)], "zscore") == {"x": 0.0, "y": 0.0}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: reciprocal_rank_fusion([A, B], weights=[1]), "1 fusion weights for 2 runs"),
        (lambda: interpolate([A, B], weights=[1, -1]), "non-negative"),
        (lambda: interpolate([A], normalization="l2"), "unknown score normalisation 'l2'"),
        (lambda: reciprocal_rank_fusion([]), "at least one run"),
        (lambda: HybridRetriever([object(), object()]), "does not keep the Retriever protocol"),
        (lambda: HybridRetriever([], fusion="rrf"), "at least two retrievers"),
    ],
)
def test_bad_fusion_settings_are_errors(call, message) -> None:
    with pytest.raises(DensekitError, match=message):
        call()


@pytest.fixture(scope="module")
def small_retrievers(scifact_small, tiny_model):
    ds = load_dataset(scifact_small, split="test")
    bm25 = BM25Retriever.build(ds.corpus, backend="bm25s")
    dense = DenseRetriever.build(Encoder(str(tiny_model), device="cpu"), ds.corpus, cache=False)
    return ds, bm25, dense


@pytest.mark.parametrize("fusion", ["rrf", "interpolate"])
def test_hybrid_retriever_fuses_its_retrievers_runs(small_retrievers, fusion) -> None:
    ds, bm25, dense = small_retrievers
    hybrid = HybridRetriever([bm25, dense], fusion=fusion, weights=[2, 1], normalization="zscore", depth=50)
    assert isinstance(hybrid, Retriever)
    run = hybrid.search(ds.queries, 10)
    runs = [bm25.search(ds.queries, 50), dense.search(ds.queries, 50)]
    expected = (
        reciprocal_rank_fusion(runs, 60, [2, 1], 10) if fusion == "rrf" else interpolate(runs, [2, 1], "zscore", 10)
    )
    assert run == expected and all(len(hits) == 10 for hits in run.values())


def test_cli_hybrid_eval(scifact_small, tiny_model, monkeypatch, capsys) -> None:
    code, out, err = run_cli(
        [
            "eval",
            str(scifact_small),
            "--model",
            str(tiny_model),
            "--bm25",
            "--backend",
            "bm25s",
            "--fusion",
            "interpolate",
            "--normalization",
            "minmax",
            "--weights",
            "0.7,0.3",
            "--no-cache",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    result = json.loads(out)
    config = result["config"]
    assert config["fusion"] == "interpolate" and config["weights"] == [0.7, 0.3]
    assert config["bm25"]["bm25_backend"] == "bm25s" and config["dense"]["model"] == str(tiny_model)
    # BM25 carries this subset (the tiny encoder is random): the 0.7-weighted fusion stays useful.
    assert result["metrics"]["ndcg@10"] > 0.4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bm25", "--fusion", "rrf"], "fuse two retrievers"),
        (["--model", "m", "--fusion", "max"], "--fusion must be one of rrf, interpolate"),
        (["--backend", "bm25s", "--model", "m"], "add --bm25"),
        (["--run", "x.trec", "--bm25"], "--run evaluates a run file"),
    ],
)
def test_cli_rejects_inconsistent_options(args, message, scifact_small, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["eval", str(scifact_small), *args], capsys, monkeypatch)
    assert code == 2 and message in err
