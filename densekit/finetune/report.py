"""The finetune report: dev and test metrics of the base, fine-tuned and reranked models, and the
dev ndcg@10 curve of every trained candidate.

:func:`evaluate_models` scores, on each split given, the base encoder, the fine-tuned encoder and the
fine-tuned encoder's top `rerank_depth` reranked by the cross-encoder (the dense run is computed once
and reranked, not searched twice), and that reranking blended with the fine-tuned model's own score
(:func:`densekit.retriever.rerank.blend_runs`), its weight and normalisation chosen on dev.
:func:`write_report` writes ``report.json``, ``report.md`` (the metrics table) and ``dev_ndcg.png``
(matplotlib, Agg backend) into the finetune folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from densekit.data import Run
from densekit.io import atomic_file, write_json

METRICS = ("ndcg@10", "recall@100")
DEPTH = 1000


class FixedRun:
    """A computed run behind the Retriever protocol (the reranker's first stage)."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def search(self, queries: dict[str, str], k: int) -> Run:
        return Run({q: self.run.get(q, [])[:k] for q in queries})


def evaluate_models(
    base: str,
    tuned: str,
    cross_encoder: str | None,
    dev: tuple[Path, str],
    test: tuple[str, str] | None,
    rerank_depth: int = 100,
    device: str | None = None,
    batch_size: int = 64,
    runs_dir: Path | None = None,
    refit: str | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict]:
    """``{split: {"base" | "finetuned" | "reranked" | "blended" | "refit": {metric: value}}}`` for dev and
    (when given) test, and the blend chosen on dev: ``{"weight", "normalization", "dev_sweep"}``
    (:func:`densekit.retriever.rerank.choose_blend` on dev ndcg@10; the sweep's scores rounded to 6 digits).

    `refit` (the fine-tuned recipe trained again with the dev slice) is scored on test only: dev trained it.
    Without a `cross_encoder` there are no "reranked" and "blended" rows and the blend is ``{}``.

    `dev` and `test` are (dataset, split); both must share one corpus (the dev slice's folder links it).
    With `runs_dir`, every run is also written there as ``{split}-{label}.trec`` (TREC format), so
    two finetune folders (seeds, recipes) can be compared query by query (`densekit compare`).
    """
    from densekit.data import load_dataset
    from densekit.eval.harness import evaluate_run
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.rerank import CrossEncoderReranker, blend_runs, choose_blend

    datasets = {"dev": load_dataset(dev[0], split=dev[1])}
    if test is not None:
        datasets["test"] = load_dataset(test[0], split=test[1])
    corpus = datasets["dev"].corpus
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in datasets}
    runs: dict[str, Run] = {}
    for label, model in (("base", base), ("finetuned", tuned)):
        retriever = DenseRetriever.build(Encoder(model, device=device, batch_size=batch_size), corpus)
        for name, ds in datasets.items():
            run = retriever.search(ds.queries, DEPTH)
            results[name][label] = dict(evaluate_run(run, ds, METRICS).result.metrics)
            _keep(run, runs_dir, f"{name}-{label}")
            if label == "finetuned":
                runs[name] = run
    if refit is not None and "test" in datasets:
        run = DenseRetriever.build(Encoder(refit, device=device, batch_size=batch_size), corpus).search(
            datasets["test"].queries, DEPTH
        )
        results["test"]["refit"] = dict(evaluate_run(run, datasets["test"], METRICS).result.metrics)
        _keep(run, runs_dir, "test-refit")
    blend: dict = {}
    for name, ds in datasets.items() if cross_encoder is not None else ():  # dev first: the blend is chosen there
        reranker = CrossEncoderReranker(FixedRun(runs[name]), cross_encoder, corpus, depth=rerank_depth, device=device)
        run = reranker.search(ds.queries, rerank_depth)
        results[name]["reranked"] = dict(evaluate_run(run, ds, METRICS).result.metrics)
        _keep(run, runs_dir, f"{name}-reranked")
        first = Run({q: runs[name].get(q, [])[:rerank_depth] for q in ds.queries})
        if name == "dev":
            blend = choose_blend(
                first, run, lambda r, ds=ds: evaluate_run(r, ds, ("ndcg@10",)).result.metrics["ndcg@10"]
            )
            blend["dev_sweep"] = [[n, w, round(v, 6)] for n, w, v in blend["dev_sweep"]]
        blended = blend_runs(first, run, blend["weight"], blend["normalization"])
        results[name]["blended"] = dict(evaluate_run(blended, ds, METRICS).result.metrics)
        _keep(blended, runs_dir, f"{name}-blended")
    return results, blend


def _keep(run: Run, runs_dir: Path | None, name: str) -> None:
    if runs_dir is not None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        run.write_trec(runs_dir / f"{name}.trec", tag=name)


def dev_curves(output: Path, runs: dict[str, dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, dev ndcg@10) of each candidate, from its metrics.jsonl (paths relative to `output`)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for candidate, run in runs.items():
        points = []
        path = output / run["metrics_log"]
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line) if line.strip() else {}
                if "eval" in record:
                    points.append((int(record["step"]), float(record["eval"]["ndcg@10"])))
        curves[candidate] = points
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], chosen: str, path: Path) -> None:
    """A PNG of dev ndcg@10 over training steps, one line per candidate (the kept one marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for candidate, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            label = f"distill {candidate}" + (" (kept)" if candidate == chosen else "")
            ax.plot(steps, values, marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("dev ndcg@10")
    ax.set_title("dev ndcg@10 during bi-encoder training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def teacher_check(teacher: dict) -> str:
    """The teacher check's verdict (the score stage's ``teacher`` output) as one Markdown clause."""
    if teacher.get("off"):
        return "was not trained (--no-cross-encoder): no teacher, no reranking"
    ce = teacher["ce_dev_ndcg@10"]
    verdict = (
        "teaches (its filter, the distillation candidates)"
        if teacher["teaches"]
        else "**does not teach** (mined negatives kept, no distillation)"
    )
    return (
        f"reranks the dev slice to ndcg@10 {'-' if ce is None else f'{ce:.4f}'} against the base model's "
        f"{teacher['base_dev_ndcg@10']:.4f}: it {verdict}"
    )


def markdown(
    results: dict[str, dict[str, dict[str, float]]], chosen: str, split: dict, teacher: dict, blend: dict | None = None
) -> str:
    """The report's Markdown: the metrics table and what was chosen on dev."""
    check = f"The cross-encoder {teacher_check(teacher)}."
    if blend:
        check += f" Blend: fine-tuned score weight {blend['weight']:.1f} ({blend['normalization']}), chosen on dev."
    lines = [
        "# densekit finetune report",
        "",
        f"Dev slice: {split['dev_queries']} of the {split['split']!r} split's queries held out "
        f"(train on {split['train_queries']}). {check} Distillation kept (best dev ndcg@10): **{chosen}**.",
        "",
        "| split | model | ndcg@10 | recall@100 |",
        "|---|---|---:|---:|",
    ]
    names = {
        "base": "base",
        "finetuned": "fine-tuned",
        "reranked": "fine-tuned + cross-encoder",
        "blended": "fine-tuned + cross-encoder, blended with the fine-tuned score (weight chosen on dev)",
        "refit": "fine-tuned, refit with the dev slice (delivered)",
    }
    for split_name, rows in results.items():
        for label, metrics in rows.items():
            lines.append(f"| {split_name} | {names[label]} | {metrics['ndcg@10']:.4f} | {metrics['recall@100']:.4f} |")
    lines += ["", "![dev ndcg@10 over steps](dev_ndcg.png)", ""]
    return "\n".join(lines)


def write_report(output: Path, config: Any, outputs: dict[str, dict], stages: dict[str, dict]) -> dict:
    """Write report.json, report.md and dev_ndcg.png into `output`; return the paths and the metrics."""
    results = outputs["eval"]["metrics"]
    train = outputs["train"]
    curves = dev_curves(output, train["runs"])
    plot = output / "dev_ndcg.png"
    plot_curves(curves, train["chosen"], plot)
    split = {k: v for k, v in outputs["split"].items() if k != "dev_ids"}
    report = {
        "config": config.to_json(),
        "split": split,
        "chosen": {"distill": train["chosen"], "best": train["runs"][train["chosen"]]["best"]},
        "candidates": {c: r["best"] for c, r in train["runs"].items()},
        "reranker_best": outputs["reranker"]["best"] if config.cross_encoder else None,
        "teacher": outputs["score"]["teacher"],
        "refit": outputs.get("refit"),
        "metrics": results,
        "rerank_blend": outputs["eval"].get("blend"),
        "dev_curves": {c: [list(p) for p in points] for c, points in curves.items()},
        "model": str(output / "model"),
        "cross_encoder": str(output / "cross-encoder") if config.cross_encoder else None,
        "negatives": str(output / "negatives.jsonl"),
        "stages": stages,
    }
    write_json(output / "report.json", report)
    with atomic_file(output / "report.md") as handle:
        handle.write(markdown(results, train["chosen"], split, report["teacher"], report["rerank_blend"]))
    return {
        "report": str(output / "report.json"),
        "report_md": str(output / "report.md"),
        "plot": str(plot),
        "model": report["model"],
        "cross_encoder": report["cross_encoder"],
        "negatives": report["negatives"],
        "chosen": train["chosen"],
        "teacher": report["teacher"],
        "metrics": results,
    }
