"""`densekit train-reranker`: cross-encoder training on the shared loop, with a tiny random BERT.

The losses against hand computation; the loss falls on a tiny set (listwise and BCE); a run stopped
and resumed ends bit-identical to one run straight through; the saved folder scores the same pairs
in densekit's CrossEncoderReranker and in sentence-transformers' CrossEncoder; the CLI end to end
(evaluation during training, `densekit eval --rerank` on the result); bad input exits 2 with one line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from densekit.retriever.train.cross_encoder import (
    ListwiseSoftmaxLoss,
    PairwiseBCELoss,
    RerankerDataConfig,
    RerankerTrainConfig,
    train_reranker,
)


def _config(model: Path, negatives: Path, corpus: Path, output: Path, **run) -> RerankerTrainConfig:
    values = {
        "epochs": 4,
        "batch_size": 4,
        "learning_rate": 1e-2,  # a random 2-layer BERT: slower rates leave the loss at log(3) for epochs
        "warmup_ratio": 0.0,
        "max_length": 64,
        "device": "cpu",
        "seed": 7,
        **run,
    }
    data = RerankerDataConfig(negatives=negatives, corpus=str(corpus), negatives_per_query=2)
    return RerankerTrainConfig(model=str(model), output=output, data=data, **values)


def _losses(output: Path) -> list[tuple[int, float]]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def negatives(scifact_small: Path, tmp_path_factory) -> Path:
    """A tiny negatives file in the mining format: each judged query of the SciFact subset, its
    positives and three unjudged documents as ranked negatives (what mining mostly finds)."""
    from densekit.data import load_dataset

    ds = load_dataset(scifact_small, split="test")
    judged = {d for docs in ds.qrels.values() for d in docs}
    others = [d for d in ds.corpus.ids if d not in judged]
    path = tmp_path_factory.mktemp("reranker_negatives") / "negatives.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i, (query_id, docs) in enumerate(sorted(ds.qrels.items())):
            record = {
                "query_id": query_id,
                "query": ds.queries[query_id],
                "positives": sorted(d for d, rel in docs.items() if rel > 0),
                "negatives": [{"id": others[(7 * i + j) % len(others)], "rank": j + 1} for j in range(3)],
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def straight(tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path_factory) -> tuple[dict, Path]:
    """One listwise run straight through (4 epochs on the tiny negatives file's groups)."""
    output = tmp_path_factory.mktemp("reranker") / "straight"
    return train_reranker(_config(tiny_model, negatives, scifact_small, output)), output


def test_losses_equal_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # the second group has one negative
    first = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    second = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(1.5)))
    assert ListwiseSoftmaxLoss()(logits, mask).item() == pytest.approx((first + second) / 2, abs=1e-6)

    def bce(x: float, label: int) -> float:
        p = 1 / (1 + math.exp(-x))
        return -math.log(p if label else 1 - p)

    pairs = [bce(2, 1), bce(0, 0), bce(-1, 0), bce(0.5, 1), bce(1.5, 0)]  # the padded pair does not count
    assert PairwiseBCELoss()(logits, mask).item() == pytest.approx(sum(pairs) / 5, abs=1e-6)


def test_listwise_training_lowers_the_loss(straight: tuple[dict, Path]) -> None:
    summary, output = straight
    assert summary["finished"] and summary["examples_per_epoch"] == summary["examples"]
    losses = [loss for _, loss in _losses(output)]
    per_epoch = len(losses) // 4
    assert sum(losses[-per_epoch:]) < 0.5 * sum(losses[:per_epoch])  # last epoch well below the first


def test_bce_option_trains_and_evaluates_a_run_file(
    tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    from densekit.data import load_dataset
    from densekit.errors import InputError
    from densekit.retriever.bm25 import BM25Retriever

    ds = load_dataset(scifact_small, split="test")
    first_stage = BM25Retriever.build(ds.corpus, backend="bm25s").search(ds.queries, 5)
    first_stage.write_trec(tmp_path / "first.trec")
    evaluation = {"eval_data": str(scifact_small), "eval_split": "test", "eval_candidates": tmp_path / "first.trec"}
    config = _config(tiny_model, negatives, scifact_small, tmp_path / "bce", loss="bce", eval_depth=5, **evaluation)
    summary = train_reranker(config)
    assert summary["finished"] and summary["config"]["loss"] == "bce"
    assert summary["best"]["step"] == summary["steps"] and 0 < summary["best"]["ndcg@10"] <= 1
    losses = [loss for _, loss in _losses(tmp_path / "bce")]
    per_epoch = len(losses) // 4
    assert sum(losses[-per_epoch:]) < 0.8 * sum(losses[:per_epoch])
    assert math.log(2) * 0.5 < losses[0] < math.log(2) * 2  # a fresh head: logits near 0, BCE near log 2

    (tmp_path / "other.trec").write_text("nobody Q0 d1 1 1.0 x\n")
    config.eval_candidates, config.output = tmp_path / "other.trec", tmp_path / "refused"
    with pytest.raises(InputError, match="none of the evaluation queries"):
        train_reranker(config)


def test_resume_is_bit_identical(
    straight: tuple[dict, Path], tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    summary, output = straight
    split = tmp_path / "split"
    stopped = train_reranker(_config(tiny_model, negatives, scifact_small, split, stop_after_steps=4))
    assert not stopped["finished"] and stopped["steps"] == 4
    resumed = train_reranker(_config(tiny_model, negatives, scifact_small, split), resume=True)
    assert resumed["finished"] and resumed["resumed_from"].endswith("step-4")
    expected, got = load_file(output / "model" / "model.safetensors"), load_file(split / "model" / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    assert not torch.equal(expected["classifier.weight"], torch.zeros_like(expected["classifier.weight"]))
    assert _losses(split) == _losses(output)


def test_saved_folder_scores_equal_in_densekit_and_sentence_transformers(
    straight: tuple[dict, Path], scifact_small: Path
) -> None:
    from sentence_transformers import CrossEncoder

    from densekit.data import join_title_text, load_dataset
    from densekit.retriever.rerank import CrossEncoderReranker

    folder = straight[1] / "model"
    ds = load_dataset(scifact_small, split="test")
    query = next(iter(ds.queries.values()))
    docs = [join_title_text(d["title"], d["text"]) for d in map(ds.corpus.document, list(ds.corpus.ids)[:6])]
    reranker = CrossEncoderReranker(None, folder, ds.corpus, device="cpu", batch_size=4)
    cross_encoder = CrossEncoder(str(folder), device="cpu")
    assert reranker.max_length == cross_encoder.tokenizer.model_max_length == 64  # the trained length, both
    assert max(len(reranker.tokenizer(query, d)["input_ids"]) for d in docs) > 64  # so truncation is compared too
    ours = reranker.score(query, docs)
    theirs = cross_encoder.predict([(query, d) for d in docs], batch_size=4)
    assert ours.shape == theirs.shape == (6,)
    assert float(abs(ours - theirs).max()) < 1e-5
    assert float(ours.std()) > 0  # distinct scores: the comparison is not vacuous


def test_cli_trains_evaluates_and_the_folder_reranks_in_densekit_eval(
    tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "ce"
    args = ["train-reranker", "-m", str(tiny_model), "-o", str(out), "--negatives", str(negatives)]
    args += ["--corpus", str(scifact_small), "--negatives-per-query", "2", "--batch-size", "4", "--max-steps", "3"]
    args += ["--max-length", "48", "--lr", "1e-3", "--eval-data", str(scifact_small), "--eval-split", "test"]
    args += ["--eval-steps", "2", "--eval-depth", "5", "--device", "cpu", "--json", "--quiet"]
    code, stdout, stderr = run_cli(args, capsys, monkeypatch)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["finished"] and summary["steps"] == 3 and summary["examples_this_run"] == 12
    assert 0 <= summary["best"]["ndcg@10"] <= 1 and summary["best"]["step"] in (2, 3)
    assert (out / "best" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in evals] == [2, 3]

    code, stdout, stderr = run_cli(
        ["eval", str(scifact_small), "--bm25", "--backend", "bm25s", "--rerank", str(out / "model")]
        + ["--rerank-depth", "5", "--json", "--quiet"],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    assert json.loads(stdout)["config"]["reranker"] == str(out / "model")


def test_bad_input_is_one_line_exit_2(
    tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    base = ["train-reranker", "-m", str(tiny_model), "-o", str(tmp_path / "out"), "--corpus", str(scifact_small)]
    code, _, stderr = run_cli([*base, "--negatives", str(tmp_path / "absent.jsonl")], capsys, monkeypatch)
    assert code == 2 and "absent.jsonl" in stderr and len(stderr.strip().splitlines()) == 1

    lines = negatives.read_text().splitlines()
    record = json.loads(lines[1])
    record["negatives"] = []
    broken = tmp_path / "no_negatives.jsonl"
    broken.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    code, _, stderr = run_cli([*base, "--negatives", str(broken)], capsys, monkeypatch)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "no_negatives.jsonl:2" in stderr and "no negatives" in stderr
    assert not (tmp_path / "out" / "model").exists()

    args = [*base, "--negatives", str(broken), "--skip-queries-without-negatives", "--max-steps", "1"]
    args += ["--max-length", "32", "--device", "cpu", "--json", "--quiet"]
    code, stdout, stderr = run_cli(args, capsys, monkeypatch)
    assert code == 0, stderr
    skipped = len(json.loads(lines[1])["positives"])
    assert json.loads(stdout)["examples"] == sum(len(json.loads(x)["positives"]) for x in lines) - skipped


def _uneven(negatives: Path, target: Path) -> Path:
    """`negatives` with 1, 2 or 3 negatives per query: the processes' shards hold different pair counts."""
    lines = [json.loads(line) for line in negatives.read_text().splitlines()]
    for i, record in enumerate(lines):
        record["negatives"] = record["negatives"][: 1 + i % 3]
    target.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return target


def _distributed_config(model: str, negatives: str, corpus: str, output: str) -> RerankerTrainConfig:
    return _config(Path(model), Path(negatives), Path(corpus), Path(output), loss="bce", epochs=1, max_steps=2)


@pytest.mark.slow  # two torchrun processes: about 20 s of process start-up and imports
def test_torchrun_two_processes_train_as_one(
    tiny_model: Path, negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """2 gloo processes: ranks stay identical, and the BCE losses of the first two steps (uneven pair
    counts per shard, so the global pair count matters) equal one process's on the same batches."""
    import os
    import shutil
    import subprocess

    model = tmp_path / "no_dropout"  # dropout off: one process and two draw different masks
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    data = _uneven(negatives, tmp_path / "uneven.jsonl")
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    args = [str(model), str(data), str(scifact_small), str(two)]
    done = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    assert all(torch.equal(rank1[name], tensor) for name, tensor in rank0.items())
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2

    train_reranker(_distributed_config(str(model), str(data), str(scifact_small), str(one)))
    assert [s for s, _ in _losses(two)] == [1, 2]
    for (_, expected), (_, got) in zip(_losses(one), _losses(two), strict=True):
        assert got == pytest.approx(expected, abs=1e-5)


if __name__ == "__main__":  # the torchrun worker of test_torchrun_two_processes_train_as_one
    from densekit.retriever.train.cross_encoder import CrossEncoderTrainer

    trainer = CrossEncoderTrainer(_distributed_config(*sys.argv[1:5]))
    trainer.train()
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, Path(sys.argv[4]) / f"rank{trainer.ctx.rank}.safetensors")
