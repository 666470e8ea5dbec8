"""A cross-encoder trained by densekit as a reranker: its dev curve, the blend chosen on dev, test metrics
and paired tests against each first stage (issue 15, "Reranking").

Steps (each kept in --out and reused on a rerun):

1. the dev slice and the mined negatives: ``densekit finetune DATA --until mine`` in --finetune-folder
   (the `finetune` benchmark's seed-1 folder is such a folder: its stages are reused);
2. the cross-encoder: ``densekit train-reranker`` on those negatives with --train-args, evaluated during
   training on the dev slice (reranking the start model's dev top --eval-depth), in OUT/ce (continued with
   ``--resume`` after an interruption); or --cross-encoder, a finished train-reranker folder used as it is
   (its recipe, ``densekit_train.json``, goes into the record). Its best dev step (``best/``) reranks;
3. per first stage (--first-stages: a bi-encoder name or folder, or ``bm25``): its top --depth on the dev
   slice and on the test split, and the cross-encoder's scores of them (TREC files in OUT/runs);
4. the blend of cross-encoder and first-stage scores (:func:`densekit.retriever.rerank.blend_runs`) whose
   weight and normalisation score best on dev (`densekit finetune`'s grid), applied to test unchanged;
5. test ndcg@10 and recall@100 of the first stage, the reranked and the blended run, and the paired tests
   (``densekit compare``'s) of reranked and blended against the first stage;
6. per --seed-group (a label and the first stages that are one recipe's seeds): mean ± sd over the seeds and
   the paired tests pooled over all seeds' queries (each seed's blend chosen on dev by that seed).

Nothing is chosen on test. Usage::

    python benchmarks/rerank.py --data scifact --finetune-folder runs/ft/seed1 --out runs/rerank \\
        --train-args "--lr 1e-4 --batch-size 8 --epochs 8 --max-steps 600 --max-length 128" --json-out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from commands import DENSEKIT, emit, eval_command, settings_of
from seed_stats import paired, spread

METRICS = ["ndcg@10", "recall@100"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="scifact", help="BEIR dataset (name or folder) whose test split is reported")
    p.add_argument("--test-split", default="test")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="start model of mining and of the cross-encoder")
    p.add_argument("--finetune-folder", type=Path, required=True, help="a finetune folder (made up to `mine`)")
    p.add_argument("--finetune-args", default="", help="finetune settings for its split and mine stages")
    p.add_argument("--cross-encoder", type=Path, help="a finished train-reranker folder (else trained in OUT/ce)")
    p.add_argument("--train-args", default="", help="train-reranker settings (loss, steps, lr, batch, length)")
    p.add_argument("--eval-depth", type=int, default=30, help="dev hits reranked during training")
    p.add_argument("--first-stages", default="all-MiniLM-L6-v2", help="comma-separated: model names/folders, bm25")
    p.add_argument("--depth", type=int, default=100, help="first-stage hits the cross-encoder reranks")
    p.add_argument("--seed-group", action="append", default=[], metavar="LABEL=STAGE,STAGE,...",
                   help="first stages that are seeds of one recipe: summarised together (repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every step (0: leave)")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--markdown-out", type=Path)
    return p.parse_args(argv)


def densekit(*words: str) -> float:
    """Run `densekit WORDS` (output to stderr); its wall seconds."""
    return run_command([DENSEKIT, *words])


def run_command(command: list[str]) -> float:
    """Run one command (output to stderr); its wall seconds."""
    print(f"[rerank] {shlex.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=sys.stderr)
    if done.returncode:
        raise SystemExit(f"[rerank] failed ({done.returncode}): {shlex.join(command)}")
    return round(time.perf_counter() - start, 1)


def cross_encoder(args: argparse.Namespace, folder: Path) -> tuple[Path, dict]:
    """The trained cross-encoder's run folder and what the record says about it (recipe, dev curve, time)."""
    device = ["--device", args.device] if args.device else []
    wall = None
    if args.cross_encoder is not None:
        run = args.cross_encoder
    else:
        run = args.out / "ce"
        start = args.out / "dev-start.trec"
        if not start.is_file():
            run_command(
                eval_command(str(folder / "split" / "data"), args.model, "dev", start, args.device, args.eval_depth)
            )
        resume = ["--resume"] if (run / "checkpoints").is_dir() else []
        wall = densekit("train-reranker", "-m", args.model, "-o", str(run), "--negatives",
                        str(folder / "mine" / "negatives.jsonl"), "--corpus", str(folder / "split" / "data"),
                        "--skip-queries-without-negatives", "--eval-data", str(folder / "split" / "data"),
                        "--eval-split", "dev", "--eval-candidates", str(start), "--eval-depth", str(args.eval_depth),
                        *shlex.split(args.train_args), *resume, "--quiet", *device)  # fmt: skip
    best = run / "best" if (run / "best" / "config.json").is_file() else run / "model"
    if not (best / "config.json").is_file():
        raise SystemExit(f"[rerank] {run}: no trained cross-encoder (best/ or model/)")
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r for r in log if "loss" in r]
    info = {
        "folder": str(run),
        "used": str(best),
        "recipe": json.loads((best / "densekit_train.json").read_text()) if (best / "densekit_train.json").is_file()
        else None,
        "dev_curve": [[r["step"], round(r["eval"]["ndcg@10"], 4)] for r in log if "eval" in r],
        "loss_first_last": [losses[0]["loss"], losses[-1]["loss"]] if losses else None,
        "steps": losses[-1]["step"] if losses else None,
        "train_wall_s": wall,
    }  # fmt: skip
    return best, info


def first_stage_runs(args: argparse.Namespace, folder: Path, stage: str, name: str) -> dict[str, Path]:
    """The first stage's top --depth on the dev slice and on test, as TREC files (computed once)."""
    paths = {}
    for split, data, split_name in (("dev", str(folder / "split" / "data"), "dev"), ("test", args.data,
                                                                                        args.test_split)):  # fmt: skip
        path = args.out / "runs" / f"{name}-{split}-first.trec"
        if not path.is_file():
            if stage == "bm25":
                densekit("eval", data, "--split", split_name, "--bm25", "--backend", "bm25s", "--depth",
                         str(args.depth), "--run-out", str(path), "--quiet")  # fmt: skip
            else:
                run_command(eval_command(data, stage, split_name, path, args.device, args.depth))
        paths[split] = path
    return paths


def rescored(args: argparse.Namespace, folder: Path, model: Path, first: Path, split: str, name: str) -> tuple:
    """(first stage, cross-encoder scores of its top --depth) as Runs; the scores cached as TREC."""
    from densekit.data import Run, load_dataset
    from densekit.finetune.report import FixedRun
    from densekit.retriever.rerank import CrossEncoderReranker

    first_run = Run.read_trec(first)
    data = load_dataset(str(folder / "split" / "data") if split == "dev" else args.data,
                        split="dev" if split == "dev" else args.test_split)  # fmt: skip
    path = args.out / "runs" / f"{name}-{split}-ce.trec"
    cut = Run({q: first_run.get(q, [])[: args.depth] for q in data.queries})
    if path.is_file():
        return data, cut, Run.read_trec(path), None
    start = time.perf_counter()
    reranker = CrossEncoderReranker(FixedRun(cut), model, data.corpus, depth=args.depth, device=args.device)
    scored = reranker.search(data.queries, args.depth)
    scored.write_trec(path, tag="ce")
    return data, cut, scored, round(time.perf_counter() - start, 1)


def evaluate_stage(args: argparse.Namespace, folder: Path, model: Path, stage: str) -> tuple[dict, dict, dict]:
    """One first stage: dev sweep, chosen blend, dev and test metrics, paired tests on test. Returns the
    record's row, the test runs by label (first, reranked, blended) and the test qrels."""
    from densekit.eval.harness import evaluate_run
    from densekit.retriever.rerank import blend_runs, choose_blend

    name = "bm25" if stage == "bm25" else "-".join(Path(stage).parts[-2:])  # ".../seed1/best" -> "seed1-best"
    firsts = first_stage_runs(args, folder, stage, name)
    row: dict = {"first_stage": stage, "depth": args.depth}
    blend: dict = {}
    for split in ("dev", "test"):
        data, first, scored, seconds = rescored(args, folder, model, firsts[split], split, name)
        if split == "dev":
            blend = choose_blend(
                first, scored, lambda r, ds=data: evaluate_run(r, ds, ("ndcg@10",)).result.metrics["ndcg@10"]
            )
            blend["dev_sweep"] = [[n, w, round(v, 4)] for n, w, v in blend["dev_sweep"]]
        blended = blend_runs(first, scored, blend["weight"], blend["normalization"])
        runs = {"first": first, "reranked": blend_runs(first, scored, 0.0), "blended": blended}
        row[split] = {
            label: {m: round(v, 4) for m, v in evaluate_run(run, data, METRICS).result.metrics.items()}
            for label, run in runs.items()
        }
        row[split]["rerank_seconds"] = seconds
        row[split]["queries"] = len(data.queries)
        if split == "test":
            qrels = data.qrels
            row["paired"] = {
                f"{label}_vs_first": paired({1: first}, {1: runs[label]}, qrels, METRICS)
                for label in ("reranked", "blended")
            }
    row["blend"] = blend
    return row, runs, qrels


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    """--seed-group values (``LABEL=A,B,C``) as {label: [first stage, ...]}; a malformed one exits."""
    groups = {}
    for spec in specs:
        label, _, stages = spec.partition("=")
        members = [s.strip() for s in stages.split(",") if s.strip()]
        if not label.strip() or len(members) < 2 or label.strip() in groups:
            raise SystemExit(f"[rerank] --seed-group {spec!r}: expected a new LABEL=STAGE,STAGE,... (two or more)")
        groups[label.strip()] = members
    return groups


def summarise_group(label: str, members: list[str], rows: dict, runs: dict, qrels: dict) -> dict:
    """Mean ± sd over a group's seeds (test) and the paired tests pooled over all seeds' queries."""
    test = {}
    for kind in ("first", "reranked", "blended"):
        test[kind] = {}
        for metric in METRICS:
            values = [rows[m]["test"][kind][metric] for m in members]
            test[kind][metric] = {**spread(values), "per_seed": values}
    seeds = {m: i + 1 for i, m in enumerate(members)}
    pooled = {
        f"{kind}_vs_first": paired(
            {seeds[m]: runs[m]["first"] for m in members}, {seeds[m]: runs[m][kind] for m in members}, qrels, METRICS
        )
        for kind in ("reranked", "blended")
    }
    blends = [[rows[m]["blend"]["weight"], rows[m]["blend"]["normalization"]] for m in members]
    return {"label": label, "members": members, "test": test, "paired": pooled, "blends": blends}


def short(stage: str) -> str:
    """A first stage as the table names it: a folder by its last two parts."""
    return "/".join(Path(stage).parts[-2:])


def markdown(result: dict) -> str:
    """Dev and test rows per first stage, the paired tests on test and the cross-encoder's dev curve."""
    header = "| first stage | split | first stage | reranked | blended (weight, on dev) | recall@100 first / blended |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        b = row["blend"]
        for split in ("dev", "test"):
            r = row[split]
            first, reranked, blended = (r[k]["ndcg@10"] for k in ("first", "reranked", "blended"))
            recall = f"{r['first']['recall@100']:.4f} / {r['blended']['recall@100']:.4f}"
            chosen = f"{blended:.4f} ({b['weight']:.1f}, {b['normalization']})"
            stage = f"{short(row['first_stage'])} top {row['depth']}"
            lines.append(
                f"| {stage} | {split} ({r['queries']} q) | {first:.4f} | {reranked:.4f} | {chosen} | {recall} |"
            )
    lines += ["", "| test comparison | Δ ndcg@10 | p (t / randomisation) | wins / ties / losses |", "|---|---|---|---|"]
    for row in result["rows"]:
        for name, c in row["paired"].items():
            n = c["ndcg@10"]
            w, t, loss = n["wins_ties_losses"]
            lines.append(f"| {short(row['first_stage'])}: {name.replace('_', ' ')} | {n['delta']:+.4f} | "
                         f"{n['t_p_value']:.3f} / {n['randomization_p_value']:.3f} | {w} / {t} / {loss} |")  # fmt: skip
    if result.get("groups"):
        lines += ["", "| seeds of one recipe (test) | first stage | reranked | blended (weights on dev) | "
                  "blended vs first: Δ, p (t / randomisation), wins / ties / losses over all seeds' queries |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for g in result["groups"]:
            t = g["test"]
            cell = {k: f"{t[k]['ndcg@10']['mean']:.4f} ± {t[k]['ndcg@10']['sd']:.4f}" for k in t}
            weights = ", ".join(f"{w:.1f} {n}" for w, n in g["blends"])
            n = g["paired"]["blended_vs_first"]["ndcg@10"]
            w, ties, loss = n["wins_ties_losses"]
            lines.append(f"| {g['label']} ({len(g['members'])} seeds) | {cell['first']} | {cell['reranked']} | "
                         f"{cell['blended']} ({weights}) | {n['delta']:+.4f}, {n['t_p_value']:.3f} / "
                         f"{n['randomization_p_value']:.3f}, {w} / {ties} / {loss} |")  # fmt: skip
    curve = ", ".join(f"{s}: {v:.4f}" for s, v in result["cross_encoder"]["dev_curve"])
    depth = result["settings"]["eval_depth"]
    lines += ["", f"All ndcg@10. Cross-encoder dev ndcg@10 by step (the start model's dev top {depth}): {curve}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    groups = parse_groups(args.seed_group)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folder = args.finetune_folder
    device = ["--device", args.device] if args.device else []
    densekit("finetune", args.data, "-m", args.model, "-o", str(folder), *shlex.split(args.finetune_args),
             "--until", "mine", "--quiet", *device)  # fmt: skip
    stages = [s.strip() for s in args.first_stages.split(",") if s.strip()]
    stages += [m for members in groups.values() for m in members if m not in stages]
    model, info = cross_encoder(args, folder)
    rows, runs, qrels = {}, {}, {}
    for stage in stages:
        rows[stage], runs[stage], qrels = evaluate_stage(args, folder, model, stage)
    result = {
        "data": args.data,
        "settings": settings_of(args),
        "cross_encoder": info,
        "rows": list(rows.values()),
        "groups": [summarise_group(label, members, rows, runs, qrels) for label, members in groups.items()],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return emit(result, markdown(result), args)


if __name__ == "__main__":
    sys.exit(main())
