"""Same tuples, same settings, several seeds: is densekit's trained model as good as sentence-transformers'?

Each seed is one run of ``benchmarks/train.py`` (densekit's trainer, then sentence-transformers'
MultipleNegativesRankingLoss trainer, both from the same start model on the same mined tuples, both
scored by densekit's harness) in its own process and folder, ``OUT/seed{S}``. A seed whose folder
already holds a finished result with the same settings is read, not rerun, so an interrupted run is
continued by running the same command again.

Reported: each seed's test ndcg@10 for both trainers, their examples/s and peak memory; mean ± sd over
seeds; the paired t-test over the seeds' differences; and the paired test pooled over every seed's
queries (query q of seed s paired with q of the same seed, :func:`seed_stats.paired`).

    DENSEKIT_DATA=../shared/data/beir python benchmarks/train_quality.py \\
        --negatives-file /tmp/scifact.neg.jsonl --seeds 1,2,3 --out /tmp/train-quality --json-out /tmp/tq.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from commands import emit, parse_seeds, settings_of
from seed_stats import paired, spread

SIDES = {"densekit": "densekit", "sentence_transformers": "st"}  # result key -> folder of train.py


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="scifact", help="BEIR name or folder")
    p.add_argument("--negatives-file", type=Path, required=True, help="mined tuples (densekit mine)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="start model")
    p.add_argument("--seeds", default="1,2,3", help="training seeds, comma-separated")
    p.add_argument("--out", type=Path, required=True, help="one train.py folder per seed (rerun to continue)")
    p.add_argument("--split", default="test", help="split both models are scored on")
    p.add_argument("--train-args", default="", help="more benchmarks/train.py options, one string")
    p.add_argument("--threads", type=int, help="OMP threads of every process")
    p.add_argument("--json-out", type=Path, help="write the result JSON here too")
    p.add_argument("--markdown-out", type=Path, help="write the table here")
    return p.parse_args(argv)


def seed_command(args: argparse.Namespace, seed: int) -> list[str]:
    script = Path(__file__).with_name("train.py")
    command = [sys.executable, str(script), "--data", args.data, "--negatives-file", str(args.negatives_file)]
    command += [
        "--model",
        args.model,
        "--seed",
        str(seed),
        "--split",
        args.split,
        "--out",
        str(args.out / f"seed{seed}"),
    ]
    return command + args.train_args.split()


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """train.py at `seed`, or its finished result when the same command already ran in that folder."""
    command = seed_command(args, seed)
    folder = args.out / f"seed{seed}"
    result_file, command_file = folder / "results.json", folder / "command.json"
    if result_file.is_file() and command_file.is_file() and json.loads(command_file.read_text()) == command[1:]:
        print(f"[train-quality] seed {seed}: done before with the same command, read", file=sys.stderr, flush=True)
        return {**json.loads(result_file.read_text()), "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    print(f"[train-quality] seed {seed}: {' '.join(command)}", file=sys.stderr, flush=True)
    load_before, start = round(os.getloadavg()[0], 2), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[train-quality] seed {seed} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    command_file.write_text(json.dumps(command[1:]))
    result = json.loads(result_file.read_text())
    result |= {
        "wall_s": round(time.perf_counter() - start, 1),
        "load_before_after": [load_before, round(os.getloadavg()[0], 2)],
    }
    result_file.write_text(json.dumps(result, indent=2))
    return {**result, "reused": False}


def t_test_over_seeds(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired t-test p-value of b - a over seeds (None under three seeds or no spread)."""
    from scipy import stats

    if len(a) < 3 or len({y - x for x, y in zip(a, b, strict=True)}) < 2:
        return None
    return round(float(stats.ttest_rel(b, a).pvalue), 4)


def summarise(args: argparse.Namespace, seeds: dict[int, dict]) -> dict:
    """Per-seed rows, mean ± sd per trainer, and the two paired tests (module docstring)."""
    from densekit.data import Run, load_dataset

    rows = {}
    for seed, r in seeds.items():
        dk, st = r["densekit"], r["sentence_transformers"]
        rows[str(seed)] = {
            "densekit_ndcg@10": round(dk["ndcg@10"], 4),
            "st_ndcg@10": round(st["ndcg@10"], 4),
            "difference": round(dk["ndcg@10"] - st["ndcg@10"], 4),
            "densekit_examples_per_s": round(dk["examples_per_s"], 3),
            "st_examples_per_s": round(st["examples_per_s"], 3),
            "densekit_peak_rss_mib": round(dk["peak_rss_mib"]),
            "st_peak_rss_mib": round(st["peak_rss_mib"]),
            "wall_s": r.get("wall_s"),
            "load_before_after": r.get("load_before_after"),
            "reused": r["reused"],
        }
    dk = [r["densekit"]["ndcg@10"] for r in seeds.values()]
    st = [r["sentence_transformers"]["ndcg@10"] for r in seeds.values()]
    qrels = load_dataset(args.data, split=args.split).qrels
    runs = {
        side: {s: Run.read_trec(args.out / f"seed{s}" / folder / f"{args.split}.trec") for s in seeds}
        for side, folder in SIDES.items()
    }
    pooled = paired(runs["sentence_transformers"], runs["densekit"], qrels, ["ndcg@10", "recall@100"])
    return {
        "per_seed": rows,
        "densekit_ndcg@10": spread(dk),
        "st_ndcg@10": spread(st),
        "difference_mean": round(sum(dk) / len(dk) - sum(st) / len(st), 4),
        "t_p_over_seeds": t_test_over_seeds(st, dk),
        "densekit_vs_st_pooled": pooled,
    }


def markdown(result: dict) -> str:
    """The per-seed table, the means and the paired tests."""
    lines = [
        "| seed | densekit ndcg@10 | sentence-transformers ndcg@10 | difference | densekit examples/s | ST examples/s "
        "| peak RSS densekit / ST (MiB) | load avg before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in result["per_seed"].items():
        load = "reused" if r["reused"] or not r["load_before_after"] else " / ".join(map(str, r["load_before_after"]))
        lines.append(f"| {seed} | {r['densekit_ndcg@10']:.4f} | {r['st_ndcg@10']:.4f} | {r['difference']:+.4f} | "
                     f"{r['densekit_examples_per_s']} | {r['st_examples_per_s']} | "
                     f"{r['densekit_peak_rss_mib']:,} / {r['st_peak_rss_mib']:,} | {load} |")  # fmt: skip
    sd = lambda m: "" if m["sd"] is None else f" ± {m['sd']:.4f}"  # noqa: E731
    d, s = result["densekit_ndcg@10"], result["st_ndcg@10"]
    lines.append(f"| **mean** | **{d['mean']:.4f}**{sd(d)} | **{s['mean']:.4f}**{sd(s)} | "
                 f"**{result['difference_mean']:+.4f}** | | | | |")  # fmt: skip
    p = result["densekit_vs_st_pooled"]
    over_seeds = result["t_p_over_seeds"]
    wtl = "/".join(map(str, p["ndcg@10"]["wins_ties_losses"]))
    lines += [
        "",
        f"Paired over the seeds' differences: t-test p {'n/a' if over_seeds is None else f'{over_seeds:.3f}'}. "
        f"Pooled over every seed's queries, densekit against sentence-transformers: ndcg@10 "
        f"{p['ndcg@10']['delta']:+.4f} (t p {p['ndcg@10']['t_p_value']:.3f}, randomisation p "
        f"{p['ndcg@10']['randomization_p_value']:.3f}, wins/ties/losses {wtl}), "
        f"recall@100 {p['recall@100']['delta']:+.4f} (t p {p['recall@100']['t_p_value']:.3f}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every train.py process inherits it
    seeds = parse_seeds(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = {seed: run_seed(args, seed) for seed in seeds}
    result = {
        "data": args.data,
        "model": args.model,
        "seeds": seeds,
        "settings": settings_of(args, leave_out=("json_out", "markdown_out")),
        "train_settings": done[seeds[0]]["args"],
        "queries": done[seeds[0]]["queries"],
        **summarise(args, done),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return emit(result, markdown(result), args)


if __name__ == "__main__":
    sys.exit(main())
