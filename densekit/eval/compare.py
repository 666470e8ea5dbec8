"""Paired comparison of two runs on the same queries: means, deltas, significance, wins/ties/losses.

Both runs are scored per query with pytrec_eval (:func:`densekit.eval.metrics.evaluate`). The pairs
are the judged queries of the split; a judged query that a run did not return scores 0 for that run
(trec_eval's ``-c``), because dropping it would favour the run that failed on it. That is
:func:`~densekit.eval.metrics.evaluate`'s own default rule, so a comparison's means equal what
``densekit eval`` reports for each run.

Two tests, as recommended for IR evaluation by Smucker, Allan and Carterette, "A Comparison of
Statistical Significance Tests for Information Retrieval Evaluation" (CIKM 2007):

- the paired Student t-test on the per-query differences (two-sided; identical to
  ``scipy.stats.ttest_rel``), and
- the paired randomisation (permutation) test: under the null hypothesis each query's two scores
  are exchangeable, so the sign of each difference is flipped at random; the p-value is the share
  of `trials` random sign assignments whose mean difference is at least as extreme as the observed
  one, counted with the observed assignment, ``(hits + 1) / (trials + 1)`` (never 0).

Several seeds' runs of two recipes (:func:`compare_seeds`) are compared by query by default: each
query's value averaged over a side's seeds, n = the judged queries.

When every difference is zero the runs are indistinguishable and both p-values are 1.0 (scipy's
t-test returns NaN there).

Example::

    cmp = compare_runs(Run.read_trec("a.trec"), Run.read_trec("b.trec"), ds.qrels, ["ndcg@10"])
    cmp.metrics["ndcg@10"].t_p_value, cmp.metrics["ndcg@10"].wins
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from densekit.data import Qrels, Run
from densekit.errors import DensekitError, InputError
from densekit.eval.metrics import DEFAULT_METRICS, evaluate

#: Differences smaller than this count as ties (pytrec_eval's doubles are exact for equal rankings).
TIE_TOLERANCE = 1e-9


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test of `b - a`: `(t statistic, p-value)`, as ``scipy.stats.ttest_rel(b, a)``."""
    from scipy import stats

    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = diff.size
    if n < 2:
        raise DensekitError(f"a paired t-test needs at least 2 queries, got {n}")
    mean = diff.mean()
    sd = diff.std(ddof=1)
    if sd == 0.0:
        if mean == 0.0:
            return 0.0, 1.0
        return math.copysign(math.inf, mean), 0.0
    t = mean / (sd / math.sqrt(n))
    p = 2.0 * stats.t.sf(abs(t), df=n - 1)
    return float(t), float(min(1.0, p))


def randomization_test(
    a: Sequence[float], b: Sequence[float], trials: int = 10_000, seed: int = 0, block: int = 1000
) -> float:
    """Two-sided paired randomisation test of the mean of `b - a` (see the module docstring)."""
    if trials <= 0:
        raise DensekitError(f"trials must be positive, got {trials}")
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if diff.size == 0:
        raise DensekitError("a randomisation test needs at least one query")
    observed = abs(diff.mean())
    if not np.any(np.abs(diff) > TIE_TOLERANCE):
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    # Blocks of sign matrices keep memory at block x queries whatever the number of trials.
    for start in range(0, trials, block):
        size = min(block, trials - start)
        signs = rng.integers(0, 2, size=(size, diff.size), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ diff) / diff.size
        # The tolerance keeps float noise from turning an equal mean into a "less extreme" one.
        hits += int(np.count_nonzero(means >= observed - 1e-12))
    return (hits + 1) / (trials + 1)


@dataclass
class MetricComparison:
    """One metric over the paired queries: means, delta (B - A), p-values, wins/ties/losses of B."""

    metric: str
    mean_a: float
    mean_b: float
    delta: float
    t_statistic: float
    t_p_value: float
    randomization_p_value: float
    wins: int
    ties: int
    losses: int

    @property
    def relative_delta(self) -> float | None:
        return self.delta / self.mean_a if self.mean_a else None


@dataclass
class Comparison:
    """Everything `densekit compare` reports, plus the per-query values it was computed from."""

    name_a: str
    name_b: str
    queries: int
    metrics: dict[str, MetricComparison]
    per_query_a: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)
    per_query_b: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)
    missing_a: int = 0
    missing_b: int = 0
    trials: int = 10_000
    seed: int = 0

    def deltas(self, metric: str) -> dict[str, float]:
        """Per-query B - A for `metric`, in query order."""
        return {q: self.per_query_b[q][metric] - self.per_query_a[q][metric] for q in self.per_query_a}

    def to_json(self, per_query: bool = True) -> dict:
        out = {
            "run_a": self.name_a,
            "run_b": self.name_b,
            "queries": self.queries,
            "missing_queries": {"a": self.missing_a, "b": self.missing_b},
            "missing_query_rule": "zero",
            "randomization": {"trials": self.trials, "seed": self.seed},
            "tie_tolerance": TIE_TOLERANCE,
            "metrics": {name: {**asdict(m), "relative_delta": m.relative_delta} for name, m in self.metrics.items()},
        }
        if per_query:
            out["per_query"] = {q: {"a": self.per_query_a[q], "b": self.per_query_b[q]} for q in self.per_query_a}
        return out


def _paired_values(
    qrels: Qrels, run: Run, metrics: Sequence[str], name: str
) -> tuple[dict[str, dict[str, float]], int]:
    """Per-query values of `run` over every judged query (the zero rule) and how many had no results."""
    try:
        result = evaluate(qrels, run, metrics, skip_missing_queries=False)
    except InputError:
        raise
    except DensekitError as exc:
        raise DensekitError(f"run {name}: {exc}") from None
    return result.per_query, result.missing_queries


def compare_runs(
    run_a: Run,
    run_b: Run,
    qrels: Qrels,
    metrics: Iterable[str] = DEFAULT_METRICS,
    trials: int = 10_000,
    seed: int = 0,
    name_a: str = "A",
    name_b: str = "B",
) -> Comparison:
    """Compare `run_b` against `run_a` on every judged query of `qrels` (see module docstring)."""
    names = [m.strip().lower() for m in metrics]
    if not qrels:
        raise DensekitError("no judged queries to compare on")
    values_a, missing_a = _paired_values(qrels, run_a, names, name_a)
    values_b, missing_b = _paired_values(qrels, run_b, names, name_b)
    return compare_values(values_a, values_b, names, trials, seed, (name_a, name_b), (missing_a, missing_b))


def compare_values(
    values_a: dict[str, dict[str, float]],
    values_b: dict[str, dict[str, float]],
    metrics: Sequence[str],
    trials: int = 10_000,
    seed: int = 0,
    names: tuple[str, str] = ("A", "B"),
    missing: tuple[int, int] = (0, 0),
) -> Comparison:
    """The paired tests over per-query metric values (``{query: {metric: value}}``, the same queries on
    both sides, in `values_a`'s order): the statistics behind :func:`compare_runs` and :func:`compare_seeds`."""
    query_ids = list(values_a)
    results = {}
    for metric in metrics:
        a = np.array([values_a[q][metric] for q in query_ids])
        b = np.array([values_b[q][metric] for q in query_ids])
        diff = b - a
        t, p = paired_t_test(a, b)
        results[metric] = MetricComparison(
            metric=metric,
            mean_a=float(a.mean()),
            mean_b=float(b.mean()),
            delta=float(diff.mean()),
            t_statistic=t,
            t_p_value=p,
            randomization_p_value=randomization_test(a, b, trials=trials, seed=seed),
            wins=int(np.count_nonzero(diff > TIE_TOLERANCE)),
            ties=int(np.count_nonzero(np.abs(diff) <= TIE_TOLERANCE)),
            losses=int(np.count_nonzero(diff < -TIE_TOLERANCE)),
        )
    return Comparison(names[0], names[1], len(query_ids), results, values_a, values_b, *missing, trials, seed)


#: How several seeds' runs are paired: "query" averages each query's value over a side's seeds and pairs
#: the judged queries (n = queries); "seed-query" pools query q of seed i with query q of seed i (n =
#: seeds x queries, :func:`pool_seeds`).
SEED_UNITS = ("query", "seed-query")


def seed_means(per_seed: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each query's metric values averaged over several runs' per-query values (the same queries in each)."""
    return {
        query: {metric: float(np.mean([values[query][metric] for values in per_seed])) for metric in first}
        for query, first in per_seed[0].items()
    }


@dataclass
class SeedComparison:
    """A comparison of several seeds' runs: the paired tests (`comparison`, over the `unit`'s pairs) and
    each seed's mean of every metric on each side (a side with one run, a fixed baseline, repeats it)."""

    comparison: Comparison
    unit: str
    seeds: int
    per_seed: dict[str, dict[str, list[float]]]


def compare_seeds(
    runs_a: Sequence[Run],
    runs_b: Sequence[Run],
    qrels: Qrels,
    metrics: Iterable[str] = DEFAULT_METRICS,
    trials: int = 10_000,
    seed: int = 0,
    names: tuple[str, str] = ("A", "B"),
    unit: str = "query",
) -> SeedComparison:
    """Compare recipe B's runs (one per training seed) with recipe A's on every judged query of `qrels`.

    With `unit` ``"query"`` (the default) each query's value is averaged over a side's seeds and the
    tests pair the judged queries, so n is the number of queries: the seeds' shared queries are not
    counted as independent evidence. One side may be a single run (a fixed baseline such as the start
    model, which has no seeds). ``"seed-query"`` pools query q of A's seed i with query q of B's seed i
    (n = seeds x queries); it needs one distinct run per seed on each side. It counts a query once per
    seed although the seeds' differences on a query are correlated (they share it), and with a fixed
    baseline repeated as every seed that correlation is strong, so it is refused there. The missing
    counts are summed over a side's runs.
    """
    if unit not in SEED_UNITS:
        raise DensekitError(f"unit must be one of {', '.join(SEED_UNITS)}, got {unit!r}")
    runs_a, runs_b = list(runs_a), list(runs_b)
    if not runs_a or not runs_b or (len(runs_a) != len(runs_b) and 1 not in (len(runs_a), len(runs_b))):
        raise DensekitError(
            f"A has {len(runs_a)} run(s) and B {len(runs_b)}: give one run per seed on each side in the same "
            "seed order (A1,A2,A3 B1,B2,B3), or one run on a side that has no seeds (a fixed baseline)"
        )
    if not qrels:
        raise DensekitError("no judged queries to compare on")
    names_m = [m.strip().lower() for m in metrics]
    if unit == "seed-query":
        if len(runs_a) != len(runs_b) or any(x == y for side in (runs_a, runs_b) for x, y in combinations(side, 2)):
            raise DensekitError(
                "seed-query pooling pairs seed i of A with seed i of B, so it needs one distinct run per seed on "
                "each side; a file repeated as every seed is a fixed baseline: give it once, compared with the "
                "query unit (it counts each query once)"
            )
        (pooled_a, judged), pooled_b = pool_seeds(runs_a, qrels), pool_seeds(runs_b, qrels)[0]
        comparison = compare_runs(pooled_a, pooled_b, judged, names_m, trials, seed, *names)
        per_seed = {m: {"a": per_seed_means(comparison.per_query_a, m), "b": per_seed_means(comparison.per_query_b, m)}
                    for m in comparison.metrics}  # fmt: skip
        return SeedComparison(comparison, unit, len(runs_a), per_seed)
    side_a = [_paired_values(qrels, run, names_m, f"{names[0]} #{i}") for i, run in enumerate(runs_a, start=1)]
    side_b = [_paired_values(qrels, run, names_m, f"{names[1]} #{i}") for i, run in enumerate(runs_b, start=1)]
    seeds = max(len(runs_a), len(runs_b))
    per_seed = {
        m: {side: [float(np.mean([v[m] for v in values.values()])) for values, _ in runs] * (seeds // len(runs))
            for side, runs in (("a", side_a), ("b", side_b))}
        for m in names_m
    }  # fmt: skip
    comparison = compare_values(
        seed_means([v for v, _ in side_a]),
        seed_means([v for v, _ in side_b]),
        names_m,
        trials,
        seed,
        names,
        (sum(n for _, n in side_a), sum(n for _, n in side_b)),
    )
    return SeedComparison(comparison, unit, seeds, per_seed)


SEED_SEPARATOR = "#s"


def pool_seeds(runs: Sequence[Run], qrels: Qrels) -> tuple[Run, Qrels]:
    """Several seeds' runs of one recipe as one run over ``{qid}#s{i}`` queries (i = 1, 2, ...), with the
    qrels repeated per seed.

    Pooling two recipes' runs this way pairs query q of seed i with query q of the *same* seed i, so a
    paired test over the pooled queries compares the recipes at n_seeds x n_queries pairs (how the
    benchmarks' three-seed comparisons are computed). Returns (pooled run, pooled qrels).
    """
    pooled_run, pooled_qrels = Run(), {}
    for i, run in enumerate(runs, start=1):
        for qid, hits in run.items():
            pooled_run[f"{qid}{SEED_SEPARATOR}{i}"] = hits
        for qid, judged in qrels.items():
            pooled_qrels[f"{qid}{SEED_SEPARATOR}{i}"] = judged
    return pooled_run, pooled_qrels


def per_seed_means(per_query: dict[str, dict[str, float]], metric: str) -> list[float]:
    """The mean of `metric` over each seed's queries of a pooled comparison's per-query values, seed 1 first."""
    sums: dict[int, list[float]] = {}
    for qid, values in per_query.items():
        seed = int(qid.rsplit(SEED_SEPARATOR, 1)[1])
        sums.setdefault(seed, []).append(values[metric])
    return [float(np.mean(sums[seed])) for seed in sorted(sums)]


def plot_deltas(comparison: Comparison, metric: str, path: str | Path) -> Path:
    """Write a PNG bar chart of per-query `metric` deltas (B - A), sorted, with the mean marked.

    Needs matplotlib (the `plot` extra); the file is written atomically.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DensekitError("plotting needs matplotlib: pip install 'densekit[plot]'") from None
    from densekit.io import atomic_file

    if metric not in comparison.metrics:
        raise DensekitError(f"metric {metric!r} was not compared; compared: {', '.join(comparison.metrics)}")
    deltas = np.sort(np.array(list(comparison.deltas(metric).values())))[::-1]
    summary = comparison.metrics[metric]
    colors = ["#2a9d8f" if d > TIE_TOLERANCE else "#e76f51" if d < -TIE_TOLERANCE else "#8d99ae" for d in deltas]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.bar(np.arange(deltas.size), deltas, width=1.0, color=colors, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(summary.delta, color="#264653", linewidth=1.0, linestyle="--", label=f"mean {summary.delta:+.4f}")
    ax.set_xlabel(f"queries sorted by delta ({summary.wins} wins, {summary.ties} ties, {summary.losses} losses)")
    ax.set_ylabel(f"{metric}: B - A")
    ax.set_title(
        f"{comparison.name_b} vs {comparison.name_a}: t-test p={summary.t_p_value:.3g}, "
        f"randomisation p={summary.randomization_p_value:.3g}",
        fontsize=10,
    )
    ax.set_xlim(-0.5, deltas.size - 0.5)
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return path
