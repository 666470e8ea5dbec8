"""The ablation's tables (benchmarks/ablation.py's result as Markdown): what RESULTS.md and the docs show."""

from __future__ import annotations


def _steps(steps: int | list[int]) -> str:
    """`58`, or `50-51` when the seeds trained for different numbers of steps (a list from newer records)."""
    if isinstance(steps, int):
        return str(steps)
    return "-".join(str(n) for n in (min(steps), max(steps))) if len(set(steps)) > 1 else str(steps[0])


def markdown(result: dict) -> str:
    """The ablation table (what RESULTS.md and docs show)."""
    base = result["baseline"]
    lines = [
        f"| variant | ndcg@10 mean ± sd | ndcg@10 per seed | recall@100 mean ± sd | Δ ndcg@10 vs {base} "
        "| p (t / randomisation) | Δ recall@100 (p t) | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        n, r = row["ndcg@10"], row["recall@100"]
        sd = lambda m: "" if m["sd"] is None else f" ± {m['sd']:.4f}"  # noqa: E731
        c = row.get("vs_" + base, {}).get("ndcg@10")
        delta = f"{c['delta']:+.4f}" if c else ""
        p = f"{c['t_p_value']:.3f} / {c['randomization_p_value']:.3f}" if c else ""
        seeds = ", ".join(f"{m['ndcg@10']:.4f}" for m in row["per_seed"].values())
        cr = row.get("vs_" + base, {}).get("recall@100")
        recall = f"{cr['delta']:+.4f} ({cr['t_p_value']:.3f})" if cr else ""
        lines.append(f"| {name} | {n['mean']:.4f}{sd(n)} | {seeds} | {r['mean']:.4f}{sd(r)} | {delta} | {p} "
                     f"| {recall} | {_steps(row['steps'])} |")  # fmt: skip
    return "\n".join(lines + generality_markdown(result))


def generality_markdown(result: dict) -> list[str]:
    """The zero-shot tables of :func:`seed_stats.generality` (``result["generality"]``), as lines; none without it."""
    lines: list[str] = []
    for data, g in result.get("generality", {}).items():
        lines += ["", f"Zero-shot on {data} (test ndcg@10; the start model: {g['start_model_ndcg@10']:.4f}):", "",
                  "| variant | ndcg@10 mean ± sd | per seed | Δ vs start model | p (t / randomisation) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, v in g["variants"].items():
            sd, seeds = "" if v["sd"] is None else f" ± {v['sd']:.4f}", ", ".join(f"{x:.4f}" for x in v["per_seed"])
            lines.append(f"| {name} | {v['mean']:.4f}{sd} | {seeds} | {v['delta_vs_start']:+.4f} "
                         f"| {v['t_p_value']:.3f} / {v['randomization_p_value']:.3f} |")  # fmt: skip
    return lines
