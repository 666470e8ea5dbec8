"""The ablation's tables (benchmarks/ablation.py's result as Markdown): what RESULTS.md and the docs show."""

from __future__ import annotations


def _steps(steps: int | list[int]) -> str:
    """`58`, or `50-51` when the seeds trained for different numbers of steps (a list from newer records)."""
    if isinstance(steps, int):
        return str(steps)
    return "-".join(str(n) for n in (min(steps), max(steps))) if len(set(steps)) > 1 else str(steps[0])


def p_value(p: float) -> str:
    """`0.157`, or `<0.001` where three decimals would print a misleading 0.000."""
    return "<0.001" if p < 0.0005 else f"{p:.3f}"


def markdown(result: dict) -> str:
    """The ablation table (what RESULTS.md and docs show)."""
    base = result["baseline"]
    walls, loads = train_walls(result), stage_loads(result)
    head, rule = _load_column(loads)
    lines = [
        f"| variant | ndcg@10 mean ± sd | ndcg@10 per seed | recall@100 mean ± sd | Δ ndcg@10 vs {base} "
        "| p seed-queries pooled (t / rand.) | p by query, seeds averaged (t / rand.) | Δ recall@100 (p t pooled "
        "/ by query) | steps | train wall s per seed |" + head,
        "|---|---|---|---|---|---|---|---|---|---|" + rule,
    ]
    for name, row in result["variants"].items():
        n, r = row["ndcg@10"], row["recall@100"]
        sd = lambda m: "" if m["sd"] is None else f" ± {m['sd']:.4f}"  # noqa: E731
        c = row.get("vs_" + base, {}).get("ndcg@10")
        delta = f"{c['delta']:+.4f}" if c else ""
        p = _p_cells(c)
        seeds = ", ".join(f"{m['ndcg@10']:.4f}" for m in row["per_seed"].values())
        cr = row.get("vs_" + base, {}).get("recall@100")
        recall = f"{cr['delta']:+.4f} ({p_value(cr['t_p_value'])} / {_query_p(cr, 't_p_value')})" if cr else ""
        lines.append(f"| {name} | {n['mean']:.4f}{sd(n)} | {seeds} | {r['mean']:.4f}{sd(r)} | {delta} | {p} "
                     f"| {recall} | {_steps(row['steps'])} | {walls.get(name, '')} |"
                     + (f" {loads.get(name, '')} |" if loads else ""))  # fmt: skip
    return "\n".join(lines + other_stages_markdown(result) + generality_markdown(result, loads))


def _query_p(comparison: dict, key: str) -> str:
    """A by-query p-value of :func:`seed_stats.paired`; records before 2026-12-06 did not compute it."""
    return p_value(comparison["query"][key]) if "query" in comparison else "not recorded"


def _p_cells(c: dict | None) -> str:
    """The two p-value cells of a row compared with the baseline: seed-queries pooled, then by query."""
    if not c:
        return " | "
    pooled = f"{p_value(c['t_p_value'])} / {p_value(c['randomization_p_value'])}"
    return f"{pooled} | {_query_p(c, 't_p_value')} / {_query_p(c, 'randomization_p_value')}"


def _model_stage(stage: dict) -> tuple[str, str] | None:
    """``("train", variant)`` or ``("eval", variant)`` for a stage of one model (``train percpos seed 1``,
    ``eval percpos seed 1``, ``eval percpos-seed1 on nfcorpus``); None for a shared stage (mining, cross-encoder)."""
    words = stage["stage"].split()
    if words[0] not in ("train", "eval") or len(words) < 2:
        return None
    return words[0], words[1].split("-seed")[0]


def _load_column(loads: dict[str, str]) -> tuple[str, str]:
    """The header and separator cells of the rows' own load column; none when the stages have no loads
    (RESULTS.md then adds the load of the run that wrote the record)."""
    return (" load avg (1 min) around its stages |", "---|") if loads else ("", "")


def train_walls(result: dict) -> dict[str, str]:
    """Variant -> its training stages' wall seconds per seed (`484, 496, 422`), from ``result["stages"]``."""
    walls: dict[str, list[str]] = {}
    for stage in result.get("stages", []):
        kind = _model_stage(stage)
        if kind and kind[0] == "train":
            walls.setdefault(kind[1], []).append(f"{stage['wall_s']:.0f}")
    return {name: ", ".join(seconds) for name, seconds in walls.items()}


def stage_loads(result: dict) -> dict[str, str]:
    """Variant -> `1.48-2.08`: the 1-minute load averages before and after its training and evaluation
    stages (``result["stages"]``; a stage kept from an earlier run brings its own); empty without stages."""
    seen: dict[str, list[float]] = {}
    for stage in result.get("stages", []):
        kind = _model_stage(stage)
        if kind and stage.get("load_before_after"):
            seen.setdefault(kind[1], []).extend(stage["load_before_after"])
    return {name: f"{min(v):.2f}-{max(v):.2f}" for name, v in seen.items()}


def other_stages_markdown(result: dict) -> list[str]:
    """One line naming the shared stages (mining, cross-encoder training) and their wall seconds; none without."""
    other = [s for s in result.get("stages", []) if _model_stage(s) is None]
    if not other:
        return []
    listed = "; ".join(f"{s['stage']} {s['wall_s']:.0f} s" for s in other)
    return ["", f"Shared stages (wall time; mining and cross-encoder training run once, not per seed): {listed}."]


def generality_markdown(result: dict, loads: dict[str, str] | None = None) -> list[str]:
    """The zero-shot tables of :func:`seed_stats.generality` (``result["generality"]``), as lines; none without it.
    `loads` is :func:`stage_loads` of the result, computed here when not given."""
    lines: list[str] = []
    loads = stage_loads(result) if loads is None else loads
    head, rule = _load_column(loads)
    for data, g in result.get("generality", {}).items():
        lines += ["", f"Zero-shot on {data} (test ndcg@10; the start model: {g['start_model_ndcg@10']:.4f}):", "",
                  f"| variant | ndcg@10 mean ± sd | per seed | Δ vs start model | p {_start_unit(g)} (t / "
                  "randomisation) |" + head,
                  "|---|---|---|---|---|" + rule]  # fmt: skip
        for name, v in g["variants"].items():
            sd, seeds = "" if v["sd"] is None else f" ± {v['sd']:.4f}", ", ".join(f"{x:.4f}" for x in v["per_seed"])
            lines.append(f"| {name} | {v['mean']:.4f}{sd} | {seeds} | {v['delta_vs_start']:+.4f} "
                         f"| {p_value(v['t_p_value'])} / {p_value(v['randomization_p_value'])} |"
                         + (f" {loads.get(name, '')} |" if loads else ""))  # fmt: skip
    return lines


def _start_unit(generality: dict) -> str:
    """How the zero-shot p-values paired the queries: by query (records from 2026-12-06), or, before, pooled
    over seed-queries against the start model's one run repeated per seed, which overstates n."""
    units = {v.get("unit") for v in generality["variants"].values()}
    return "by query, seeds averaged" if units == {"query"} else "pooled, start model repeated per seed: overstated"
