"""The arguments of the benchmarks that train models (ablation, finetune, train-quality, rerank) at each
size, and the recipes their full runs use. `run.py` registers them; `benchmarks/device/run.sh` reads
`NFCORPUS_RECIPE` (re-exported by run.py, where older notes look for it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import fixtures

if TYPE_CHECKING:
    from run import Context

# where the ablations keep their finished stages across machines (stage_archive.py): committed, never /tmp
STAGES = Path(__file__).resolve().parent / "stages"


def ablation_args(ctx: Context) -> list[str]:
    if ctx.smoke:  # every mechanism once (cross-encoder training, scorer, guide, KL, re-mining, cross-fitting),
        # one seed; the
        # cross-encoder filter (percpos+ce) differs from percpos+kl's scored mining only in `--method`, which
        # tests/test_mining_crossencoder.py covers: left out to keep the suite under 20 minutes
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        variants = "naive,percpos+gist,percpos+kl,percpos+remine,percpos+kl-xfit"
        tiny = ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--epochs", "1"]
        ce = ["--ce-max-steps", "1", "--ce-batch-size", "2", "--ce-negatives", "1", "--ce-max-length", "32"]
        ce += ["--ce-negatives-from", "naive"]  # a random tiny model's PercPos leaves no query a negative
        return ["--data", data, "--model", model, "--guide", model, "--train-split", "test", "--variants", variants,
                "--seeds", "1", "--depth", "10", "--out", str(ctx.workdir / "ablation-smoke"), *tiny, *ce,
                "--generality", data, "--device", "cpu", "--threads", "1",
                "--archive", str(ctx.workdir / "ablation-smoke-archive")]  # fmt: skip
    archive = ["--archive", str(STAGES / "ablation")]
    return ["--out", str(ctx.workdir / "ablation"), "--threads", str(ctx.threads), *archive]


def ablation_nfcorpus_args(ctx: Context) -> list[str]:
    """The ablation trained on NFCorpus (one positive per query per epoch), its own folder and record.

    Issue 15 asks for the best SciFact variants again on NFCorpus: name them with ``--args "--variants
    naive,..."`` (the first is the baseline of the paired tests).
    """
    if ctx.smoke:  # the NFCorpus-shaped options once (one positive an epoch); the mechanisms are `ablation`'s
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        tiny = ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--epochs", "1"]
        return ["--data", data, "--model", model, "--train-split", "test", "--positives", "one", "--variants",
                "naive", "--seeds", "1", "--depth", "10", "--out", str(ctx.workdir / "ablation-nfcorpus-smoke"),
                *tiny, "--device", "cpu", "--threads", "1"]  # fmt: skip
    return ["--data", "nfcorpus", "--positives", "one", "--out", str(ctx.workdir / "ablation-nfcorpus"),
            "--threads", str(ctx.threads), "--archive", str(STAGES / "ablation-nfcorpus")]  # fmt: skip


def ablation_dev_args(ctx: Context) -> list[str]:
    """The ablation in selection mode: trained on SciFact train less finetune's dev slice, reported on the slice."""
    if ctx.smoke:  # the slice mechanism once; the variants' mechanisms are the `ablation` smoke run's
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        tiny = ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--epochs", "1"]
        return ["--data", data, "--model", model, "--train-split", "test", "--dev-fraction", "0.5", "--variants",
                "naive", "--seeds", "1", "--depth", "10", "--out", str(ctx.workdir / "ablation-dev-smoke"), *tiny,
                "--device", "cpu", "--threads", "1"]  # fmt: skip
    return ["--out", str(ctx.workdir / "ablation"), "--dev-fraction", "0.15", "--threads", str(ctx.threads)]


# The ablation's recipe (batch 32, lr 5e-5, 1 of 4 negatives mined at depth 30) inside finetune, trained
# 4 epochs instead of the ablation's 2: chosen on finetune's dev slice at three seeds (`finetune-dev`).
# The cross-encoder: finetune's defaults (lr 1e-4, 8 groups, 128 tokens, 600 steps; chosen on the dev slice).
FINETUNE_RECIPE = (
    "--epochs 4 --batch-size 32 --lr 5e-5 --negatives-per-query 1 --mine-depth 30 --mine-negatives 4 "
    "--score-depth 30 --rerank-depth 30 --eval-steps 25 --save-steps 25"
)


def finetune_args(ctx: Context) -> list[str]:
    """`densekit finetune` at three seeds (benchmarks/finetune.py); smoke: a tiny model, two seeds, 3 steps."""
    if ctx.smoke:
        source = Path(fixtures.beir_root()) / "scifact"
        data = fixtures.smoke_dataset(source, ctx.workdir / "scifact-smoke-ft", splits={"train": 16, "test": 8})
        tiny = ("--mine-method naive --mine-depth 20 --dev-fraction 0.25 --ce-max-steps 2 --ce-batch-size 4 "
                "--ce-max-length 32 --max-steps 3 --batch-size 4 --max-length 32 --eval-steps 1 --save-steps 1 "
                "--encode-batch-size 32 --rerank-depth 20")  # fmt: skip
        return ["--data", str(data), "--model", fixtures.smoke_model(ctx.workdir), "--seeds", "1,2", "--device", "cpu",
                "--out", str(ctx.workdir / "finetune-smoke"), "--finetune-args", tiny, "--threads", "1",
                "--generality", str(data)]  # fmt: skip
    return ["--out", str(ctx.workdir / "finetune"), "--finetune-args", FINETUNE_RECIPE, "--threads", str(ctx.threads)]


# The runs made on a lent GPU (benchmarks/device/run.sh): bf16, the cross-encoder trained 600 steps
# instead of one epoch (40 steps on SciFact, where it did not learn on the CPU).
GPU_OPTIONS = "--precision bf16 --ce-epochs 20 --ce-max-steps 600"
# NFCorpus: the SciFact recipe's mining, batch and step size; dev evaluation every 100 steps. The
# positives (one per query for 16 epochs, or every pair for 1,200 steps) are chosen on the dev slice
# by run.sh and given with --args, so the record's command holds them.
NFCORPUS_RECIPE = (
    "--batch-size 32 --lr 5e-5 --negatives-per-query 1 --mine-depth 30 --mine-negatives 4 --score-depth 30 "
    "--ce-max-length 256 --rerank-depth 30 --eval-steps 100 --save-steps 500 " + GPU_OPTIONS
)


def finetune_gpu_args(folder: str, data: str, recipe: str) -> Callable[[Context], list[str]]:
    """`finetune` of `data` with `recipe` in its own folder and record; smoke: the CPU smoke run, one seed,
    one positive per query (bf16 needs CUDA)."""

    def arguments(ctx: Context) -> list[str]:
        if ctx.smoke:
            return finetune_variant_args(folder, "--positives one")(ctx)
        out = ["--out", str(ctx.workdir / folder), "--threads", str(ctx.threads)]
        return ["--data", data, *out, "--finetune-args", recipe]

    return arguments


def finetune_variant_args(folder: str, options: str) -> Callable[[Context], list[str]]:
    """The `finetune` benchmark with `options` added to its recipe, in its own folder and record (smoke: one seed)."""

    def arguments(ctx: Context) -> list[str]:
        base = finetune_args(ctx)
        base[base.index("--out") + 1] = str(ctx.workdir / (f"{folder}-smoke" if ctx.smoke else folder))
        if ctx.smoke:
            base[base.index("--seeds") + 1] = "1"
            del base[base.index("--generality") : base.index("--generality") + 2]  # the finetune smoke run has it
        return [*base, f"--finetune-args={options}"]  # "=": an option-like value ("--refit") is still a value

    return arguments


def train_quality_args(ctx: Context) -> list[str]:
    """benchmarks/train_quality.py: both trainers at seeds 1-3 on the mined SciFact tuples (train.py's recipe)."""
    out = ["--out", str(ctx.workdir / ("train-quality-smoke" if ctx.smoke else "train-quality"))]
    if ctx.smoke:
        tiny = "--max-steps 1 --batch-size 4 --max-length 32"
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        return ["--data", data, "--model", model, "--negatives-file", str(ctx.negatives()), "--seeds", "1",
                "--train-args", tiny, "--threads", "1", *out]  # fmt: skip
    return ["--negatives-file", str(ctx.negatives()), "--seeds", "1,2,3", "--threads", str(ctx.threads), *out]


# The cross-encoder recipe chosen on finetune's SciFact dev slice (seed 1): listwise loss over the positive
# and 4 mined negatives, lr 1e-4 (2e-5 left the loss at log 5 for 60 steps), 8 groups a step at 128 tokens,
# 600 steps (about 7.5 epochs of the 564 queries that keep negatives).
RERANK_TRAIN = "--negatives-per-query 4 --epochs 8 --max-steps 600 --batch-size 8 --lr 1e-4 --max-length 128 "
RERANK_TRAIN += "--eval-steps 100 --save-steps 100 --log-steps 10 --seed 42"


def rerank_args(ctx: Context) -> list[str]:
    """benchmarks/rerank.py over the `finetune` benchmark's seed-1 folder (its dev slice and mined negatives)."""
    if ctx.smoke:
        source = Path(fixtures.beir_root()) / "scifact"
        data = fixtures.smoke_dataset(source, ctx.workdir / "scifact-smoke-ft", splits={"train": 16, "test": 8})
        model = fixtures.smoke_model(ctx.workdir)
        mine = "--mine-method naive --mine-depth 20 --dev-fraction 0.25 --encode-batch-size 32"
        tiny = "--max-steps 2 --batch-size 2 --negatives-per-query 1 --max-length 32 --eval-steps 1 --save-steps 1"
        return ["--data", str(data), "--model", model, "--finetune-folder", str(ctx.workdir / "rerank-smoke-ft"),
                "--finetune-args", mine, "--train-args", tiny, "--eval-depth", "5", "--first-stages",
                f"{model},bm25", "--seed-group", f"pair={model},bm25", "--depth", "10", "--device", "cpu",
                "--threads", "1",
                "--out", str(ctx.workdir / "rerank-smoke")]  # fmt: skip
    seed1 = [
        "--finetune-folder",
        str(ctx.workdir / "finetune" / "seed1"),
        "--finetune-args",
        f"--seed 1 {FINETUNE_RECIPE}",
    ]
    return [*seed1, "--train-args", RERANK_TRAIN, "--out", str(ctx.workdir / "rerank"), "--threads", str(ctx.threads)]


# NFCorpus: SciFact's cross-encoder recipe with one positive per query per epoch (NFCorpus queries have 43
# judged documents on average; one per query is what its bi-encoder's dev slice preferred) and a dev
# evaluation every 200 steps (each reranks 388 dev queries x 30 hits, about 4 minutes on the 2 cores).
# Its negatives are mined naive (labelled positives removed only): PercPos against the lowest positive
# left 2,100 of the 2,202 training queries without a negative (measured 2026-12-05), so the cross-encoder
# would have trained on 102 queries; with 43 judged documents a query, unjudged top hits are rarely relevant.
RERANK_NFCORPUS_TRAIN = RERANK_TRAIN.replace("--eval-steps 100 --save-steps 100", "--eval-steps 200 --save-steps 200")
RERANK_NFCORPUS_TRAIN += " --positives one"


def rerank_nfcorpus_args(ctx: Context) -> list[str]:
    """benchmarks/rerank.py on NFCorpus: BM25's top 100 reranked by a cross-encoder trained on NFCorpus train
    (issue 15; published BM25 + ms-marco-MiniLM cross-encoder: 0.350). Smoke: rerank's, BM25 only."""
    if ctx.smoke:
        args = rerank_args(ctx)
        for option, folder in (("--finetune-folder", "rerank-nf-smoke-ft"), ("--out", "rerank-nf-smoke")):
            args[args.index(option) + 1] = str(ctx.workdir / folder)
        del args[args.index("--seed-group") : args.index("--seed-group") + 2]
        args[args.index("--first-stages") + 1] = "bm25"
        return args
    out = ctx.workdir / "rerank-nfcorpus"
    return ["--data", "nfcorpus", "--finetune-folder", str(out / "finetune-seed1"),
            "--finetune-args", "--seed 1 --positives one --mine-method naive --mine-depth 30 --mine-negatives 4",
            "--train-args", RERANK_NFCORPUS_TRAIN, "--first-stages", "bm25", "--out", str(out),
            "--threads", str(ctx.threads)]  # fmt: skip
