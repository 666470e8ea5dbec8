"""Statistics over seeds shared by the benchmarks that train models (ablation, finetune, rerank, train-quality):
mean and sd over seeds, the paired comparison of two recipes (by query with each query's value averaged over the
seeds, and pooled over seed-queries), and the zero-shot comparison of trained models with their start model on
another dataset."""

from __future__ import annotations

import statistics
from pathlib import Path


def read_runs(runs: dict[int, Path]) -> dict:
    """Each seed's TREC run, read once: ``{seed: Run}``."""
    from densekit.data import Run

    return {seed: Run.read_trec(path) for seed, path in runs.items()}


def spread(values: list[float]) -> dict:
    """Mean and sample sd (None for one value) over seeds, rounded for the record."""
    return {"mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None}  # fmt: skip


def _tests(c) -> dict:
    return {"t_p_value": round(c.t_p_value, 4), "randomization_p_value": round(c.randomization_p_value, 4),
            "wins_ties_losses": [c.wins, c.ties, c.losses]}  # fmt: skip


def _one_run(runs: dict) -> dict:
    """A side whose seeds' runs are all the same ranking (a start model evaluated per seed) as one run."""
    first = runs[min(runs)]
    return {min(runs): first} if all(run == first for run in runs.values()) else runs


def paired(base: dict, other: dict, qrels: dict, metrics: list[str], names: tuple[str, str] = ("a", "b")) -> dict:
    """The paired comparison of two variants' seed runs (``{seed: Run}`` each), in both seed units.

    Under the metric: the delta and, under ``"query"``, the tests over the queries with each query's value
    averaged over a side's seeds (n = queries; `densekit compare`'s default). The top-level p-values and
    counts are the seed-query pooling (n = seeds x queries, what records before 2026-12-06 carry); a side
    that is one fixed ranking (the start model) is compared by query only and its top level repeats them.
    """
    from densekit.eval.compare import compare_seeds

    base, other = _one_run(base), _one_run(other)
    order = lambda runs: [runs[seed] for seed in sorted(runs)]  # noqa: E731
    by_query = compare_seeds(order(base), order(other), qrels, metrics, names=names, unit="query").comparison
    fixed = len(base) == 1 or len(other) == 1
    pooled = by_query if fixed else compare_seeds(order(base), order(other), qrels, metrics, names=names,
                                                  unit="seed-query").comparison  # fmt: skip
    return {
        metric: {
            "delta": round(c.delta, 4),
            **_tests(c),
            "unit": "query" if fixed else "seed-query",
            "query": _tests(by_query.metrics[metric]),
        }  # fmt: skip
        for metric, c in pooled.metrics.items()
    }


def generality(data: str, base: Path, runs: dict[str, dict[int, Path]]) -> dict:
    """Zero-shot on another dataset: each variant's models against the start model, paired over the queries
    (each query's value averaged over the seeds: the start model is one ranking, not one per seed)."""
    from densekit.data import Run, load_dataset
    from densekit.eval.metrics import evaluate

    qrels = load_dataset(data, split="test").qrels
    score = lambda run: float(evaluate(qrels, run, ["ndcg@10"]).metrics["ndcg@10"])  # noqa: E731
    start_run = Run.read_trec(base)
    result: dict = {"start_model_ndcg@10": round(score(start_run), 4), "variants": {}}
    for name, by_seed in runs.items():
        read = read_runs(by_seed)
        values = [score(run) for run in read.values()]
        c = paired({0: start_run}, read, qrels, ["ndcg@10"])["ndcg@10"]  # the start model has no seeds
        result["variants"][name] = {
            **spread(values),
            "per_seed": [round(v, 4) for v in values],
            "delta_vs_start": c["delta"],
            "t_p_value": c["t_p_value"],
            "randomization_p_value": c["randomization_p_value"],
            "unit": c["unit"],
        }
    return result
