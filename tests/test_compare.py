"""Paired comparison: t-test equals scipy, randomisation test vs exact enumeration, counts, plot, CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from scipy import stats

from densekit.data import Run, load_dataset
from densekit.errors import DensekitError
from densekit.eval.compare import compare_runs, paired_t_test, plot_deltas, randomization_test
from densekit.eval.metrics import evaluate


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, scifact_small: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two real dense runs on the SciFact subset: the tiny model reading 512 vs 8 tokens per text."""
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    ds = load_dataset(scifact_small, split="test")
    runs = []
    for max_length in (512, 8):
        encoder = Encoder(tiny_model, device="cpu", max_length=max_length)
        runs.append(DenseRetriever.build(encoder, ds.corpus, cache=False, show_progress=False).search(ds.queries, 100))
    folder = tmp_path_factory.mktemp("runs")
    runs[0].write_trec(folder / "long.trec")
    runs[1].write_trec(folder / "short.trec")
    return ds, runs[0], runs[1], folder


def test_t_test_p_value_equals_scipy_ttest_rel(two_runs) -> None:
    ds, run_a, run_b, _ = two_runs
    metrics = ["ndcg@10", "recall@100", "mrr@10"]
    cmp = compare_runs(run_a, run_b, ds.qrels, metrics, trials=2000)
    per_a = evaluate(ds.qrels, run_a, metrics).per_query
    per_b = evaluate(ds.qrels, run_b, metrics).per_query
    for metric in metrics:
        a = [per_a[q][metric] for q in ds.qrels]
        b = [per_b[q][metric] for q in ds.qrels]
        expected = stats.ttest_rel(b, a)
        got = cmp.metrics[metric]
        if np.isnan(expected.pvalue):  # all differences zero: scipy gives NaN, we report 1.0
            assert got.t_p_value == 1.0
            continue
        assert got.t_p_value == pytest.approx(expected.pvalue, rel=1e-10, abs=1e-15)
        assert got.t_statistic == pytest.approx(expected.statistic, rel=1e-10)
        assert got.mean_a == pytest.approx(np.mean(a)) and got.mean_b == pytest.approx(np.mean(b))
    # The two runs really differ, so the test above compared a non-trivial p-value.
    assert cmp.metrics["ndcg@10"].ties < cmp.queries


def test_t_test_on_hand_values_and_degenerate_cases() -> None:
    a = [0.1, 0.5, 0.3, 0.9, 0.4]
    b = [0.2, 0.4, 0.6, 1.0, 0.7]
    t, p = paired_t_test(a, b)
    ref = stats.ttest_rel(b, a)
    assert (t, p) == (pytest.approx(ref.statistic, rel=1e-12), pytest.approx(ref.pvalue, rel=1e-12))
    assert paired_t_test(a, a) == (0.0, 1.0)
    with pytest.raises(DensekitError, match="at least 2"):
        paired_t_test([0.1], [0.2])


def test_randomization_test_matches_exact_enumeration() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(10)
    b = a + rng.normal(0.08, 0.15, 10)
    diff = b - a
    observed = abs(diff.mean())
    signs = np.array(list(itertools.product((-1, 1), repeat=10)))
    exact = np.mean(np.abs(signs @ diff) / 10 >= observed - 1e-12)
    p = randomization_test(a, b, trials=40_000, seed=1)
    assert p == pytest.approx(exact, abs=0.01)
    assert randomization_test(a, b, trials=5000, seed=7) == randomization_test(a, b, trials=5000, seed=7)


def test_randomization_test_extremes() -> None:
    a = np.linspace(0, 0.5, 30)
    assert randomization_test(a, a, trials=100) == 1.0
    # Every difference +0.2: only the observed sign assignment (and its mirror) is as extreme.
    assert randomization_test(a, a + 0.2, trials=999, seed=0) == pytest.approx(1 / 1000, abs=2 / 1000)
    with pytest.raises(DensekitError, match="trials"):
        randomization_test(a, a, trials=0)


def test_wins_ties_losses_and_missing_queries() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}
    run_a = Run.from_scores(
        {"q1": {"d1": 1.0, "x": 0.5}, "q2": {"x": 1.0, "d2": 0.5}, "q3": {"d3": 1.0}, "q4": {"d4": 1.0}}
    )
    # q1 tie, q2 win (d2 moves to rank 1), q3 loss (d3 to rank 2), q4 missing from B -> scores 0 -> loss
    run_b = Run.from_scores({"q1": {"d1": 1.0, "x": 0.5}, "q2": {"d2": 1.0, "x": 0.5}, "q3": {"x": 1.0, "d3": 0.5}})
    cmp = compare_runs(run_a, run_b, qrels, ["mrr@10"], trials=200)
    m = cmp.metrics["mrr@10"]
    assert (m.wins, m.ties, m.losses) == (1, 1, 2)
    assert cmp.missing_b == 1 and cmp.missing_a == 0
    assert m.mean_a == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert m.mean_b == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert cmp.deltas("mrr@10") == pytest.approx({"q1": 0.0, "q2": 0.5, "q3": -0.5, "q4": -1.0})
    with pytest.raises(DensekitError, match="none of the 4 judged queries"):
        compare_runs(run_a, Run.from_scores({"zz": {"d1": 1.0}}), qrels, ["mrr@10"])


def test_pairs_are_the_judged_queries_under_evaluate_s_zero_rule() -> None:
    """A query missing from one run only (q2 from A, q3 from B, q4 from both) pairs with 0 on that side,
    and each side's mean is exactly what `evaluate` (densekit eval) reports for that run."""
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}
    run_a = Run.from_scores({"q1": {"d1": 1.0}, "q3": {"x": 1.0, "d3": 0.5}, "other": {"d1": 1.0}})
    run_b = Run.from_scores({"q1": {"x": 1.0, "d1": 0.5}, "q2": {"d2": 1.0}})
    cmp = compare_runs(run_a, run_b, qrels, ["mrr@10", "ndcg@10"], trials=100)
    assert cmp.queries == 4 and (cmp.missing_a, cmp.missing_b) == (2, 2)
    assert cmp.per_query_a == {
        q: {"mrr@10": v, "ndcg@10": pytest.approx(n)}
        for q, v, n in [("q1", 1.0, 1.0), ("q2", 0.0, 0.0), ("q3", 0.5, 1 / np.log2(3)), ("q4", 0.0, 0.0)]
    }
    assert cmp.deltas("mrr@10") == pytest.approx({"q1": -0.5, "q2": 1.0, "q3": -0.5, "q4": 0.0})
    for run, mean in ((run_a, "mean_a"), (run_b, "mean_b")):
        expected = evaluate(qrels, run, ["mrr@10", "ndcg@10"]).metrics
        for metric in ("mrr@10", "ndcg@10"):
            assert getattr(cmp.metrics[metric], mean) == pytest.approx(expected[metric], abs=1e-12)
    assert cmp.metrics["mrr@10"].mean_a == pytest.approx(1.5 / 4)
    assert cmp.to_json(per_query=False)["missing_query_rule"] == "zero"


def test_plot_is_a_png(two_runs, tmp_path) -> None:
    ds, run_a, run_b, _ = two_runs
    cmp = compare_runs(run_a, run_b, ds.qrels, ["ndcg@10"], trials=100)
    path = plot_deltas(cmp, "ndcg@10", tmp_path / "deltas.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["deltas.png"]  # no temporary left behind
    with pytest.raises(DensekitError, match="not compared"):
        plot_deltas(cmp, "map@10", tmp_path / "x.png")


def test_cli_compare_json_markdown_and_errors(two_runs, tmp_path, capsys, monkeypatch) -> None:
    ds, _, _, folder = two_runs
    base = [
        "compare",
        str(folder / "long.trec"),
        str(folder / "short.trec"),
        "--data",
        str(ds.root),
        "--metrics",
        "ndcg@10,recall@100",
        "--trials",
        "500",
    ]
    code, out, _ = run_cli(
        [*base, "--json", "--out", str(tmp_path / "c.json"), "--plot", str(tmp_path / "d.png")],
        capsys,
        monkeypatch,
    )
    assert code == 0
    result = json.loads(out)
    assert result["queries"] == 20 and set(result["metrics"]) == {"ndcg@10", "recall@100"}
    saved = json.loads((tmp_path / "c.json").read_text())
    assert len(saved["per_query"]) == 20 and (tmp_path / "d.png").stat().st_size > 1000
    m = result["metrics"]["ndcg@10"]
    assert m["wins"] + m["ties"] + m["losses"] == 20
    code, out, _ = run_cli([*base, "--format", "markdown"], capsys, monkeypatch)
    assert code == 0 and out.startswith("| metric |") and "randomisation" in out
    code, _, err = run_cli([*base, "--format", "html"], capsys, monkeypatch)
    assert code == 2 and "--format must be one of" in err
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1\n")
    code, _, err = run_cli(
        ["compare", str(tmp_path / "bad.trec"), str(folder / "short.trec"), "--data", str(ds.root)],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "bad.trec" in err


def test_seed_runs_pool_query_q_of_seed_i_with_query_q_of_the_same_seed(two_runs) -> None:
    """A = (long, short), B = (short, long): each seed's deltas are the other's negated, so the pooled
    delta is exactly 0 with wins = losses; a pooling that paired across seeds would not cancel."""
    from densekit.eval.compare import per_seed_means, pool_seeds

    ds, long_run, short_run, _ = two_runs
    run_a, qrels = pool_seeds([long_run, short_run], ds.qrels)
    run_b = pool_seeds([short_run, long_run], ds.qrels)[0]
    assert len(qrels) == 2 * len(ds.qrels) and set(run_a) == set(qrels)
    cmp = compare_runs(run_a, run_b, qrels, ["ndcg@10"], trials=200)
    m = cmp.metrics["ndcg@10"]
    assert m.delta == pytest.approx(0.0, abs=1e-12) and m.wins == m.losses > 0 and m.t_p_value == 1.0
    single = {name: evaluate(ds.qrels, run, ["ndcg@10"]).metrics["ndcg@10"] for name, run in
              (("long", long_run), ("short", short_run))}  # fmt: skip
    assert per_seed_means(cmp.per_query_a, "ndcg@10") == pytest.approx([single["long"], single["short"]])
    assert per_seed_means(cmp.per_query_b, "ndcg@10") == pytest.approx([single["short"], single["long"]])


def test_seed_runs_average_each_query_over_seeds_by_default(two_runs) -> None:
    """The query unit: A = (long, short) and B = (short, long) average to the same per-query values (every
    query a tie, p = 1); a fixed baseline (one run) against two seeds is tested over the queries, n = 20."""
    from densekit.eval.compare import compare_seeds

    ds, long_run, short_run, _ = two_runs
    swapped = compare_seeds([long_run, short_run], [short_run, long_run], ds.qrels, ["ndcg@10"], trials=200)
    m = swapped.comparison.metrics["ndcg@10"]
    assert swapped.unit == "query" and swapped.comparison.queries == len(ds.qrels)
    assert m.delta == pytest.approx(0.0, abs=1e-12) and m.ties == len(ds.qrels) and m.t_p_value == 1.0
    fixed = compare_seeds([long_run], [short_run, long_run], ds.qrels, ["ndcg@10"], trials=200)
    per_query = {name: evaluate(ds.qrels, run, ["ndcg@10"]).per_query for name, run in
                 (("long", long_run), ("short", short_run))}  # fmt: skip
    queries = list(ds.qrels)
    a = [per_query["long"][q]["ndcg@10"] for q in queries]
    b = [(per_query["short"][q]["ndcg@10"] + per_query["long"][q]["ndcg@10"]) / 2 for q in queries]
    got = fixed.comparison.metrics["ndcg@10"]
    assert fixed.comparison.queries == len(queries) and fixed.seeds == 2
    assert got.t_p_value == pytest.approx(paired_t_test(a, b)[1]) and got.delta == pytest.approx(
        np.mean(b) - np.mean(a)
    )
    single = {name: float(np.mean([v["ndcg@10"] for v in values.values()])) for name, values in per_query.items()}
    assert fixed.per_seed["ndcg@10"]["a"] == pytest.approx([single["long"]] * 2)
    assert fixed.per_seed["ndcg@10"]["b"] == pytest.approx([single["short"], single["long"]])
    with pytest.raises(DensekitError, match="one distinct run per seed"):
        compare_seeds([long_run, long_run], [short_run, long_run], ds.qrels, ["ndcg@10"], unit="seed-query")
    with pytest.raises(DensekitError, match="A has 2 run"):
        compare_seeds([long_run, short_run], [short_run, long_run, long_run], ds.qrels, ["ndcg@10"])


def test_cli_compare_seed_runs_by_query_and_by_seed_query(two_runs, capsys, monkeypatch) -> None:
    ds, long_run, short_run, folder = two_runs
    long, short = str(folder / "long.trec"), str(folder / "short.trec")
    single = compare_runs(long_run, short_run, ds.qrels, ["ndcg@10"], trials=200).metrics["ndcg@10"]
    base = ["compare", f"{long},{long}", f"{short},{short}", "--data", str(ds.root), "--metrics", "ndcg@10"]
    code, out, _ = run_cli([*base, "--trials", "200", "--json"], capsys, monkeypatch)
    assert code == 0
    result = json.loads(out)  # identical seeds average to the single runs: the same test, n = queries
    assert result["seeds"] == 2 and result["unit"] == "query" and result["queries"] == len(ds.qrels)
    assert result["metrics"]["ndcg@10"]["t_p_value"] == pytest.approx(single.t_p_value)
    assert result["per_seed"]["ndcg@10"]["a"] == pytest.approx([single.mean_a] * 2)
    code, out, _ = run_cli(["compare", long, f"{short},{short}", *base[3:], "--trials", "200"], capsys, monkeypatch)
    assert code == 0 and "2 seeds averaged" in " ".join(out.split()) and "per seed (mean over" in out
    pooled = ["compare", f"{long},{short}", f"{short},{long}", *base[3:], "--unit", "seed-query", "--json"]
    code, out, _ = run_cli([*pooled, "--trials", "200"], capsys, monkeypatch)
    result = json.loads(out)
    assert code == 0 and result["unit"] == "seed-query" and result["queries"] == 2 * len(ds.qrels)
    assert result["metrics"]["ndcg@10"]["delta"] == pytest.approx(0.0, abs=1e-12)
    code, out, _ = run_cli([*pooled[:-1], "--format", "markdown", "--trials", "200"], capsys, monkeypatch)
    assert code == 0 and "query q of seed i paired on both sides, 2 seeds" in out
    code, _, err = run_cli([*base, "--unit", "seed-query"], capsys, monkeypatch)
    assert code == 2 and "a file repeated as every seed is a fixed baseline" in err
    code, _, err = run_cli([*base, "--unit", "seeds"], capsys, monkeypatch)
    assert code == 2 and "--unit must be one of query, seed-query" in err
    code, _, err = run_cli(["compare", f"{long},{short}", f"{short},{long},{long}", *base[3:]], capsys, monkeypatch)
    assert code == 2 and "A has 2 run(s) and B 3" in err
