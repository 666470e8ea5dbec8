"""RESULTS.md's generated tables: one function per benchmark, from its record (``record["figures"]``) to Markdown.

``benchmarks/run.py --render`` calls them through its registry (:mod:`record`'s ``render_results``
rewrites the ``<!-- table: NAME -->`` blocks); each returns the table and the notes under it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def render_encode(record: dict) -> str:
    f = record["figures"]
    ratios, cosines = f.get("ratio_vs_st_torch", {}), f.get("min_cosine_vs_densekit_torch", {})
    rows = [
        [name, rate, ratios.get(name), cosines.get(name), ", ".join(map(str, f["all_rounds_docs_per_s"][name]))]
        for name, rate in f["docs_per_s"].items()
    ]
    rows += [[name, "unavailable", "", "", why] for name, why in f.get("unavailable", {}).items()]
    rows.append(["**ratio densekit / ST (torch)**", f"**{f['ratio_densekit_vs_st']:.3f}x**", "", "", ""])
    if "fastest_densekit" in f:
        rows.append([f"**fastest densekit ({f['fastest_densekit']}) / ST torch**",
                     f"**{f['ratio_fastest_vs_st_torch']:.3f}x**", "", "", ""])  # fmt: skip
        rows.append([f"**fastest densekit / fastest ST ({f['fastest_st']})**",
                     f"**{f['ratio_fastest_vs_st_fastest']:.3f}x**", "", "", ""])  # fmt: skip
    out = table(["encoder", "docs/s (median)", "x ST torch", "min cosine vs torch", "rounds"], rows)
    if f.get("latency"):
        lat = [
            [name, *(f"{v[part]['p50_ms']:.2f} / {v[part]['p99_ms']:.2f}" for part in ("encode", "flat", "hnsw"))]
            for name, v in f["latency"].items()
        ]
        out += "\n\nSingle short query, ms p50 / p99:\n\n" + table(["encoder", "encode", "+ Flat", "+ HNSW"], lat)
    if f.get("ndcg_at_10"):
        out += "\n\n" + table(["densekit backend", "nDCG@10"], [[k, v] for k, v in f["ndcg_at_10"].items()])
    if f.get("st_environment"):  # sentence-transformers ran in its own environment (--st-python)
        versions = ", ".join(f"{k} {v}" for k, v in f["st_environment"].get("versions", {}).items())
        out += f"\n\nsentence-transformers rows ran in a second environment ({versions}), timed inside it."
    return out


def render_mining(record: dict) -> str:
    f = record["figures"]
    rows = []
    for lib in ("sentence-transformers", "densekit"):
        runs = ", ".join(f"{s:.2f}" for s in f["seconds"][lib])
        traced = f["traced_peak_mb"][lib]
        rows.append(
            [lib, f"{f['median_seconds'][lib]:.2f}", runs, round(f["peak_rss_mb"][lib]), traced and round(traced, 1)]
        )
    rows.append(["**ratio densekit / ST**", f"**{f['ratio_densekit_over_st']:.3f}x**", "", "", ""])
    agree = f["agreement"]
    return (
        table(["library", "median s", "runs (s)", "peak RSS MB", "peak traced MB"], rows)
        + f"\n\nSame negative ids for {agree['same_ids']} of {agree['queries']} queries; differing: "
        + (", ".join(agree["differing"]) or "none")
        + "."
    )


def render_index(record: dict) -> str:
    import index as index_bench  # benchmarks/index.py renders its own tables

    return "\n\n".join(index_bench.markdown(d) for d in record["figures"]["datasets"])


def render_bm25(record: dict) -> str:
    results = record["figures"]["results"]
    lucene = {r["corpus"]: r for r in results if r["backend"] == "lucene" and "error" not in r}

    def ratio(r: dict, key: str) -> str | None:
        anchor = lucene.get(r["corpus"])
        return f"{r[key] / anchor[key]:.3g}x" if anchor and anchor[key] else None

    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["corpus"], r["backend"], r["error"], *[""] * 8])
            continue
        qps = f"{r['qps']:.1f}" + (f" (partial: {r['searched']} of {r['queries']} queries)" if r["partial"] else "")
        index_mb = round(r["peak_rss_mb"] - r["rss_before_mb"])  # as bm25.py defines it
        rows.append(
            [
                r["corpus"],
                r["backend"],
                f"{r['build_s']:.1f}",
                ratio(r, "build_s"),
                qps,
                ratio(r, "qps"),
                round(r["peak_rss_mb"]),
                ratio(r, "peak_rss_mb"),
                index_mb,
                r["documents"],
                r.get("ndcg@10"),
            ]
        )
    header = ["corpus", "backend", "build s", "x Lucene", "QPS", "x Lucene", "peak RSS MB", "x Lucene", "index MB"]
    return table([*header, "documents", "nDCG@10"], rows)


def render_train(record: dict) -> str:
    f = record["figures"]
    rows = [
        [r["round"], r["first"], r["densekit_examples_per_s"], r["st_examples_per_s"], f"{r['ratio']:.3f}"]
        for r in f["throughput_rounds"]
    ]
    rows.append(["**mean**", "", "", "", f"**{f['throughput_ratio_mean']:.3f}x**"])
    return table(["round", "first", "densekit examples/s", "sentence-transformers examples/s", "ratio"], rows)


def render_precision(record: dict) -> str:
    f = record["figures"]
    if "bf16" in f:
        return f"bf16 {f['bf16']}."
    rows = [[r["round"], r["first"], r["no_seconds_per_step"], r["bf16_seconds_per_step"], f"{r['speedup']:.3f}",
             r["max_loss_drift"]] for r in f["rounds"]]  # fmt: skip
    rows.append(["**mean**", "", "", "", f"**{f['speedup_mean']:.3f}x**", ""])
    header = ["round", "first", "float32 s/step", "bf16 s/step", "speed-up", "max per-step loss drift"]
    note = f"\n\n{f['data']}, {f['model']}, batch {f['batch_size']}, {f['steps']} steps per run, device {f['device']}."
    return table(header, rows) + note


def render_train_quality(record: dict) -> str:
    import train_quality

    f = record["figures"]
    walls = [r["wall_s"] for r in f["per_seed"].values() if not r["reused"] and r["wall_s"]]
    note = (f"\n\n{f['data']}, {f['model']}, seeds {', '.join(map(str, f['seeds']))}; {f['queries']} training queries "
            f"with a mined negative; each seed one process of benchmarks/train.py"
            + (f" ({min(walls) / 60:.0f}-{max(walls) / 60:.0f} min each)." if walls else "."))  # fmt: skip
    return train_quality.markdown(f) + note


def render_matryoshka(record: dict) -> str:
    f = record["figures"]
    models = list(f["metrics"])
    rows = [
        [
            dim,
            *(f["metrics"][m][str(dim)]["ndcg@10"] for m in models),
            *(f["metrics"][m][str(dim)]["recall@100"] for m in models),
        ]
        for dim in f["dims"]
    ]
    header = ["dims", *(f"ndcg@10 {m}" for m in models), *(f"recall@100 {m}" for m in models)]
    walls = ", ".join(f"{name} {s:.0f} s" for name, s in f["train_wall_s"].items())
    return table(header, rows) + f"\n\n{f['steps']} training steps each; training wall time: {walls}."


def render_ablation(record: dict) -> str:
    import ablation_table

    f = record["figures"]
    steps = "the same" if f["same_steps"] else "**not the same**"
    data = f"{f['data']} ({f['train_split']} -> {f['eval_split']})"
    if f.get("dev_slice"):
        d = f["dev_slice"]
        data = (f"{Path(d['source']).name} {d['split']} less its dev slice ({d['train_queries']} queries) "
                f"-> the slice ({d['dev_queries']} queries, fraction {d['fraction']}, seed {d['seed']}; "
                "test not read)")  # fmt: skip
    units = ("pooled over every seed's queries and by query with each query averaged over the seeds"
             if any("query" in c for row in f["variants"].values() for c in row.get("vs_" + f["baseline"], {}).values())
             else "paired over every seed's queries")  # fmt: skip
    note = (f"\n\n{data}, {f['model']}, seeds "
            f"{', '.join(map(str, f['seeds']))}; {steps} number of steps in every run; p-values {units} against "
            f"{f['baseline']}.")  # fmt: skip
    stages = f.get("stages", [])
    if stages:
        loads = [x for stage in stages for x in (stage.get("load_before_after") or [])]
        kept = sum(1 for stage in stages if stage.get("reused"))
        note += f" {len(stages)} stages (mining, training, evaluation), {f['stages_wall_s'] / 3600:.1f} hours in all"
        if loads:
            note += f", load average (1 min) {min(loads):.2f}-{max(loads):.2f} around them"
        if kept:
            note += f"; {kept} kept from an earlier run of the same command"
        cpus = Counter(stage.get("cpu") or "CPU not recorded" for stage in stages)
        note += "; stages ran on " + ", ".join(f"{cpu} ({n})" for cpu, n in cpus.most_common()) + "."
    return ablation_table.markdown(f) + note


def _seed_wall(seed_record: dict) -> str:
    """'35 min'; 'reused ...' when earlier runs finished every stage; which stages ran when only some did."""
    stages = seed_record.get("stages") or {}
    ran = [name for name, stage in stages.items() if stage.get("status") == "ran"]
    reused = [name for name, stage in stages.items() if stage.get("status") == "skipped"]
    if stages and not ran:
        return "reused (done by an earlier run)"
    wall = f"{seed_record['wall_s'] / 60:.0f} min"
    return f"{wall} (this run: {', '.join(ran)}; {', '.join(reused)} done by earlier runs)" if reused else wall


def render_finetune(record: dict) -> str:
    import finetune

    from densekit.finetune.report import teacher_check

    f = record["figures"]
    seeds = f["per_seed"]
    walls = ", ".join(f"seed {s} {_seed_wall(r)}" for s, r in seeds.items())
    loads = [x for r in seeds.values() for x in r["load_before_after"]]
    first = next(iter(seeds.values()))
    teacher = first.get("teacher")  # records before the teacher check have none
    teacher_note = f" The first seed's cross-encoder {teacher_check(teacher)}." if teacher else ""
    note = (f"\n\n{f['data']}, {f['model']}, seeds {', '.join(map(str, f['seeds']))}; dev slice "
            f"{first['split']['dev_queries']} of {first['split']['train_queries'] + first['split']['dev_queries']} "
            f"training queries; distillation chosen on dev by the first seed: {f['chosen_on_dev_by_first_seed']}; "
            f"wall time {walls}; load average (1 min) {min(loads):.2f}-{max(loads):.2f} around them.")  # fmt: skip
    return finetune.markdown(f) + note + teacher_note


def render_rerank(record: dict) -> str:
    import rerank

    f = record["figures"]
    ce = f["cross_encoder"]
    wall = f"{ce['train_wall_s']:.0f} s of training" if ce.get("train_wall_s") else "trained before the record"
    return (
        rerank.markdown(f)
        + f"\n\nCross-encoder: {ce['used']} ({ce['steps']} steps, {wall}); wall time {f['wall_s']:.0f} s."
    )


def render_serve(record: dict) -> str:
    keys = ("p50_ms", "p99_ms", "requests_per_s", "failed", "lost", "different")
    rows = [[r["clients"], r["requests"], *(r.get(k) for k in keys)] for r in record["figures"]["rows"]]
    return table(["clients", "requests", "p50 ms", "p99 ms", "requests/s", "failed", "lost", "different"], rows)


def render_milvus(record: dict) -> str:
    keys = [
        "backend",
        "index",
        "ingest_s",
        "vectors_per_s",
        "ready_s",
        "peak_rss_mb",
        "rss_growth_mb",
        "qps",
        "recall@10",
    ]
    return f"{record['figures']['size']:,} vectors\n\n" + table(
        keys, [[r[k] for k in keys] for r in record["figures"]["rows"]]
    )


def render_scaling(record: dict) -> str:
    f = record["figures"]
    rows = [[p.get(k) for k in f["columns"]] for p in f["points"]]
    slopes = "; ".join(f"{k}: {v}" for k, v in f["slopes"].items())
    return table(f["columns"], rows) + f"\n\nFitted log-log slopes: {slopes}. Plot: `{f['plot']}`."
