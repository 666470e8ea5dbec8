"""Two torchrun processes (gloo, CPU) compute the same loss and gradients as one process.

The test launches ``torchrun --nproc_per_node 2`` on this very file; as a script it is the worker:
each rank embeds its half of a global batch, the embeddings are gathered with gradient, DDP
averages the parameter gradients, and rank 0 saves loss and gradients. The test then runs the
combined batch in one process and compares (1e-5), for the plain path and for GradCache, and with
InfoNCE plus a distillation term (MarginMSE, listwise KL). Queries have different numbers of mined
negatives, so the two shards hold different numbers of documents (and of distillation pairs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

QUERIES = [
    f"question {i} about {topic}"
    for i, topic in enumerate(
        ["scurvy", "coffee", "vaccines", "the sky", "chocolate", "dark matter", "sleep", "insulin"]
    )
]
WORDS = ["evidence", "trial", "cohort", "protein", "gene"]
DOCS = {
    f"d{i}": {"title": f"title {i}", "text": " ".join(WORDS[: 1 + i % 5]) + f" result {i}" * (1 + i % 4)}
    for i in range(30)
}
NEGATIVES = [2, 0, 1, 3, 1, 2, 0, 2]  # per query: uneven shards
DISTILL = ("margin-mse", "kl")


def _examples():
    from densekit.retriever.train.data import TrainingExample

    examples, next_negative = [], 8
    for i, query in enumerate(QUERIES):
        negs = tuple(f"d{next_negative + j}" for j in range(NEGATIVES[i]))
        next_negative += NEGATIVES[i]
        teacher = tuple(float((i * 7 + j * 3) % 5) for j in range(1 + NEGATIVES[i]))
        examples.append(TrainingExample(f"q{i}", query, f"d{i}", negs, frozenset({f"d{i}"}), teacher))
    return examples


def _loss(distill: str | None):
    from densekit.retriever.train.config import LossConfig
    from densekit.retriever.train.losses import InfoNCELoss
    from densekit.retriever.train.objective import build_objective

    if distill is None:
        return InfoNCELoss(0.05, symmetric=True)
    return build_objective(LossConfig(symmetric=True, distill=distill, distill_weight=0.5))


def compute(
    model_dir: str, world: int, rank: int, chunk: int | None, distill: str | None = None
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss (averaged over ranks) and parameter gradients after one step on rank `rank` of `world`."""
    from transformers import AutoModel, AutoTokenizer

    from densekit.data import Corpus
    from densekit.retriever.train.data import ContrastiveCollator
    from densekit.retriever.train.distributed import DistributedContext, all_reduce_mean
    from densekit.retriever.train.gradcache import contrastive_step
    from densekit.retriever.train.losses import LossInputs
    from densekit.retriever.train.model import DualEncoder

    ctx = DistributedContext(rank, world, rank)
    model = DualEncoder(AutoModel.from_pretrained(model_dir), "mean", True).eval()  # no dropout: exact
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model)
    collator = ContrastiveCollator(AutoTokenizer.from_pretrained(model_dir), Corpus.from_records(DOCS), 64, 32)
    batch = collator(_examples(), shards=world)
    per = batch.size // world
    inputs = LossInputs(batch.positive_index, batch.exclude, slice(rank * per, (rank + 1) * per), None, batch.distill)
    out = contrastive_step(
        train_model,
        _loss(distill),
        batch.query_features[rank],
        batch.document_features[rank],
        inputs,
        ctx,
        torch.device("cpu"),
        chunk,
    )
    loss = all_reduce_mean(out.loss.clone(), ctx)
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(model_dir: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {str(chunk): compute(model_dir, world, rank, chunk) for chunk in (None, 3)}
    results |= {distill: compute(model_dir, world, rank, None, distill) for distill in DISTILL}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_combined_batch(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(tiny_model),
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = torch.load(out)
    for chunk, distill in ((None, None), (3, None), *((None, d) for d in DISTILL)):
        loss_one, grads_one = compute(str(tiny_model), 1, 0, chunk, distill)
        loss_two, grads_two = distributed[distill or str(chunk)]
        assert loss_two == pytest.approx(loss_one, abs=1e-5)
        assert grads_one.keys() == grads_two.keys() and len(grads_one) > 10
        for name, grad in grads_one.items():
            assert torch.allclose(grads_two[name], grad, atol=1e-5, rtol=1e-4), (chunk, distill, name)
        assert max(float(g.abs().max()) for g in grads_one.values()) > 1e-4


def _trainer_config(model_dir: str, negatives: str, corpus: str, output: str):
    from densekit.retriever.train import DataConfig, TrainConfig

    return TrainConfig(
        model=model_dir,
        output=Path(output),
        data=DataConfig(negatives=Path(negatives), corpus=corpus, negatives_per_query=2),
        batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        max_length=48,
        device="cpu",
        seed=3,
    )


def _trainer_worker(model_dir: str, negatives: str, corpus: str, output: str) -> None:
    """The whole trainer under torchrun; every rank saves its final weights beside the run."""
    from densekit.retriever.train.trainer import Trainer

    trainer = Trainer(_trainer_config(model_dir, negatives, corpus, output))
    trainer.train()
    torch.save(trainer.model.state_dict(), Path(output) / f"rank{trainer.ctx.rank}.pt")


def test_trainer_under_torchrun_keeps_ranks_in_step(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """`Trainer` with 2 gloo processes: ranks hold identical weights after every update (DDP really
    averages), the saved model is rank 0's, and the first loss equals one process's on the same batch."""
    import json
    import shutil

    from densekit.retriever.train import train

    model = tmp_path / "no_dropout"  # dropout off: one process and two draw different masks
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        "--trainer",
        str(model),
        str(train_negatives),
        str(scifact_small),
        str(two),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"] and (two / "model" / "modules.json").is_file()

    train(_trainer_config(str(model), str(train_negatives), str(scifact_small), str(one)))
    first = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0]) for run in (one, two)]
    assert first[0]["step"] == first[1]["step"] == 1
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], abs=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "--trainer":
        _trainer_worker(*sys.argv[2:6])
    else:
        _worker(sys.argv[1], sys.argv[2])
