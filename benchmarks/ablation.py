"""The mining ablation: which way of choosing hard negatives trains the better bi-encoder (issue 15).

Trains the start model (all-MiniLM-L6-v2 by default) on the training split for the same number of
steps, with the same recipe and seeds, once per variant of the negatives, and evaluates every trained
model on the evaluation split. The variants (``--variants``, in this order by default):

| variant | mining (`densekit mine`) | training (`densekit train`) |
|---|---|---|
| naive | top-k, labelled positives removed only (`--method naive`) | InfoNCE |
| abs | TopK-Abs: drop candidates the teacher scores above `--abs-threshold` | InfoNCE |
| margin | TopK-MarginPos: drop if score > positive - `--margin` | InfoNCE |
| percpos | TopK-PercPos: drop if score > 95% of the positive's (NV-Retriever's best) | InfoNCE |
| percpos+gist | PercPos, then the GIST guide filter (`--guide`, all-mpnet-base-v2) | InfoNCE |
| percpos+ce | PercPos, then the cross-encoder filter (`--method percpos,ce`) | InfoNCE |
| percpos+kl | PercPos, cross-encoder scores stored (`--scorer`) | InfoNCE + listwise KL from the scores |
| percpos+remine | PercPos | InfoNCE, negatives re-mined every epoch (Conan-embedding) |
| percpos+ce-xfit | as percpos+ce, each query scored by a cross-encoder not trained on it (`crossfit.py`) | InfoNCE |
| percpos+kl-xfit | as percpos+kl, the same out-of-fold scores | InfoNCE + listwise KL |

NV-Retriever: Moreira et al., arXiv 2407.15831; GISTEmbed: Solatorio, arXiv 2402.16829;
Conan-embedding: arXiv 2408.15710. The cross-encoder is trained once by `densekit train-reranker`
on the PercPos negatives of the training split (`--ce-negatives-from`; or given with
`--cross-encoder`). Every variant mines from the same teacher (the start model) at the same
`--depth`, keeps `--mine-negatives` per query and trains on `--negatives-per-query` of them.

Reported per variant: ndcg@10 and recall@100 mean and standard deviation over the seeds, each seed's
value, the training steps, and the paired comparison against naive top-k: mean delta, paired t-test
and randomisation-test p-values by query (each query's value averaged over the seeds) and pooled over
every seed's queries (query q of seed s with query q of the same seed; :func:`seed_stats.paired`).
No setting is chosen here: each model is evaluated once it is trained (so its run can be archived)
but the metrics are computed from the runs only when every model's are there. ``--generality
nfcorpus`` also scores every trained model and the start model on another dataset's test split
(zero-shot: does training on SciFact cost the model elsewhere?), paired against the start model.

To *choose* a recipe, run it in selection mode: ``--dev-fraction 0.15`` holds out finetune's seeded
dev slice, trains every variant on the rest and reports on the slice; the test split is not read.

Every stage is kept in ``--out`` and skipped when it is there (mined files, the cross-encoder, trained
models, TREC runs), so an interrupted run is continued by running the same command again; a stage
that an earlier command with other settings made is an error, never reused. ``--archive DIR`` (the
runner's full run uses ``benchmarks/stages/ablation``, committed) also keeps every finished stage's
summary, negatives and TREC runs outside ``/tmp``, so a fresh machine (same ``--out`` path and
``densekit`` path) continues where the last one stopped: an archived evaluation needs no model.

    DENSEKIT_DATA=../shared/data/beir python benchmarks/ablation.py --data scifact --out /tmp/ablation \\
        --seeds 1,2,3 --json-out /tmp/ablation/result.json
    # NFCorpus, the three best variants, one positive per query per epoch:
    python benchmarks/ablation.py --data nfcorpus --positives one --variants naive,percpos,percpos+kl \\
        --out /tmp/ablation-nf --seeds 1,2,3

Measured stage times (2 cores, bf16: about 11 minutes a model with both evaluations) are in
docs/next-engineer.md; on a GPU, minutes each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ablation_table import markdown
from commands import DENSEKIT, emit, eval_command, parse_seeds, require_models, settings_of
from crossfit import crossfitted_negatives, fold_stages
from seed_stats import generality, paired, read_runs, spread
from stage_archive import StageArchive
from stage_runner import StageRunner

from densekit.finetune.config import FinetuneConfig

VARIANT_NAMES = (
    "naive,abs,margin,percpos,percpos+gist,percpos+ce,percpos+kl,percpos+remine,percpos+ce-xfit,percpos+kl-xfit"
)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: how its negatives are mined and what its training adds."""

    name: str
    mine: tuple[str, ...]
    train: tuple[str, ...] = ()
    scored: bool = False  # the cross-encoder scores the mined file (`--scorer`)
    negatives: str = ""  # the mined file's name when variants share one (default: the variant's name)
    crossfit: bool = False  # scored by out-of-fold cross-encoders (crossfit.py), not the one trained on all


def variants(args: argparse.Namespace) -> dict[str, Variant]:
    percpos = ("--method", "percpos", "--percentage", str(args.percentage))
    rows = [
        Variant("naive", ("--method", "naive")),
        Variant("abs", ("--method", "abs", "--threshold", str(args.abs_threshold))),
        Variant("margin", ("--method", "margin", "--margin", str(args.margin))),
        Variant("percpos", percpos),
        Variant("percpos+gist", (*percpos, "--guide", args.guide)),
        Variant("percpos+ce", ("--method", "percpos,ce", *percpos[2:]), scored=True),
        Variant("percpos+kl", percpos, ("--distill", "kl", "--teacher-score", "ce_score"), scored=True,
                negatives="percpos+scored"),
        Variant("percpos+remine", percpos, ("--remine-every", "epoch"), negatives="percpos"),
        Variant("percpos+ce-xfit", ("--method", "percpos,ce", *percpos[2:]), scored=True, crossfit=True),
        Variant("percpos+kl-xfit", percpos, ("--distill", "kl", "--teacher-score", "ce_score"), scored=True,
                negatives="percpos+scored-xfit", crossfit=True),
    ]  # fmt: skip
    return {v.name: v for v in rows}


@dataclass
class Ablation(StageRunner):
    """The run's settings and folders; each method does one stage and skips it when it is done."""

    args: argparse.Namespace
    log: list[dict] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.args.out

    @property
    def archive(self) -> StageArchive | None:
        return StageArchive(self.out, self.args.archive) if self.args.archive else None

    def mine(self, key: str, method: tuple[str, ...], scorer: str | None = None) -> Path:
        """Negatives of the training split mined with `method` (and the cross-encoder's scores)."""
        from densekit.mining.output import config_path, stats_path

        path = self.negatives_path(key)
        # the miner's sidecars go with the file: re-mining during training reads the recorded options
        files = (path, config_path(path), stats_path(path))
        self.run(f"mine {key}", self.mine_command(path, method, scorer), path.with_suffix(".done.json"), files=files)
        return path

    def mine_command(
        self, path: Path, method: tuple[str, ...], scorer: str | None, data: str = "", split: str = ""
    ) -> list[str]:
        """`densekit mine` of the training split (or `data`'s `split`) into `path`."""
        a = self.args
        command = [
            DENSEKIT, "mine", data or a.data, "--split", split or a.train_split, "--teacher", a.model, "--out",
            str(path), "--depth", str(a.depth), "--negatives", str(a.mine_negatives), *method, *self.device,
            "--json", "--quiet",
        ]  # fmt: skip
        return command + (["--scorer", scorer] if scorer else [])

    def negatives_path(self, key: str) -> Path:
        """The mined file of `key` (a variant's name, or the name variants share)."""
        return self.out / "negatives" / f"{key}.jsonl"

    def cross_encoder(self) -> str:
        """The cross-encoder that scores and filters: `--cross-encoder`, or trained once here."""
        a = self.args
        if a.cross_encoder:
            return a.cross_encoder
        folder = self.cross_encoder_folder
        command = self.reranker_command(self.ce_training_negatives(), folder)
        self.run("train-reranker", command, folder.with_name("cross-encoder.done.json"), restore=False)
        return str(folder / "model")

    def ce_training_negatives(self) -> Path:
        """The mined file the cross-encoders train on: `--ce-negatives-from`'s, mined if not yet there."""
        source = variants(self.args)[self.args.ce_negatives_from]
        return self.mine(source.negatives or source.name, source.mine)

    def reranker_command(self, negatives: Path, folder: Path) -> list[str]:
        """`densekit train-reranker` on `negatives` into `folder` (the ``--ce-*`` recipe)."""
        a = self.args
        command = [
            DENSEKIT, "train-reranker", "-m", a.ce_model or a.model, "-o", str(folder), "--negatives", str(negatives),
            "--corpus", a.data, "--epochs", str(a.ce_epochs), "--batch-size", str(a.ce_batch_size),
            "--negatives-per-query", str(a.ce_negatives), "--lr", str(a.ce_lr), "--seed", "42", *self.device,
            "--skip-queries-without-negatives", "--precision", a.precision, "--overwrite", "--json", "--quiet",
        ]  # fmt: skip
        if a.ce_max_steps:
            command += ["--max-steps", str(a.ce_max_steps)]
        if a.ce_max_length:
            command += ["--max-length", str(a.ce_max_length)]
        return command

    @property
    def cross_encoder_folder(self) -> Path:
        return self.out / "cross-encoder"

    def negatives_for(self, variant: Variant) -> Path:
        """The mined file `variant` trains on; the cross-encoder is trained only if a scored file must be mined."""
        key = variant.negatives or variant.name
        done = self.negatives_path(key).with_suffix(".done.json")
        if not variant.scored:
            return self.mine(key, variant.mine)
        if variant.crossfit:
            return crossfitted_negatives(self, key, variant.mine, self.ce_training_negatives())
        if done.is_file() or (self.archive and self.archive.has(done)):
            scorer = self.args.cross_encoder or str(self.cross_encoder_folder / "model")
        else:
            scorer = self.cross_encoder()
        return self.mine(key, variant.mine, scorer=scorer)

    def note_skipped_stages(self, names: list[str]) -> None:
        """Log the shared stages (minings, cross-encoders) of `names` that kept models let this run skip,
        from their summaries here or in the archive: the record then has every stage's wall time."""
        known, a = variants(self.args), self.args
        scored = [known[n] for n in names if known[n].scored]
        keys = {known[n].negatives or n for n in names}
        if scored:  # the file the cross-encoders train on
            keys.add(known[a.ce_negatives_from].negatives or a.ce_negatives_from)
        stages = {f"mine {key}": self.negatives_path(key).with_suffix(".done.json") for key in sorted(keys)}
        if any(not v.crossfit for v in scored):
            stages["train-reranker"] = self.cross_encoder_folder.with_name("cross-encoder.done.json")
        for k in range(a.ce_folds):
            for key in sorted({v.negatives or v.name for v in scored if v.crossfit}):
                stages.update((name, done) for name, done, _ in fold_stages(self.out, key, k))
        for name, done in stages.items():
            kept = self.archive.copy_of(done) if self.archive and self.archive.has(done) else done
            if kept.is_file():
                self.note(name, json.loads(kept.read_text(encoding="utf-8")), reused=True)

    def train(self, variant: Variant, seed: int, need_model: bool = True) -> tuple[Path, int]:
        """The bi-encoder of `variant` at `seed`; its model folder and training steps.

        With `need_model` False (its evaluations are archived) an archived training's summary is enough:
        nothing is mined or trained. A summary without its model folder is trained again otherwise.
        """
        a = self.args
        folder = self.out / "train" / variant.name / f"seed{seed}"
        negatives = self.negatives_path(variant.negatives or variant.name)
        command = [
            DENSEKIT, "train", "-m", a.model, "-o", str(folder), "--negatives", str(negatives),
            "--corpus", a.data, "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
            "--negatives-per-query", str(a.negatives_per_query), "--positives", a.positives, "--seed", str(seed),
            *variant.train, *self.device, "--precision", a.precision, "--overwrite", "--json", "--quiet",
        ]  # fmt: skip
        if a.max_steps:
            command += ["--max-steps", str(a.max_steps)]
        if a.max_length:
            command += ["--max-length", str(a.max_length)]
        done = folder.with_name(f"seed{seed}.done.json")
        if self.archive:
            self.archive.restore(done)
        if need_model and done.is_file() and not (folder / "model").is_dir():
            done.unlink()  # brought back from the archive without its model, which an evaluation needs
        if not done.is_file():
            self.negatives_for(variant)  # mined (and the cross-encoder trained) only for a model that trains
        # restored above already: restoring again would bring back the summary just removed for its missing model
        summary = self.run(f"train {variant.name} seed {seed}", command, done, restore=False)
        return folder / "model", int((summary.get("output") or {}).get("steps", 0))

    def evaluated(self, variant: Variant, seed: int) -> bool:
        """Whether every evaluation of this model is done here or in the archive (then it need not exist)."""
        key = f"{variant.name}-seed{seed}"
        runs = [self.run_path(key)] + [self.run_path(elsewhere(data, key)) for data in generality_sets(self.args)]
        if self.archive:
            for run in runs:
                self.archive.restore(run.with_suffix(".done.json"), (run,))
        return all(run.is_file() and run.with_suffix(".done.json").is_file() for run in runs)

    def evaluate(self, variant: Variant, seed: int, model: Path) -> Path:
        """The TREC run of `model` on the evaluation split (top 100)."""
        return self._eval(self.args.data, f"{variant.name}-seed{seed}", model, f"eval {variant.name} seed {seed}")

    def evaluate_elsewhere(self, data: str, key: str, model: Path | str) -> Path:
        """The TREC run of `model` on `data`'s test split, which it was not trained on (`--generality`)."""
        return self._eval(data, elsewhere(data, key), model, f"eval {key} on {data}", split="test")

    def run_path(self, key: str) -> Path:
        """The TREC run of evaluation `key` (``naive-seed1``, or ``nfcorpus/naive-seed1`` elsewhere)."""
        return self.out / "runs" / f"{key}.trec"

    def _eval(self, data: str, key: str, model: Path | str, name: str, split: str | None = None) -> Path:
        run = self.run_path(key)
        command = eval_command(data, model, split or self.args.eval_split, run, self.args.device)
        self.run(name, command, run.with_suffix(".done.json"), files=(run,))
        return run

    @property
    def device(self) -> list[str]:
        return ["--device", self.args.device] if self.args.device else []


def elsewhere(data: str, key: str) -> str:
    """The key of evaluation `key` on another dataset `data` (``--generality``): its runs' subfolder."""
    return f"{Path(data).name}/{key}"


def generality_sets(args: argparse.Namespace) -> list[str]:
    """The datasets of ``--generality``, in order."""
    return [d.strip() for d in args.generality.split(",") if d.strip()]


def summarise(names: list[str], runs: dict[str, dict[int, Path]], steps: dict, args: argparse.Namespace) -> dict:
    """Per-variant metrics (mean, sd, per seed) and the pooled paired comparison against the first variant."""
    from densekit.data import load_dataset
    from densekit.eval.metrics import evaluate

    metrics = ["ndcg@10", "recall@100"]
    qrels = load_dataset(args.data, split=args.eval_split).qrels
    read = {name: read_runs(runs[name]) for name in names}
    rows = {}
    for name in names:
        per_seed = {
            seed: {k: float(v) for k, v in evaluate(qrels, run, metrics).metrics.items()}
            for seed, run in read[name].items()
        }
        row = {
            "steps": steps[name],
            "per_seed": {str(s): {k: round(v, 4) for k, v in m.items()} for s, m in per_seed.items()},
        }
        for metric in metrics:
            row[metric] = spread([m[metric] for m in per_seed.values()])
        rows[name] = row
    baseline = names[0]
    for name in names[1:]:
        rows[name]["vs_" + baseline] = paired(read[baseline], read[name], qrels, metrics, (baseline, name))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="scifact", help="BEIR name or folder")
    p.add_argument("--train-split", default="train", help="qrels split mined and trained on")
    p.add_argument("--eval-split", default="test", help="qrels split of the report (read after all training)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="start model, also the mining teacher")
    p.add_argument("--out", type=Path, required=True, help="folder of every stage (rerun to continue)")
    p.add_argument("--variants", default=VARIANT_NAMES, help="comma-separated; the first is the baseline of the tests")
    p.add_argument("--seeds", default="1,2,3", help="training seeds, comma-separated")
    p.add_argument("--depth", type=int, default=30, help="candidates mined per query, every variant")
    p.add_argument("--mine-negatives", type=int, default=4, help="negatives kept per query")
    p.add_argument("--abs-threshold", type=float, default=0.7, help="TopK-Abs threshold (NV-Retriever's 0.7)")
    p.add_argument("--margin", type=float, default=0.05, help="TopK-MarginPos margin")
    p.add_argument("--percentage", type=float, default=0.95, help="TopK-PercPos percentage")
    p.add_argument("--guide", default="all-mpnet-base-v2", help="GIST guide (densekit models fetch all-mpnet-base-v2)")
    p.add_argument("--cross-encoder", help="an existing cross-encoder folder (default: trained here)")
    p.add_argument("--ce-model", help="cross-encoder start weights (default --model)")
    p.add_argument(
        "--ce-negatives-from",
        default="percpos",
        choices=["percpos", "naive"],
        help="the mined file the cross-encoder trains on (queries it left without negatives are skipped)",
    )
    ce = FinetuneConfig()  # finetune's cross-encoder recipe (lr 1e-4, 600 steps: one that learns, docs/finetune.md)
    p.add_argument("--ce-epochs", type=int, default=ce.ce_epochs)
    p.add_argument("--ce-batch-size", type=int, default=ce.ce_batch_size)
    p.add_argument("--ce-negatives", type=int, default=ce.ce_negatives)
    p.add_argument("--ce-lr", type=float, default=ce.ce_lr)
    p.add_argument("--ce-max-steps", type=int, default=ce.ce_max_steps)
    p.add_argument("--ce-max-length", type=int, default=ce.ce_max_length)
    p.add_argument("--ce-folds", type=int, default=2, help="the -xfit variants: folds of the training queries, "
                   "each scored by a cross-encoder trained on the others (crossfit.py)")  # fmt: skip
    p.add_argument("--ce-fold-seed", type=int, default=0, help="seed of the folds")
    p.add_argument("--precision", default="no", help="both trainers: no, or bf16 (CUDA or a CPU with native bf16)")
    p.add_argument("--epochs", type=int, default=2, help="the current SciFact recipe: 2 epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--negatives-per-query", type=int, default=1)
    p.add_argument("--positives", default="all", help="all (SciFact) or one (NFCorpus)")
    p.add_argument("--max-steps", type=int, help="cap every training at this many steps")
    p.add_argument("--max-length", type=int, help="document token limit in training")
    p.add_argument("--generality", default="", help="comma-separated datasets whose test split every trained model "
                   "and the start model are also scored on, zero-shot (e.g. nfcorpus)")  # fmt: skip
    p.add_argument("--dev-fraction", type=float, help="select on a dev slice: hold this fraction of the "
                   "training split's queries out (as finetune does), train on the rest, report on it")  # fmt: skip
    p.add_argument("--split-seed", type=int, default=0, help="seed of the dev slice (finetune's default 0)")
    p.add_argument("--device", help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, help="OMP threads of every process")
    p.add_argument("--archive", type=Path, help="keep finished stages' summaries, negatives and runs "
                   "here (a folder in the repository); missing stages come back from it: stage_archive.py")  # fmt: skip
    p.add_argument("--json-out", type=Path, help="write the result JSON here too")
    p.add_argument("--markdown-out", type=Path, help="write the table here")
    return p.parse_args(argv)


def use_dev_slice(args: argparse.Namespace) -> dict:
    """Point the run at a dev slice of the training split (the selection mode; the test split is never read).

    The slice is the one `densekit finetune` holds out (:func:`densekit.splits.write_holdout`, same
    fraction and seed give the same queries), written once under ``--out/dev<F>-seed<S>/``; every stage
    of this mode lives in that folder, apart from the test-mode stages. Returns the slice's summary.
    """
    from densekit.splits import DEV, TRAIN, write_holdout

    args.out = args.out / f"dev{args.dev_fraction}-seed{args.split_seed}"
    if args.archive:
        args.archive = args.archive / args.out.name
    folder, summary = args.out / "slice", args.out / "slice.json"
    args.out.mkdir(parents=True, exist_ok=True)
    if not summary.is_file():
        info = write_holdout(args.data, args.train_split, folder, args.dev_fraction, args.split_seed, overwrite=True)
        summary.write_text(json.dumps(info, indent=1), encoding="utf-8")
    info = json.loads(summary.read_text(encoding="utf-8"))
    args.data, args.train_split, args.eval_split = str(folder), TRAIN, DEV
    return {k: info[k] for k in ("source", "split", "train_queries", "dev_queries")} | {
        "fraction": args.dev_fraction,
        "seed": args.split_seed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every densekit subprocess inherits it
    known = variants(args)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"--variants: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    seeds = parse_seeds(args.seeds)
    require_models([args.model, *([args.guide] if any("--guide" in known[n].mine for n in names) else [])])
    holdout = use_dev_slice(args) if args.dev_fraction else None
    ablation = Ablation(args)
    start = time.perf_counter()
    steps: dict[str, list[int]] = {name: [] for name in names}
    runs: dict[str, dict[int, Path]] = {name: {} for name in names}
    other_runs: dict[str, dict[str, dict[int, Path]]] = {data: {n: {} for n in names} for data in generality_sets(args)}
    for name in names:  # each model evaluated once trained (so the archive keeps its runs); read only at the end
        for seed in seeds:
            model, n = ablation.train(known[name], seed, need_model=not ablation.evaluated(known[name], seed))
            steps[name].append(n)
            runs[name][seed] = ablation.evaluate(known[name], seed, model)
            for data, by_name in other_runs.items():
                by_name[name][seed] = ablation.evaluate_elsewhere(data, f"{name}-seed{seed}", model)
    ablation.note_skipped_stages(names)
    elsewhere = {
        data: generality(data, ablation.evaluate_elsewhere(data, "start-model", args.model), by_name)
        for data, by_name in other_runs.items()
    }
    step_counts = {name: sorted(set(s)) for name, s in steps.items()}
    rows = summarise(names, runs, {n: s[0] if len(s) == 1 else s for n, s in step_counts.items()}, args)
    result = {
        "data": args.data,
        "model": args.model,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        "seeds": seeds,
        "dev_slice": holdout,
        "baseline": names[0],
        "settings": settings_of(args),
        "same_steps": len({tuple(s) for s in step_counts.values()}) == 1,
        "variants": rows,
        "generality": elsewhere,
        "stages": ablation.log,
        "stages_wall_s": round(sum(entry["wall_s"] for entry in ablation.log), 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return emit(result, markdown(result), args)


if __name__ == "__main__":
    sys.exit(main())
