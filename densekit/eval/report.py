"""Markdown tables for READMEs: evaluation results, run comparisons, reproduction grades, MTEB scores.

Pure functions from result objects (or their JSON) to GitHub-flavoured markdown strings; the CLI
prints them under ``--format markdown``. Numbers are shown with four decimals, as BEIR and MTEB
tables do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

OUTPUT_FORMATS = ("text", "markdown", "json")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align_right: Sequence[bool] | None = None
) -> str:
    """A markdown table; numeric columns right-aligned unless `align_right` says otherwise."""
    if align_right is None:
        align_right = [
            bool(rows) and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows)
            for i in range(len(header))
        ]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---:" if right else "---" for right in align_right) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def retriever_label(config: Mapping[str, Any]) -> str:
    """A short name for what an evaluation configuration describes: a model, an index, a run file,
    BM25 (with its backend), a hybrid of BM25 and a dense retriever, or a reranked first stage."""
    if "reranker" in config:
        return f"{retriever_label(config.get('first_stage') or {})} + rerank {config['reranker']}"
    if isinstance(config.get("bm25"), Mapping) and isinstance(config.get("dense"), Mapping):
        fusion = config.get("fusion", "fusion")
        return f"{retriever_label(config['bm25'])} + {retriever_label(config['dense'])} ({fusion})"
    if "bm25_backend" in config:
        return f"BM25 {config['bm25_backend']}"
    return str(config.get("model") or config.get("index") or config.get("run") or "run")


def eval_markdown(report: Mapping[str, Any], label: str | None = None) -> str:
    """One row per evaluation (the JSON of :class:`~densekit.eval.harness.EvalReport`)."""
    metrics = report["metrics"]
    config = report.get("config") or {}
    label = label or retriever_label(config)
    header = ["model / run", "dataset", "split", "queries", *metrics]
    row = [label, report["dataset"], report.get("split") or "-", report["queries"], *metrics.values()]
    return markdown_table(header, [row]) + missing_queries_note(report)


def missing_queries_note(report: Mapping[str, Any]) -> str:
    """A line under a results table saying how judged queries without results were scored, or ""."""
    missing = report.get("missing_queries") or 0
    if not missing:
        return ""
    if report.get("missing_query_rule", "zero") == "skip":
        return (
            f"\n\n{missing} judged queries had no results and were left out of the average "
            "(--skip-missing-queries, BEIR's convention)."
        )
    return (
        f"\n\n{missing} judged queries had no results and count as 0 in the average "
        "(trec_eval -c, as Pyserini's published numbers)."
    )


def _seed_pairing(comparison: Mapping[str, Any]) -> str:
    """How a comparison of several seeds paired them, for the table's footnote ("" for one run a side)."""
    seeds = comparison.get("seeds", 1)
    if seeds <= 1:
        return ""
    if comparison.get("unit") == "seed-query":
        return f" (query q of seed i paired on both sides, {seeds} seeds)"
    return f" (each query's value averaged over {seeds} seeds)"


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """One row per metric of a comparison (the JSON of :class:`~densekit.eval.compare.Comparison`)."""
    header = [
        "metric",
        f"A: {comparison['run_a']}",
        f"B: {comparison['run_b']}",
        "B - A",
        "t-test p",
        "randomisation p",
        "wins / ties / losses",
    ]
    rows = []
    for name, m in comparison["metrics"].items():
        rows.append(
            [
                name,
                m["mean_a"],
                m["mean_b"],
                f"{m['delta']:+.4f}",
                f"{m['t_p_value']:.3g}",
                f"{m['randomization_p_value']:.3g}",
                f"{m['wins']} / {m['ties']} / {m['losses']}",
            ]
        )
    return (
        markdown_table(header, rows, [False, True, True, True, True, True, False])
        + f"\n\n{comparison['queries']} paired queries{_seed_pairing(comparison)}; randomisation test with "
        f"{comparison['randomization']['trials']} trials (seed {comparison['randomization']['seed']})."
    )


def reproduction_markdown(grades: Sequence[Mapping[str, Any]]) -> str:
    """One row per reproduction entry (the JSON of :class:`~densekit.eval.reproduce.Grade`)."""
    header = [
        "retriever",
        "dataset",
        "metric",
        "expected",
        "measured",
        "difference",
        "tolerance",
        "grade",
        "source",
    ]
    rows = []
    for g in grades:
        measured = g.get("measured")
        diff = f"{g['difference']:+.4f}" if g.get("difference") is not None else "-"
        grade = g["grade"] if not g.get("reason") else f"{g['grade']} ({g['reason']})"
        rows.append(
            [
                g["retriever"],
                g["dataset"],
                g["metric"],
                g["expected"],
                measured,
                diff,
                g["tolerance"],
                grade,
                g.get("source", ""),
            ]
        )
    return markdown_table(header, rows, [False, False, False, True, True, True, True, False, False])


def mteb_markdown(summary: Mapping[str, Any]) -> str:
    """One row per MTEB task (the JSON of :class:`~densekit.eval.mteb.MtebSummary`)."""
    header = ["model", "task", "split", "main score", "ndcg_at_10", "recall_at_100"]
    rows = [
        [
            summary["model"],
            t["task"],
            t["split"],
            t["main_score"],
            t["scores"].get("ndcg_at_10"),
            t["scores"].get("recall_at_100"),
        ]
        for t in summary["tasks"]
    ]
    return markdown_table(header, rows, [False, False, False, True, True, True])
