"""`densekit compare` and `densekit reproduce`: paired comparisons of runs and graded reproductions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.evaluate import check_format
from densekit.cli.options import BatchOpt, CacheOpt, DeviceOpt, FormatOpt, JsonOpt, QuietOpt
from densekit.errors import DensekitError
from densekit.eval.config import parse_metrics


@app.command("compare")
def compare_cmd(
    run_a: Annotated[
        str,
        typer.Argument(
            help="TREC run file A (the baseline); or one per training seed, comma-separated (A1,A2,A3), "
            "paired as --unit says; one file against B's seeds is a fixed baseline (a start model)."
        ),
    ],
    run_b: Annotated[
        str, typer.Argument(help="TREC run file B (compared against A); one per seed as A, or one against A's seeds.")
    ],
    data: Annotated[str, typer.Option("--data", help="BEIR folder or name whose qrels judge both runs.")],
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
    metrics: Annotated[str | None, typer.Option(help="Comma-separated, e.g. ndcg@10,recall@100.")] = None,
    trials: Annotated[int, typer.Option(help="Random sign assignments of the randomisation test.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the randomisation test.")] = 0,
    unit: Annotated[
        str,
        typer.Option(
            help="With several seeds: 'query' averages each query over a side's seeds and pairs the queries "
            "(n = queries); 'seed-query' pairs query q of seed i on both sides (n = seeds x queries: each query "
            "counted once per seed)."
        ),
    ] = "query",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the comparison JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of per-query deltas (first metric; needs matplotlib).")
    ] = None,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare two runs per query: means, deltas, t-test, randomisation test, wins/ties/losses."""
    as_json = as_json or check_format(fmt) == "json"
    render.setup(as_json, quiet)
    from densekit.eval.config import compare_run_files
    from densekit.progress import announce

    runs_a, runs_b = run_paths(run_a), run_paths(run_b)
    comparison, result = compare_run_files(
        runs_a, runs_b, data, split, parse_metrics(metrics), trials=trials, seed=seed, out=out, plot=plot, unit=unit
    )
    if as_json:
        render.emit(result)
    elif fmt == "markdown":
        from densekit.eval.report import comparison_markdown

        render.markdown(comparison_markdown(result))
    else:
        missing = (
            f"; without results, counted as 0: A {comparison.missing_a}, B {comparison.missing_b}"
            if comparison.missing_a or comparison.missing_b
            else ""
        )
        pooled = {
            "query": f"{result['seeds']} seeds averaged per query, ",
            "seed-query": f"{result['seeds']} seeds pooled, ",
        }
        pairs = pooled.get(result.get("unit", ""), "")
        render.table(
            f"{result['dataset']} / {split}: B={comparison.name_b} vs A={comparison.name_a} "
            f"({pairs}{comparison.queries} paired queries{missing})",
            ["metric", "A", "B", "B - A", "t-test p", "randomisation p", "wins/ties/losses"],
            [
                [
                    name,
                    f"{m.mean_a:.4f}",
                    f"{m.mean_b:.4f}",
                    f"{m.delta:+.4f}",
                    f"{m.t_p_value:.3g}",
                    f"{m.randomization_p_value:.3g}",
                    f"{m.wins}/{m.ties}/{m.losses}",
                ]
                for name, m in comparison.metrics.items()
            ],
            right=["A", "B", "B - A", "t-test p", "randomisation p"],
        )
        if result["seeds"] > 1:
            render.table(
                "per seed (mean over that seed's queries)",
                ["metric", "seed", "A", "B", "B - A"],
                [
                    [name, str(i + 1), f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
                    for name, both in result["per_seed"].items()
                    for i, (a, b) in enumerate(zip(both["a"], both["b"], strict=True))
                ],
                right=["A", "B", "B - A"],
            )
    if result.get("plot_skipped"):
        announce(f"--plot skipped: {result['plot_skipped']}")


def run_paths(argument: str) -> list[Path]:
    """A run argument as its files: the path itself when it names a file, else its comma-separated parts."""
    if Path(argument).is_file() or "," not in argument:
        return [Path(argument)]
    return [Path(part.strip()) for part in argument.split(",") if part.strip()]


@app.command("reproduce")
def reproduce_cmd(
    only: Annotated[list[str] | None, typer.Option("--only", help="Retriever names or globs.")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", help="Only these datasets.")] = None,
    expected: Annotated[Path | None, typer.Option(help="Expected-scores JSON (default: built in).")] = None,
    tolerance: Annotated[float | None, typer.Option(help="Override every entry's tolerance.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the grades as JSON.")] = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    cache: CacheOpt = True,
    skip_missing_queries: Annotated[
        bool,
        typer.Option(
            "--skip-missing-queries",
            help="Average only over judged queries with results (BEIR's convention); by "
            "default a judged query without results counts as 0 (trec_eval -c, "
            "as Pyserini's published numbers).",
        ),
    ] = False,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-run published configurations (expected_scores.json) and grade each OK, OFF, SKIPPED or ERROR.

    Exits 1 when any selected entry is OFF or ERROR; SKIPPED entries are listed with their reason.
    """
    as_json = as_json or check_format(fmt) == "json"
    render.setup(as_json, quiet)
    if tolerance is not None and tolerance < 0:
        raise DensekitError(f"--tolerance must be non-negative, got {tolerance}")
    from densekit.eval.reproduce import EXPECTED_SCORES, load_expected, reproduce

    table = load_expected(expected or EXPECTED_SCORES)
    grades = reproduce(
        table,
        only=only,
        datasets=dataset,
        tolerance=tolerance,
        options={"device": device, "batch_size": batch_size, "cache": cache},
        skip_missing_queries=skip_missing_queries,
    )
    rows = [g.to_json() for g in grades]
    counts = {name: sum(1 for g in grades if g.grade == name) for name in ("OK", "OFF", "SKIPPED", "ERROR")}
    summary = {"expected": str(table.path), "counts": counts, "grades": rows}
    if out is not None:
        from densekit.io import write_json

        write_json(out, summary)
    if as_json:
        render.emit(summary)
    elif fmt == "markdown":
        from densekit.eval.report import reproduction_markdown

        render.markdown(reproduction_markdown(rows))
    else:
        rule = "skipped" if skip_missing_queries else "counted as 0"
        render.table(
            f"reproductions ({', '.join(f'{k} {v}' for k, v in counts.items() if v)}; judged queries "
            f"without results {rule})",
            ["retriever", "dataset", "metric", "expected", "measured", "diff", "no results", "grade"],
            [
                [
                    g.retriever,
                    g.dataset,
                    g.metric,
                    f"{g.expected:.4f}",
                    "-" if g.measured is None else f"{g.measured:.4f}",
                    "-" if g.difference is None else f"{g.difference:+.4f}",
                    "-" if g.missing_queries is None else str(g.missing_queries),
                    g.grade + (f": {g.reason}" if g.reason else ""),
                ]
                for g in grades
            ],
        )
    if counts["OFF"] or counts["ERROR"]:
        # SystemExit, not typer.Exit: under standalone_mode=False click turns Exit into a return value.
        raise SystemExit(1)
