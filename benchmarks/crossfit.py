"""Cross-fitted cross-encoder scores for the ablation: no query is judged by a cross-encoder trained on it.

Why: the ablation's cross-encoder is trained on the PercPos negatives of the training queries (listwise,
to a loss near zero), so on those same queries it scores exactly those negatives far below the positive.
As a false-negative filter it then removes nothing that would be written, and as a distillation teacher
its softmax is close to the labels: in the bf16 run of 2026-12-05 the filter removed 31 of 17,295
candidates, none of the four written per query, and the PercPos+CE models were identical to PercPos's.
Cross-fitting (the sample-splitting of double machine learning, Chernozhukov et al., arXiv 1608.00060)
splits the training queries into ``--ce-folds`` folds (:func:`densekit.splits.write_folds`), trains one
cross-encoder per fold on the other folds' negatives and mines each fold with the cross-encoder that
never saw it; the folds' files are joined in the full mined file's query order.

Run as a script, it is that join (a stage of the ablation, so it is archived like one)::

    python benchmarks/crossfit.py --order percpos.jsonl --out joined.jsonl fold0/x.jsonl fold1/x.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from densekit.mining.output import config_path, stats_path

if TYPE_CHECKING:
    from ablation import Ablation

FOLDS_FOLDER = "crossfit"


def crossfitted_negatives(ablation: Ablation, key: str, method: tuple[str, ...], order: Path) -> Path:
    """The mined file `key` (scored, and filtered when `method` says so) with out-of-fold cross-encoders.

    `order`: the mined file the cross-encoders train on (``--ce-negatives-from``), every training query.
    Stages (each skipped when done): the fold folders; per fold, a cross-encoder trained on the other
    folds' share of `order` and the fold's mining; the join, in `order`'s query order. Returns its path.
    """
    from densekit.splits import write_folds

    a = ablation.args
    joined = ablation.negatives_path(key)
    files = (joined, config_path(joined), stats_path(joined))
    done = joined.with_suffix(".done.json")
    parts = []
    if not (done.is_file() or (ablation.archive and ablation.archive.has(done))):
        root = ablation.out / FOLDS_FOLDER
        folds = write_folds(a.data, a.train_split, root, a.ce_folds, a.ce_fold_seed)
        for k, fold in enumerate(folds):
            folder = root / f"fold{k}"
            held = set(fold["dev_ids"])
            ce_negatives = folder / f"ce-{order.name}"
            write_subset(order, ce_negatives, keep=lambda query_id, held=held: query_id not in held)
            (ce_stage, ce_done, ce), (mine_stage, mine_done, part) = fold_stages(ablation.out, key, k)
            command = ablation.reranker_command(ce_negatives, ce)
            ablation.run(ce_stage, command, ce_done, restore=False)
            command = ablation.mine_command(part, method, str(ce / "model"), data=str(folder), split="dev")
            ablation.run(mine_stage, command, mine_done, restore=False)
            parts.append(part)
    else:
        parts = [fold_stages(ablation.out, key, k)[1][2] for k in range(a.ce_folds)]
    command = [sys.executable, str(Path(__file__).resolve()), "--order", str(order), "--out", str(joined)]
    ablation.run(f"mine {key}", [*command, *map(str, parts)], done, files=files)
    return joined


def fold_stages(out: Path, key: str, k: int) -> tuple[tuple[str, Path, Path], tuple[str, Path, Path]]:
    """Fold `k`'s two stages for mined file `key` under the ablation's `out`, each (name, summary, output):
    its cross-encoder's training (output: the cross-encoder's folder) and its mining (the fold's mined file)."""
    folder = out / FOLDS_FOLDER / f"fold{k}"
    ce, part = folder / "cross-encoder", folder / f"{key}.jsonl"
    training = (f"train-reranker fold {k}", ce.with_name("cross-encoder.done.json"), ce)
    mining = (f"mine {key} fold {k}", part.with_suffix(".done.json"), part)
    return training, mining


def write_subset(source: Path, target: Path, keep) -> int:
    """Copy the records of mined file `source` whose query id `keep` accepts to `target`; how many."""
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as out:
        for line in src:
            if keep(json.loads(line)["query_id"]):
                out.write(line)
                kept += 1
    return kept


def join(order: Path, parts: list[Path], out: Path) -> dict:
    """Write the records of `parts` to `out` in `order`'s query order, with a configuration sidecar
    naming the parts' and a statistics sidecar summing theirs. Each query of `order` must be in exactly
    one part and each part's query in `order` (else SystemExit)."""
    records: dict[str, str] = {}
    for part in parts:
        with open(part, encoding="utf-8") as handle:
            for n, line in enumerate(handle, 1):
                query_id = json.loads(line)["query_id"]
                if query_id in records:
                    raise SystemExit(f"{part}:{n}: query {query_id!r} is in two folds")
                records[query_id] = line
    with open(order, encoding="utf-8") as handle:
        wanted = [json.loads(line)["query_id"] for line in handle]
    if set(wanted) != set(records):
        missing, extra = sorted(set(wanted) - set(records)), sorted(set(records) - set(wanted))
        raise SystemExit(f"{order}: the folds miss {len(missing)} and add {len(extra)} queries (e.g. "
                         f"{(missing or extra)[0]!r}); expected the same queries")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.writelines(records[q] for q in wanted)
    configs = [json.loads(config_path(p).read_text(encoding="utf-8")) for p in parts]
    config_path(out).write_text(json.dumps({"crossfit": {"parts": [str(p) for p in parts], "configs": configs}},
                                           indent=1), encoding="utf-8")  # fmt: skip
    stats = summed([json.loads(stats_path(p).read_text(encoding="utf-8")) for p in parts])
    stats_path(out).write_text(json.dumps(stats, indent=1), encoding="utf-8")
    return {"out": str(out), "queries": len(wanted), "folds": len(parts), "stats": stats}


def summed(stats: list[dict]) -> dict:
    """The miner's statistics of several parts as one: counters and nested counters added, means recomputed."""
    total: dict = {}
    for part in stats:
        for name, value in part.items():
            if isinstance(value, dict):
                total[name] = summed([total.get(name, {}), value])
            elif isinstance(value, (int, float)) and not name.startswith("mean_") and name != "negatives_per_query":
                total[name] = total.get(name, 0) + value
            else:
                total[name] = value
    if total.get("positives_scored"):
        total["mean_positive_score"] = total["sum_positive_score"] / total["positives_scored"]
    if total.get("negatives_written"):
        total["mean_negative_score"] = total["sum_negative_score"] / total["negatives_written"]
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="join cross-fitted mined files in a full mined file's query order")
    p.add_argument("--order", type=Path, required=True, help="a mined file of every query, in the wanted order")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("parts", type=Path, nargs="+", help="the folds' mined files")
    args = p.parse_args(argv)
    print(json.dumps(join(args.order, args.parts, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
