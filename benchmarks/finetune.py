"""`densekit finetune` over several seeds: the whole recipe's result as one record (issue 15).

The first seed runs every stage of `densekit finetune` (dev slice, mining, cross-encoder, scoring,
bi-encoder candidates chosen on dev, evaluation). Each later seed starts from a copy of the first
seed's folder and reruns it with ``--seed S``: the finetune `seed` is the bi-encoder's alone
(`teacher_seed` stays), so the dev slice, the mined and scored negatives and the cross-encoder are
kept and only the train and eval stages run again. With ``--choose-once`` (the default) a later seed
trains only the distillation candidate the first seed chose on its dev slice; the choice is never
made on the test split.

Reported per seed and as mean ± sd: dev and test ndcg@10 and recall@100 of the start model, the
fine-tuned model and the fine-tuned model reranked by the cross-encoder, the chosen candidate and the
stage times; and, pooled over every seed's test queries (query q of seed s paired with q of the same
seed), the paired tests (:func:`seed_stats.paired`) of fine-tuned against the start model, reranked
against fine-tuned, and, with ``--baseline DIR`` (another run of this script, e.g. another recipe),
fine-tuned against that run's fine-tuned model at the same seeds.

Every finetune folder is kept in ``--out`` and `densekit finetune` skips its finished stages, so an
interrupted run is continued by running the same command again.

    DENSEKIT_DATA=../shared/data/beir python benchmarks/finetune.py --data scifact --out /tmp/ft \\
        --seeds 1,2,3 --finetune-args "--mine-method naive --score-depth 30 --eval-steps 25" --json-out /tmp/ft.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ablation_table import generality_markdown
from commands import DENSEKIT, emit, eval_command, parse_seeds, settings_of
from seed_stats import generality, paired, spread

LABELS = ("base", "finetuned", "reranked", "blended", "refit")  # refit: test only; blended: folders from 2026-12-04 on
METRICS = ["ndcg@10", "recall@100"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="scifact", help="BEIR name or folder (with the training and test splits)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="start model")
    p.add_argument("--out", type=Path, required=True, help="one finetune folder per seed (rerun to continue)")
    p.add_argument("--seeds", default="1,2,3", help="bi-encoder seeds, comma-separated; the first runs every stage")
    p.add_argument("--config", type=Path, help="a finetune TOML file (densekit finetune --config)")
    p.add_argument("--finetune-args", action="append", default=[],
                   help="more `densekit finetune` options, one string; repeatable (a later one overrides)")  # fmt: skip
    p.add_argument("--every-candidate", action="store_true",
                   help="every seed trains every distillation candidate (default: seed 1's dev choice)")  # fmt: skip
    p.add_argument("--baseline", type=Path, help="another run's --out: fine-tuned models compared at the same seeds")
    p.add_argument("--generality", default="",
                   help="comma-separated datasets whose test split the start model and each seed's model are "
                   "scored on zero-shot, paired (no collapse elsewhere)")  # fmt: skip
    p.add_argument("--device", help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, help="OMP threads of every process")
    p.add_argument("--json-out", type=Path, help="write the result JSON here too")
    p.add_argument("--markdown-out", type=Path, help="write the table here")
    return p.parse_args(argv)


def finetune_command(args: argparse.Namespace, folder: Path, seed: int, distill: str | None) -> list[str]:
    command = [DENSEKIT, "finetune", args.data, "-m", args.model, "-o", str(folder), "--seed", str(seed)]
    if args.config:
        command += ["--config", str(args.config)]
    command += [word for text in args.finetune_args for word in shlex.split(text)]
    if distill:
        command += ["--distill", distill]
    if args.device:
        command += ["--device", args.device]
    return [*command, "--json", "--quiet"]


def run_seed(args: argparse.Namespace, seed: int, first: Path | None, distill: str | None) -> dict:
    """Finetune at `seed` (from a copy of the first seed's folder when given); its report and run facts."""
    folder = args.out / f"seed{seed}"
    if first is not None and not folder.exists():
        staging = folder.with_name(folder.name + ".copying")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(first, staging)
        staging.rename(folder)
    command = finetune_command(args, folder, seed, distill)
    print(f"[finetune] seed {seed}: {' '.join(command)}", file=sys.stderr, flush=True)
    load_before, start = round(os.getloadavg()[0], 2), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[finetune] seed {seed} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return {
        "folder": folder,
        "command": command,
        "wall_s": round(time.perf_counter() - start, 1),
        "load_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "report": report,
    }


def zero_shot(data: str, model: Path | str, run: Path, device: str | None) -> Path:
    """The TREC run (top 100) of `model` on `data`'s test split, written once to `run` and reused (the
    file name carries the finetune folder's eval fingerprint, so a retrained model gets a new run)."""
    if run.is_file():
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    partial = run.with_name(run.name + ".partial")
    command = eval_command(data, model, "test", partial, device)
    print(f"[finetune] zero-shot: {' '.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[finetune] zero-shot on {data} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    partial.rename(run)
    return run


def zero_shot_elsewhere(args: argparse.Namespace, seeds: dict[int, dict]) -> dict:
    """`--generality`: per dataset, each seed's model against the start model (seed_stats.generality)."""
    result = {}
    for data in [d.strip() for d in args.generality.split(",") if d.strip()]:
        folder = args.out / "generality" / Path(data).name
        base = zero_shot(data, args.model, folder / "start-model.trec", args.device)
        tuned = {
            s: zero_shot(
                data,
                r["folder"] / "model",
                folder / f"seed{s}-{r['report']['stages']['eval']['fingerprint']}.trec",
                args.device,
            )
            for s, r in seeds.items()
        }
        result[data] = generality(data, base, {"finetuned": tuned})
    return result


def test_runs(folder: Path, label: str) -> Path:
    return folder / "eval" / "runs" / f"test-{label}.trec"


def summarise(seeds: dict[int, dict], baseline: Path | None, data: str) -> dict:
    """Means, sds, per-seed values and the pooled paired test comparisons (module docstring)."""
    from densekit.data import Run, load_dataset

    rows: dict = {}
    for split in ("dev", "test"):
        for label in LABELS:
            per_seed = {s: r["report"]["metrics"].get(split, {}).get(label) for s, r in seeds.items()}
            if any(v is None for v in per_seed.values()):
                continue
            rows[f"{split}/{label}"] = {
                "per_seed": {str(s): {m: round(v[m], 4) for m in METRICS} for s, v in per_seed.items()},
                **{m: spread([v[m] for v in per_seed.values()]) for m in METRICS},
            }
    comparisons = {}
    if all(test_runs(r["folder"], "finetuned").is_file() for r in seeds.values()):
        qrels = load_dataset(data, split="test").qrels
        read = {
            label: {s: Run.read_trec(test_runs(r["folder"], label)) for s, r in seeds.items()}
            for label in LABELS
            if all(test_runs(r["folder"], label).is_file() for r in seeds.values())
        }
        comparisons["finetuned_vs_base"] = paired(read["base"], read["finetuned"], qrels, METRICS)
        if "reranked" in read:  # not with --no-cross-encoder
            comparisons["reranked_vs_finetuned"] = paired(read["finetuned"], read["reranked"], qrels, METRICS)
        if "blended" in read:
            comparisons["blended_vs_finetuned"] = paired(read["finetuned"], read["blended"], qrels, METRICS)
        if "refit" in read:
            comparisons["refit_vs_finetuned"] = paired(read["finetuned"], read["refit"], qrels, METRICS)
        if baseline is not None:
            other = {s: Run.read_trec(test_runs(baseline / f"seed{s}", "finetuned")) for s in seeds}
            comparisons["finetuned_vs_baseline"] = paired(other, read["finetuned"], qrels, METRICS)
    return {"rows": rows, "comparisons": comparisons}


def markdown(result: dict) -> str:
    """The metrics table (mean ± sd and per seed) and the paired comparisons."""
    lines = ["| split | model | ndcg@10 mean ± sd | ndcg@10 per seed | recall@100 mean ± sd |", "|---|---|---|---|---|"]
    for key, row in result["rows"].items():
        split, label = key.split("/")
        sd = lambda m: "" if m["sd"] is None else f" ± {m['sd']:.4f}"  # noqa: E731
        n, r = row["ndcg@10"], row["recall@100"]
        seeds = ", ".join(f"{v['ndcg@10']:.4f}" for v in row["per_seed"].values())
        lines.append(f"| {split} | {label} | {n['mean']:.4f}{sd(n)} | {seeds} | {r['mean']:.4f}{sd(r)} |")
    if result["comparisons"]:
        header = "| test comparison (pooled over seeds) | Δ ndcg@10 | p (t / randomisation) | Δ recall@100 (p t) |"
        lines += ["", header, "|---|---|---|---|"]
        for name, c in result["comparisons"].items():
            n, r = c["ndcg@10"], c["recall@100"]
            label = name.replace("_", " ") + (" (by query: one start-model run)" if n.get("unit") == "query" else "")
            lines.append(f"| {label} | {n['delta']:+.4f} | {n['t_p_value']:.3f} / "
                         f"{n['randomization_p_value']:.3f} | {r['delta']:+.4f} ({r['t_p_value']:.3f}) |")  # fmt: skip
    return "\n".join(lines + generality_markdown(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every densekit subprocess inherits it
    seeds = parse_seeds(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done: dict[int, dict] = {seeds[0]: run_seed(args, seeds[0], None, None)}
    first = done[seeds[0]]
    chosen = first["report"]["chosen"]["distill"]
    for seed in seeds[1:]:
        done[seed] = run_seed(args, seed, first["folder"], None if args.every_candidate else chosen)
    summary = summarise(done, args.baseline, args.data)
    elsewhere = zero_shot_elsewhere(args, done)
    result = {
        "data": args.data,
        "model": args.model,
        "seeds": seeds,
        "settings": settings_of(args),
        "chosen_on_dev_by_first_seed": chosen,
        "per_seed": {
            str(s): {
                "chosen": r["report"]["chosen"],
                "candidates_dev": r["report"]["candidates"],
                "teacher": r["report"]["teacher"],
                "command": r["command"],
                "wall_s": r["wall_s"],
                "load_before_after": r["load_before_after"],
                "stages": r["report"]["stages"],
                "split": {k: v for k, v in r["report"]["split"].items() if k != "dev_ids"},
            }
            for s, r in done.items()
        },
        **summary,
        **({"generality": elsewhere} if elsewhere else {}),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return emit(result, markdown(result), args)


if __name__ == "__main__":
    sys.exit(main())
