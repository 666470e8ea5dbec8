"""densekit's trainer against sentence-transformers' MultipleNegativesRankingLoss trainer, same tuples.

Both train the same start model on the same (query, positive, hard negative) tuples with the same
batch size, epochs, learning rate, warmup and seed, without duplicate texts in a batch; then both
models are scored on the test split with densekit's harness (ndcg@10). Throughput is training
examples per second of the training loop (model loading and evaluation excluded) in the same run,
reported as densekit / sentence-transformers.

    DENSEKIT_DATA=../shared/data/beir python benchmarks/train.py --data scifact \\
        --negatives /tmp/scifact.neg.jsonl --out /tmp/train-bench

GradCache's memory, one training step at batch 256 with chunk 32 against the whole batch at once
(each in a fresh process; peak resident memory from the OS, or peak CUDA memory on a GPU):

    DENSEKIT_DATA=../shared/data/beir python benchmarks/train.py gradcache-memory \\
        --negatives-file /tmp/scifact.neg.jsonl --batch-size 256 --chunk-size 32

Seconds per training step with the transformer called on the whole batch at once against
length-sorted groups of a few rows (densekit's `forward_batch_size`), alternated over several
different batches in one process:

    DENSEKIT_DATA=../shared/data/beir python benchmarks/train.py forward-groups \
        --negatives-file /tmp/scifact.neg.jsonl --sizes 0,8u,16,8,4

The negatives file comes from `densekit mine` (or densekit.mining.HardNegativeMiner): here
all-MiniLM-L6-v2 as teacher on the train split, TopK-PercPos 0.95, 4 negatives from the top 100.
Each example takes the query's highest-ranked negative; queries the filter left without any
negative are dropped for both trainers (sentence-transformers needs a full tuple).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from peak import PeakRSS


def write_tuples_file(source: Path, target: Path, negatives: int) -> int:
    """Copy the queries that have at least `negatives` negatives; returns how many."""
    kept = 0
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip() and len(json.loads(line)["negatives"]) >= negatives:
                dst.write(line)
                kept += 1
    return kept


def evaluate_model(folder: str, data: str, split: str, run_out: Path | None = None) -> float:
    """ndcg@10 of the model in `folder` on `split` (top 1000, densekit's harness); the run kept as TREC
    in `run_out` when given (for paired tests over queries)."""
    from densekit.data import load_dataset
    from densekit.eval.harness import evaluate_run
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    ds = load_dataset(data, split=split)
    run = DenseRetriever.build(Encoder(folder, device="cpu"), ds.corpus).search(ds.queries, 1000)
    if run_out is not None:
        run.write_trec(run_out, tag=Path(folder).parent.name)
    return float(evaluate_run(run, ds, ("ndcg@10",)).result.metrics["ndcg@10"])


def train_densekit(args, negatives: Path, out: Path) -> dict:
    from densekit.retriever.train import DataConfig, LossConfig, TrainConfig, train

    config = TrainConfig(
        model=args.model,
        output=out,
        data=DataConfig(negatives=negatives, corpus=args.data, negatives_per_query=args.negatives),
        loss=LossConfig(name=args.loss, guide=args.guide, symmetric=args.symmetric),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=args.warmup_ratio,
        weight_decay=0.0,
        seed=args.seed,
        chunk_size=args.chunk_size,
        max_length=args.max_length,
        device="cpu",
        forward_batch_size=args.forward_batch_size,
        max_steps=args.max_steps,
    )
    return train(config, overwrite=True)  # the benchmark's own scratch folder: a rerun starts over


def train_sentence_transformers(args, negatives: Path, out: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from densekit.data import join_title_text, load_dataset
    from densekit.retriever.models import resolve_model
    from densekit.retriever.train.data import read_training_examples

    corpus = load_dataset(args.data).corpus
    examples = read_training_examples(negatives, corpus, args.negatives)

    def text(doc_id: str) -> str:
        doc = corpus.document(doc_id)
        return join_title_text(doc["title"], doc["text"])

    columns: dict[str, list[str]] = {
        "anchor": [e.query for e in examples],
        "positive": [text(e.positive_id) for e in examples],
    }
    for i in range(args.negatives):
        columns[f"negative_{i + 1}"] = [text(e.negative_ids[i]) for e in examples]
    model = SentenceTransformer(str(resolve_model(args.model)), device="cpu")
    if args.max_length:
        model.max_seq_length = args.max_length
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        data_seed=args.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        use_cpu=True,
        dataloader_drop_last=False,
        max_steps=args.max_steps or -1,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict(columns),
        loss=MultipleNegativesRankingLoss(model),
    )
    result = trainer.train()
    model.save(str(out / "model"))
    if args.max_steps:
        return {
            "steps": args.max_steps,
            "train_seconds": result.metrics["train_runtime"],
            "examples_per_s": result.metrics["train_samples_per_second"],
        }
    return {
        "examples": len(examples),
        "train_seconds": result.metrics["train_runtime"],
        "examples_per_s": result.metrics["train_samples_per_second"],
        "final_loss": result.training_loss,
    }


def gradcache_step(args) -> dict:
    """One forward/backward of a `--batch-size` batch (query, positive) in this process; memory used."""
    import torch

    from densekit.data import load_dataset
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.train.data import ContrastiveCollator, read_training_examples
    from densekit.retriever.train.distributed import DistributedContext
    from densekit.retriever.train.gradcache import contrastive_step
    from densekit.retriever.train.losses import InfoNCELoss, LossInputs
    from densekit.retriever.train.model import DualEncoder

    device = torch.device(args.device)
    encoder = Encoder(args.model, device=args.device, max_length=args.max_length, dtype="float32")
    corpus = load_dataset(args.data).corpus
    examples, seen = [], set()
    for example in read_training_examples(args.negatives_file, corpus, 0):
        if example.query_id not in seen and example.positive_id not in seen:
            seen.update((example.query_id, example.positive_id))
            examples.append(example)
    examples = examples[: args.batch_size]
    config = encoder.config
    collator = ContrastiveCollator(encoder.tokenizer, corpus, config.max_length, config.max_length)
    batch = collator(examples)
    model = DualEncoder(encoder.model, config.pooling, config.normalize).to(device).eval()  # no dropout: comparable
    inputs = LossInputs(batch.positive_index, batch.exclude)
    process = psutil.Process()
    before = process.memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    out = contrastive_step(
        model,
        InfoNCELoss(0.05),
        batch.query_features[0],
        batch.document_features[0],
        inputs,
        DistributedContext(),
        device,
        args.chunk_size or None,
    )
    seconds = time.perf_counter() - t0
    grad_norm = float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None)))
    result = {
        "chunk_size": args.chunk_size or None,
        "batch": len(examples),
        "loss": float(out.loss),
        "seconds": seconds,
        "grad_norm": grad_norm,
        "before_step_mib": before / 2**20,
        "tokens": int(sum(f["attention_mask"].sum() for f in batch.query_features + batch.document_features)),
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def tuple_parser(**kwargs) -> argparse.ArgumentParser:
    """A parser with the arguments every mode shares: dataset, mined tuples, start model, max length."""
    parser = argparse.ArgumentParser(**kwargs)
    parser.add_argument("--data", default="scifact")
    parser.add_argument("--negatives-file", dest="negatives_file", type=Path, required=True)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--max-length", type=int, default=None)
    return parser


def gradcache_memory_main(argv: list[str]) -> None:
    parser = tuple_parser(prog="train.py gradcache-memory")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_step:  # the child: one step, its numbers as one JSON line
        print(json.dumps(gradcache_step(args)), flush=True)
        return
    rows = {}
    for chunk in (None, args.chunk_size):
        cmd = [
            sys.executable,
            __file__,
            "gradcache-memory",
            "--one-step",
            "--data",
            args.data,
            "--negatives-file",
            str(args.negatives_file),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
        ]
        cmd += ["--chunk-size", str(chunk or 0)]  # 0: the whole batch in one pass
        cmd += ["--max-length", str(args.max_length)] if args.max_length else []
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status:
            raise SystemExit(f"child failed: {' '.join(cmd)}")
        row = json.loads(output.strip().splitlines()[-1])
        row["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
        row["step_peak_rss_mib"] = row["peak_rss_mib"] - row["before_step_mib"]
        rows["gradcache" if chunk else "whole_batch"] = row
        print(json.dumps(row), flush=True)
    whole, cached = rows["whole_batch"], rows["gradcache"]
    key = "peak_cuda_mib" if "peak_cuda_mib" in whole else "step_peak_rss_mib"
    summary = {
        "measure": key,
        "whole_batch": round(whole[key], 1),
        "gradcache": round(cached[key], 1),
        "ratio_gradcache_over_whole": round(cached[key] / whole[key], 3),
        "process_peak_ratio": round(cached["peak_rss_mib"] / whole["peak_rss_mib"], 3),
        "step_time_ratio": round(cached["seconds"] / whole["seconds"], 3),
        "loss_equal": abs(whole["loss"] - cached["loss"]) < 1e-5,
        "grad_norm_rel_diff": abs(whole["grad_norm"] - cached["grad_norm"]) / whole["grad_norm"],
    }
    print(json.dumps(summary, indent=2))


def forward_groups_main(argv: list[str]) -> None:
    """One training step (train mode, dropout on) per setting on each of `--batches` batches.

    Settings: 0 = one transformer call per side (the anchor), N = length-sorted groups of N rows
    on both sides (densekit's path), Nu = the documents in groups of N in batch order (each trimmed
    to its longest row; queries in one call), which separates the effect of the group size from
    that of the padding.
    """
    import torch

    from densekit.retriever.train import DataConfig, TrainConfig
    from densekit.retriever.train.distributed import DistributedContext
    from densekit.retriever.train.gradcache import contrastive_step, split_features
    from densekit.retriever.train.model import length_sorted_groups
    from densekit.retriever.train.trainer import Trainer

    parser = tuple_parser(prog="train.py forward-groups")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--sizes", default="0,8u,16,8,4")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tuples = Path(tmp) / "tuples.jsonl"
        write_tuples_file(args.negatives_file, tuples, 1)
        config = TrainConfig(
            model=args.model,
            output=Path(tmp) / "out",
            batch_size=args.batch_size,
            data=DataConfig(negatives=tuples, corpus=args.data, negatives_per_query=1),
            max_length=args.max_length,
            device="cpu",
            seed=args.seed,
            forward_batch_size=0,
        )
        trainer = Trainer(config)
        trainer._setup()
    model, ctx, device = trainer.model, DistributedContext(), torch.device("cpu")
    batches = trainer.sampler.batches(0)[: args.batches + 1]

    def step(batch, size: str) -> float:
        inputs = trainer._loss_inputs(batch)
        queries, documents = batch.query_features[0], batch.document_features[0]
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if size.endswith("u"):
            model.forward_batch_size = None
            q = model.embed(queries, "query")
            d = torch.cat([model.embed(part, "document") for part in split_features(documents, int(size[:-1]))])
            trainer.loss_fn(q, d, inputs).backward()
        else:
            model.forward_batch_size = int(size) or None
            contrastive_step(model, trainer.loss_fn, queries, documents, inputs, ctx, device)
        return time.perf_counter() - t0

    def padded_tokens(documents, size: str) -> int:
        if size == "0":
            return documents["input_ids"].numel()
        n = int(size.rstrip("u"))
        parts = split_features(documents, n) if size.endswith("u") else length_sorted_groups(documents, n)[1]
        return sum(p["input_ids"].numel() for p in parts)

    step(trainer.collator([trainer.examples[i] for i in batches[0]]), "0")  # warm-up, not counted
    seconds = {size: [] for size in sizes}
    tokens = {size: 0 for size in sizes}
    real = 0
    for number, indices in enumerate(batches[1:], 1):
        batch = trainer.collator([trainer.examples[i] for i in indices])
        real += int(batch.document_features[0]["attention_mask"].sum())
        for size in sizes:
            seconds[size].append(round(step(batch, size), 3))
            tokens[size] += padded_tokens(batch.document_features[0], size)
        print(json.dumps({"batch": number, **{size: seconds[size][-1] for size in sizes}}), flush=True)
    anchor = sum(seconds["0"]) / len(seconds["0"]) if "0" in seconds else None
    summary = {
        size: {
            "mean_seconds": round(sum(v) / len(v), 3),
            "document_padding": round(tokens[size] / real - 1, 4),
            **({"speedup_vs_one_call": round(anchor / (sum(v) / len(v)), 3)} if anchor else {}),
        }
        for size, v in seconds.items()
    }
    print(json.dumps(summary, indent=2))


def throughput(args, tuples: Path, results: dict) -> None:
    """Examples per second only: `--max-steps` steps of each trainer, alternated for
    `--throughput-rounds` rounds so that the shared machine's load falls on both alike.

    One uncounted step of each trainer runs first (the process's first torch calls, lazy imports and
    first-seen kernel shapes would otherwise fall on whichever trainer runs first), and the order
    flips every round."""
    warm = argparse.Namespace(**{**vars(args), "max_steps": 1})
    train_densekit(warm, tuples, args.out / "throughput-warmup-densekit")
    train_sentence_transformers(warm, tuples, args.out / "throughput-warmup-st")
    rounds = []
    for r in range(args.throughput_rounds):
        if r % 2 == 0:
            dk = train_densekit(args, tuples, args.out / f"throughput-densekit-{r}")
            st = train_sentence_transformers(args, tuples, args.out / f"throughput-st-{r}")
        else:
            st = train_sentence_transformers(args, tuples, args.out / f"throughput-st-{r}")
            dk = train_densekit(args, tuples, args.out / f"throughput-densekit-{r}")
        row = {
            "round": r,
            "first": "densekit" if r % 2 == 0 else "sentence-transformers",
            "densekit_examples_per_s": dk["examples_per_s"],
            "st_examples_per_s": st["examples_per_s"],
            "ratio": round(dk["examples_per_s"] / st["examples_per_s"], 3),
        }
        print(json.dumps(row), flush=True)
        rounds.append(row)
    dk_total = sum(r["densekit_examples_per_s"] for r in rounds)
    st_total = sum(r["st_examples_per_s"] for r in rounds)
    results["throughput_rounds"] = rounds
    results["throughput_ratio_mean"] = round(dk_total / st_total, 3)
    (args.out / "throughput.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "gradcache-memory":
        gradcache_memory_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "forward-groups":
        forward_groups_main(sys.argv[2:])
        return
    parser = tuple_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--negatives", type=int, default=1, help="hard negatives per tuple")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument(
        "--forward-batch-size",
        type=int,
        default=None,
        help="densekit's rows per transformer call (default: the trainer's, 8 on CPU; 0 = all)",
    )
    parser.add_argument("--loss", default="infonce")
    parser.add_argument("--guide", default=None)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--split", default="test")
    parser.add_argument("--skip-st", action="store_true", help="densekit only (e.g. the GIST variant)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop both trainers after this many steps")
    parser.add_argument(
        "--throughput-rounds",
        type=int,
        default=0,
        help="examples/s only: alternate both trainers this many rounds of --max-steps steps",
    )
    parser.add_argument(
        "--densekit-result",
        type=Path,
        default=None,
        help="JSON of an earlier run's densekit half: train sentence-transformers only",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tuples = args.out / "tuples.neg.jsonl"
    kept = write_tuples_file(args.negatives_file, tuples, args.negatives)
    print(f"{kept} queries with >= {args.negatives} negatives", flush=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "queries": kept}

    if args.throughput_rounds:
        throughput(args, tuples, results)
        return
    if args.densekit_result:  # the densekit half of an earlier run of this script (its printed line)
        results["densekit"] = json.loads(args.densekit_result.read_text())
    else:
        t0 = time.perf_counter()
        with PeakRSS() as memory:
            dk = train_densekit(args, tuples, args.out / "densekit")
        keys = ("examples_this_run", "train_seconds", "examples_per_s", "final_loss")
        results["densekit"] = {k: dk[k] for k in keys}
        results["densekit"]["wall_s"] = round(time.perf_counter() - t0, 1)
        results["densekit"]["peak_rss_mib"] = memory.mib
        results["densekit"]["ndcg@10"] = evaluate_model(
            str(args.out / "densekit" / "model"), args.data, args.split, args.out / "densekit" / f"{args.split}.trec"
        )
        (args.out / "densekit_result.json").write_text(json.dumps(results["densekit"]))
    print(json.dumps(results["densekit"]), flush=True)
    if not args.skip_st:
        t0 = time.perf_counter()
        with PeakRSS() as memory:
            st = train_sentence_transformers(args, tuples, args.out / "st")
        st["wall_s"] = round(time.perf_counter() - t0, 1)
        st["peak_rss_mib"] = memory.mib
        st["ndcg@10"] = evaluate_model(
            str(args.out / "st" / "model"), args.data, args.split, args.out / "st" / f"{args.split}.trec"
        )
        results["sentence_transformers"] = st
        results["throughput_ratio"] = round(results["densekit"]["examples_per_s"] / st["examples_per_s"], 3)
        print(json.dumps(st), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
