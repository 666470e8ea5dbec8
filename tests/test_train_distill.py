"""Distillation: the losses against hand computation and sentence-transformers' MarginMSELoss /
DistillKLDivLoss formulas, the objective the trainer builds, teacher scores read from a negatives
file and laid out by the collator, and `densekit train --distill` end to end with a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from densekit.errors import DensekitError, InputError
from densekit.retriever.train.config import LossConfig
from densekit.retriever.train.distill import DistillInputs, ListwiseKLLoss, MarginMSELoss
from densekit.retriever.train.losses import InfoNCELoss, LossInputs
from densekit.retriever.train.objective import DistillObjective, build_objective


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g), dim=1)


@pytest.fixture
def batch():
    """3 queries; documents laid out as the collator does: positives 0..2, then 2 negatives per query."""
    q, d = _unit(3, 8, 0), _unit(9, 8, 1)
    columns = torch.tensor([[0, 3, 4], [1, 5, 6], [2, 7, 8]])
    teacher = torch.tensor([[8.0, 3.0, -1.0], [2.0, 4.0, 1.5], [5.0, 5.0, 0.0]])
    return q, d, DistillInputs(columns, teacher)


def test_margin_mse_by_hand(batch) -> None:
    q, d, inputs = batch
    total, count = 0.0, 0
    for i, row in enumerate(inputs.columns.tolist()):
        s = [float(q[i] @ d[j]) for j in row]
        t = inputs.teacher[i].tolist()
        for k in (1, 2):
            total += ((s[0] - s[k]) - (t[0] - t[k])) ** 2
            count += 1
    assert float(MarginMSELoss()(q, d, inputs)) == pytest.approx(total / count, rel=1e-5)


def test_margin_mse_equals_sentence_transformers(batch) -> None:
    from sentence_transformers.util import pairwise_dot_score

    q, d, inputs = batch
    pos, negs = d[inputs.columns[:, 0]], [d[inputs.columns[:, k]] for k in (1, 2)]
    margins = torch.stack([pairwise_dot_score(q, pos) - pairwise_dot_score(q, n) for n in negs], dim=1)
    labels = inputs.teacher[:, :1] - inputs.teacher[:, 1:]  # ST's label conversion for [t_p, t_n...]
    expected = torch.nn.MSELoss()(margins, labels)
    assert float(MarginMSELoss()(q, d, inputs)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("ts,tt", [(1.0, 1.0), (0.5, 2.0)])
def test_listwise_kl_by_hand(batch, ts, tt) -> None:
    q, d, inputs = batch
    total = 0.0
    for i, row in enumerate(inputs.columns.tolist()):
        s = [float(q[i] @ d[j]) / ts for j in row]
        t = [x / tt for x in inputs.teacher[i].tolist()]
        log_zs = math.log(sum(math.exp(x) for x in s))
        zt = sum(math.exp(x) for x in t)
        for sk, tk in zip(s, t, strict=True):
            p = math.exp(tk) / zt
            total += p * (math.log(p) - (sk - log_zs))
    expected = total / 3 * ts**2
    got = ListwiseKLLoss(student_temperature=ts, teacher_temperature=tt)(q, d, inputs)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_listwise_kl_equals_sentence_transformers(batch) -> None:
    from sentence_transformers.util import pairwise_dot_score

    q, d, inputs = batch
    student = torch.stack([pairwise_dot_score(q, d[inputs.columns[:, k]]) for k in range(3)], dim=1) / 2.0
    teacher = torch.softmax(inputs.teacher / 2.0, dim=1)
    expected = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(student, dim=1), teacher) * 4.0
    assert float(ListwiseKLLoss(temperature=2.0)(q, d, inputs)) == pytest.approx(float(expected), rel=1e-6)


def test_missing_candidates_are_masked(batch) -> None:
    q, d, inputs = batch
    short = DistillInputs(inputs.columns.clone(), inputs.teacher.clone())
    short.columns[1, 2] = -1
    short.teacher[1, 2] = 1e6  # must not matter
    only_two = DistillInputs(inputs.columns[:, :2], inputs.teacher[:, :2])
    # query 1 with one negative scores like its first two columns alone
    kl = ListwiseKLLoss()
    rows = [kl(q[i : i + 1], d, DistillInputs(short.columns[i : i + 1], short.teacher[i : i + 1])) for i in range(3)]
    assert float(rows[1]) == pytest.approx(
        float(kl(q[1:2], d, DistillInputs(only_two.columns[1:2], only_two.teacher[1:2]))), rel=1e-6
    )
    assert math.isfinite(float(MarginMSELoss()(q, d, short)))
    assert math.isfinite(float(kl(q, d, short)))


def _contrastive_inputs(distill: DistillInputs, rows: slice = slice(None)) -> LossInputs:
    return LossInputs(torch.arange(3), torch.zeros(3, 9, dtype=torch.bool), rows, distill=distill)


def test_objective_margin_mse_in_logit_units_by_hand(batch) -> None:
    """loss = InfoNCE + w * mean((s_p - s_n)/tau_s - (t_p - t_n)/tau_t)^2, tau_s the InfoNCE temperature."""
    q, d, inputs = batch
    config = LossConfig(distill="margin-mse", distill_weight=0.5, distill_temperature=2.0)
    objective = build_objective(config)
    assert isinstance(objective, DistillObjective) and objective.temperature == pytest.approx(0.05)
    total, count = 0.0, 0
    for i, row in enumerate(inputs.columns.tolist()):
        s = [float(q[i] @ d[j]) / 0.05 for j in row]
        t = [x / 2.0 for x in inputs.teacher[i].tolist()]
        for k in (1, 2):
            total += ((s[0] - s[k]) - (t[0] - t[k])) ** 2
            count += 1
    contrastive = _contrastive_inputs(inputs)
    expected = float(InfoNCELoss(0.05)(q, d, contrastive)) + 0.5 * total / count
    q = q.clone().requires_grad_()
    value = objective(q, d, contrastive)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert float(q.grad.abs().sum()) > 0


def test_objective_kl_alone_equals_sentence_transformers_on_logits(batch) -> None:
    """--loss none --distill kl: ST's DistillKLDivLoss (temperature 1) on the student's similarities
    divided by --temperature and the teacher's scores divided by --distill-temperature."""
    from sentence_transformers.util import pairwise_dot_score

    q, d, inputs = batch
    config = LossConfig(name="none", distill="kl", distill_weight=3.0, temperature=0.1, distill_temperature=2.0)
    objective = build_objective(config)
    student = torch.stack([pairwise_dot_score(q, d[inputs.columns[:, k]]) for k in range(3)], dim=1) / 0.1
    teacher = torch.softmax(inputs.teacher / 2.0, dim=1)
    expected = 3.0 * torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(student, dim=1), teacher)
    assert float(objective(q, d, _contrastive_inputs(inputs))) == pytest.approx(float(expected), rel=1e-5)


def test_objective_reads_only_this_process_rows(batch) -> None:
    """Under DDP a process computes its own query rows (LossInputs.rows), as InfoNCE does."""
    q, d, inputs = batch
    objective = build_objective(LossConfig(name="none", distill="kl"))
    part = objective(q, d, _contrastive_inputs(inputs, slice(1, 3)))
    alone = objective(q[1:3], d, _contrastive_inputs(inputs.select(slice(1, 3))))
    assert float(part) == pytest.approx(float(alone), rel=1e-6)


def test_objective_learnable_temperature_learns_from_distillation(batch) -> None:
    q, d, inputs = batch
    objective = build_objective(LossConfig(name="none", distill="margin-mse", learnable_temperature=True))
    objective(q, d, _contrastive_inputs(inputs)).backward()
    assert objective.contrastive.log_scale.grad is not None


def test_build_objective_without_distillation_is_the_contrastive_loss() -> None:
    """Plain runs keep the loss module (and the checkpoint layout) they had before distillation."""
    assert type(build_objective(LossConfig())) is InfoNCELoss


@pytest.mark.parametrize(
    "config,message",
    [
        (LossConfig(name="none"), "nothing to train"),
        (LossConfig(distill="mse"), "unknown distillation"),
        (LossConfig(distill="kl", distill_weight=0), "must be positive"),
        (LossConfig(teacher_score="ce_score"), "only read by distillation"),
        (LossConfig(distill="kl", teacher_score="ce"), "<name>_score"),
        (LossConfig(name="none", distill="kl", symmetric=True), "symmetric"),
    ],
)
def test_distill_config_errors(config: LossConfig, message: str) -> None:
    with pytest.raises(DensekitError, match=message):
        config.validate()


# -- teacher scores from the negatives file --------------------------------------------------------


def write_scored(source: Path, target: Path, drop: tuple[str, int] | None = None) -> Path:
    """A copy of a negatives file with cross-encoder scores: positives 4.0 + 0.5 * line, the negative of
    rank r 3.0 - r; `drop=("negative" | "positive", line)` leaves that score out on that line."""
    lines = []
    for number, raw in enumerate(source.read_text().splitlines(), start=1):
        record = json.loads(raw)
        record["positive_ce_scores"] = {p: 4.0 + 0.5 * number for p in record["positives"]}
        for negative in record["negatives"]:
            negative["ce_score"] = 3.0 - negative["rank"]
        if drop == ("positive", number):
            del record["positive_ce_scores"][record["positives"][0]]
        if drop == ("negative", number):
            del record["negatives"][1]["ce_score"]
        lines.append(json.dumps(record))
    target.write_text("\n".join(lines) + "\n")
    return target


def test_teacher_scores_are_read_and_laid_out_per_query(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from transformers import AutoTokenizer

    from densekit.data import load_dataset
    from densekit.retriever.train.data import ContrastiveCollator, read_training_examples, resolve_teacher_score

    scored = write_scored(train_negatives, tmp_path / "scored.jsonl")
    assert resolve_teacher_score(scored) == "ce_score"
    corpus = load_dataset(scifact_small, split="test").corpus
    examples = read_training_examples(scored, corpus, 2, "ce_score")
    assert examples[0].teacher_scores == (4.5, 2.0, 1.0)
    assert read_training_examples(train_negatives, corpus, 2)[0].teacher_scores is None

    # two shards of two queries with 2, 1, 0, 2 negatives
    chosen = [examples[0], examples[3], examples[5], examples[7]]
    chosen[1] = replace(chosen[1], negative_ids=chosen[1].negative_ids[:1], teacher_scores=chosen[1].teacher_scores[:2])
    chosen[2] = replace(chosen[2], negative_ids=(), teacher_scores=(9.0,))
    collator = ContrastiveCollator(AutoTokenizer.from_pretrained(tiny_model), corpus, 48, 48)
    batch = collator(chosen, shards=2)
    # shard 0 documents: pos0 pos1 n0a n0b n1a (0..4); shard 1: pos2 pos3 n3a n3b (5..8)
    assert batch.distill.columns.tolist() == [[0, 2, 3], [1, 4, -1], [5, -1, -1], [6, 7, 8]]
    for row, example in enumerate(chosen):
        own = [c for c in batch.distill.columns[row].tolist() if c >= 0]
        assert [batch.document_ids[c] for c in own] == [example.positive_id, *example.negative_ids]
        assert batch.distill.teacher[row, : len(own)].tolist() == list(example.teacher_scores)
    assert collator(read_training_examples(train_negatives, corpus, 2)[:2]).distill is None


def test_default_teacher_score_prefers_the_cross_encoder(train_negatives: Path, tmp_path: Path) -> None:
    from densekit.retriever.train.data import resolve_teacher_score

    record = json.loads(train_negatives.read_text().splitlines()[0])
    record["positive_scores"] = {p: 0.9 for p in record["positives"]}
    record["positive_guide_scores"] = {p: 0.8 for p in record["positives"]}
    for negative in record["negatives"]:
        negative.update(teacher_score=0.5, guide_score=0.4)
    path = tmp_path / "neg.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert resolve_teacher_score(path) == "guide_score"  # no ce_score: the guide before the dense miner
    with pytest.raises(InputError, match=r"negatives\.jsonl:1: distillation needs teacher scores"):
        resolve_teacher_score(train_negatives)  # ids and ranks only


@pytest.mark.parametrize("where", ["positive", "negative"])
def test_missing_teacher_score_names_file_and_line(
    train_negatives: Path, scifact_small: Path, tmp_path: Path, where: str
) -> None:
    from densekit.data import load_dataset
    from densekit.retriever.train.data import read_training_examples

    scored = write_scored(train_negatives, tmp_path / "scored.jsonl", drop=(where, 4))
    corpus = load_dataset(scifact_small, split="test").corpus
    if where == "negative":
        read_training_examples(scored, corpus, 1, "ce_score")  # only the first negative is read: still fine
    with pytest.raises(InputError, match=rf"scored\.jsonl:4: .*{where} .*ce_score"):
        read_training_examples(scored, corpus, 2, "ce_score")


# -- densekit train --distill, end to end --------------------------------------------------------------


def _train_args(model: Path, negatives: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--negatives", str(negatives), "--corpus", str(corpus),
        "--output", str(out), "--negatives-per-query", "2", "--batch-size", "4", "--max-length", "48",
        "--lr", "1e-3", "--device", "cpu", "--seed", "3", "--json", "--quiet", *extra,
    ]  # fmt: skip


def _distill_loss_of(model: Path, examples, corpus, objective: DistillObjective) -> float:
    """The distillation term of `model` over all `examples` (eval mode, no dropout)."""
    from densekit.data import join_title_text
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.train.data import distill_inputs

    encoder = Encoder(str(model), device="cpu", max_length=48)
    queries = torch.from_numpy(encoder.encode_queries([e.query for e in examples]))
    doc_ids = [e.positive_id for e in examples] + [d for e in examples for d in e.negative_ids]
    texts = [join_title_text(corpus.document(d)["title"], corpus.document(d)["text"]) for d in doc_ids]
    docs = torch.from_numpy(encoder.encode_documents(texts))
    inputs = LossInputs(torch.arange(len(examples)), torch.zeros(0), distill=distill_inputs(examples))
    with torch.no_grad():
        return float(objective.distill_loss(queries, docs, inputs))


def test_train_kl_alone_from_stored_teacher_scores_moves_the_student_toward_the_teacher(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from densekit.data import load_dataset
    from densekit.retriever.train.data import read_training_examples

    scored = write_scored(train_negatives, tmp_path / "scored.jsonl")
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        _train_args(tiny_model, scored, scifact_small, out, "--loss", "none", "--distill", "kl", "--epochs", "2"),
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["finished"] and summary["teacher_score"] == "ce_score"
    assert summary["config"]["loss"]["distill"] == "kl" and summary["config"]["loss"]["name"] == "none"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["loss"] >= 0 for r in steps if "loss" in r)

    corpus = load_dataset(scifact_small, split="test").corpus
    examples = read_training_examples(scored, corpus, 2, "ce_score")
    objective = build_objective(LossConfig(name="none", distill="kl"))
    before = _distill_loss_of(tiny_model, examples, corpus, objective)
    after = _distill_loss_of(out / "model", examples, corpus, objective)
    assert after < 0.5 * before, (before, after)  # the student learned the teacher's preferences (0.987 -> 0.387)


def test_train_distill_without_the_scores_is_one_line_exit_2_before_training(
    tiny_model: Path, train_negatives: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    scored = write_scored(train_negatives, tmp_path / "scored.jsonl", drop=("negative", 5))
    out = tmp_path / "run"
    args = _train_args(tiny_model, scored, scifact_small, out, "--distill", "margin-mse", "--teacher-score", "ce_score")
    code, _, stderr = run_cli(args, capsys, monkeypatch)
    assert code == 2
    message = [line for line in stderr.splitlines() if "scored.jsonl" in line]
    assert len(message) == 1 and "scored.jsonl:5:" in message[0] and '"ce_score"' in message[0], stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    code, _, stderr = run_cli(
        _train_args(tiny_model, train_negatives, scifact_small, out, "--distill", "kl"), capsys, monkeypatch
    )
    assert code == 2 and "negatives.jsonl:1: distillation needs teacher scores" in stderr
