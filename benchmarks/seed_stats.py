"""Statistics over seeds shared by the benchmarks that train models (ablation, finetune, rerank, train-quality):
mean and sd over seeds, the paired comparison of two recipes over every seed's queries pooled, and the
zero-shot comparison of trained models with their start model on another dataset."""

from __future__ import annotations

import statistics
from pathlib import Path


def read_runs(runs: dict[int, Path]) -> dict:
    """Each seed's TREC run, read once: ``{seed: Run}``."""
    from densekit.data import Run

    return {seed: Run.read_trec(path) for seed, path in runs.items()}


def pooled(runs: dict, qrels: dict) -> tuple[dict, dict]:
    """Every seed's run and the qrels (``{seed: Run}``, in seed order) as one set of queries, paired across variants."""
    from densekit.eval.compare import pool_seeds

    return pool_seeds([runs[seed] for seed in sorted(runs)], qrels)


def spread(values: list[float]) -> dict:
    """Mean and sample sd (None for one value) over seeds, rounded for the record."""
    return {"mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None}  # fmt: skip


def paired(base: dict, other: dict, qrels: dict, metrics: list[str], names: tuple[str, str] = ("a", "b")) -> dict:
    """The paired comparison of two variants' seed runs (``{seed: Run}`` each) pooled over all seeds' queries."""
    from densekit.eval.compare import compare_runs

    base_run, pooled_qrels = pooled(base, qrels)
    other_run = pooled(other, qrels)[0]
    comparison = compare_runs(base_run, other_run, pooled_qrels, metrics, name_a=names[0], name_b=names[1])
    return {
        metric: {
            "delta": round(c.delta, 4),
            "t_p_value": round(c.t_p_value, 4),
            "randomization_p_value": round(c.randomization_p_value, 4),
            "wins_ties_losses": [c.wins, c.ties, c.losses],
        }
        for metric, c in comparison.metrics.items()
    }


def generality(data: str, base: Path, runs: dict[str, dict[int, Path]]) -> dict:
    """Zero-shot on another dataset: each variant's models against the start model, paired over the queries."""
    from densekit.data import Run, load_dataset
    from densekit.eval.metrics import evaluate

    qrels = load_dataset(data, split="test").qrels
    score = lambda run: float(evaluate(qrels, run, ["ndcg@10"]).metrics["ndcg@10"])  # noqa: E731
    start_run = Run.read_trec(base)
    result: dict = {"start_model_ndcg@10": round(score(start_run), 4), "variants": {}}
    for name, by_seed in runs.items():
        read = read_runs(by_seed)
        values = [score(run) for run in read.values()]
        c = paired(dict.fromkeys(read, start_run), read, qrels, ["ndcg@10"])["ndcg@10"]
        result["variants"][name] = {
            **spread(values),
            "per_seed": [round(v, 4) for v in values],
            "delta_vs_start": c["delta"],
            "t_p_value": c["t_p_value"],
            "randomization_p_value": c["randomization_p_value"],
        }
    return result
