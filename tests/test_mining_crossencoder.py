"""Mining with a cross-encoder (`densekit mine --scorer`), its false-negative filter, teacher votes.

The cross-encoder is the `tiny_model` BERT with a fresh one-logit head, saved as a Hugging Face
sequence-classification folder (what CrossEncoderReranker and sentence-transformers' CrossEncoder
load): its scores are meaningless, so the tests check that the stored scores are the reranker's
and that the filters drop exactly what their rules say.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from densekit.data import join_title_text, load_dataset
from densekit.errors import DensekitError
from densekit.mining import DenseScorer, HardNegativeMiner, RetrieverSource, read_negatives
from densekit.mining.filters import Candidates, CrossEncoderFilter, VoteFilter, apply_filters, filters_from_options
from densekit.mining.teachers import CrossEncoderScorer
from densekit.retriever.rerank import CrossEncoderReranker


@pytest.fixture(scope="module")
def tiny_cross_encoder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(7)
    model = BertForSequenceClassification.from_pretrained(tiny_model, num_labels=1).eval()
    with torch.no_grad():  # the random tiny BERT pools every text alike: a large head spreads the scores
        model.classifier.weight.mul_(1e4)  # (about 89 +- 0.2 on SciFact pairs instead of 0.0089 +- 1e-5)
    folder = tmp_path_factory.mktemp("tiny_cross_encoder")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(scifact_small: Path):
    return load_dataset(scifact_small, split="test")


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model: Path, dataset):
    from densekit.retriever.encoder import Encoder

    return DenseScorer(Encoder(tiny_model, device="cpu"), dataset.corpus, show_progress=False)


def _text(corpus, doc_id: str) -> str:
    doc = corpus.document(doc_id)
    return join_title_text(doc["title"], doc["text"])


# -- the rules, by hand ----------------------------------------------------------------------------


def _candidates(**extra) -> Candidates:
    """Five candidates and two positives with hand-picked scores of every teacher."""
    return Candidates(
        "q",
        ["a", "b", "c", "d", "e"],
        teacher_scores=[0.90, 0.70, 0.80, 0.20, 0.76],  # positives 0.80, 0.85: PercPos 0.95 threshold 0.76
        positive_ids=["p1", "p2"],
        positive_scores=[0.80, 0.85],
        guide_scores=[0.5, 0.6, 0.1, 0.2, 0.3],  # guide positive 0.6 (lowest of 0.6, 0.9)
        positive_guide_scores=[0.6, 0.9],
        extra_scores={
            "ce": ([5.0, 3.9, 4.0, 1.0, 4.5], [4.5, 5.5]),  # lowest positive 4.5
            "bm25": ([12.0, np.nan, 9.0, 11.0, 2.0], [10.0, 20.0]),  # lowest positive 10; PercPos threshold 9.5
            **extra,
        },
    )


def test_ce_filter_drops_at_or_above_the_lowest_positive_minus_margin() -> None:
    survivors, removed = apply_filters(_candidates(), [CrossEncoderFilter(0.5)])  # drop ce >= 4.0
    assert survivors.doc_ids == ["b", "d"] and removed == {"ce(0.5)": 3}
    assert CrossEncoderFilter(0.0).keep(_candidates()).tolist() == [False, True, True, True, False]  # 4.5 tie drops


def test_votes_by_hand() -> None:
    # teacher (PercPos 0.95 of 0.80 = 0.76, strict >): a, c          guide (>= 0.6): b
    # ce (>= 4.5): a, e                                               bm25 (> 9.5): a, d
    vote = VoteFilter(2, ("teacher", "guide", "ce", "bm25"))
    votes = vote.votes(_candidates())
    assert {k: [d for d, v in zip("abcde", mask, strict=True) if v] for k, mask in votes.items()} == {
        "teacher": ["a", "c"],
        "guide": ["b"],
        "ce": ["a", "e"],
        "bm25": ["a", "d"],
    }
    assert vote.keep(_candidates()).tolist() == [False, True, True, True, True]  # only a has >= 2 votes
    assert VoteFilter(1, vote.voters).keep(_candidates()).tolist() == [False] * 5
    assert VoteFilter(3, vote.voters).keep(_candidates()).tolist() == [False, True, True, True, True]
    assert VoteFilter(4, vote.voters).keep(_candidates()).tolist() == [True] * 5
    margins = VoteFilter(1, ("ce",), ce_margin=1.0)  # ce >= 3.5
    assert margins.keep(_candidates()).tolist() == [False, False, False, True, False]
    assert vote.label == "vote(2 of teacher+guide+ce+bm25)"


def test_bm25_abstains_when_it_did_not_retrieve_a_positive() -> None:
    candidates = _candidates(bm25=([12.0, np.nan, 9.0, 11.0, 2.0], [np.nan, 20.0]))
    assert not VoteFilter(1, ("bm25",)).votes(candidates)["bm25"].any()


def test_vote_and_ce_options() -> None:
    voters = ("teacher", "ce")
    [ce] = filters_from_options(["ce"], ce_margin=0.2, voters=voters)
    assert ce == CrossEncoderFilter(0.2)
    [vote] = filters_from_options(["vote"], percentage=0.9, ce_margin=0.3, vote_k=2, voters=voters)
    assert vote == VoteFilter(2, voters, 0.9, 0.0, 0.3)
    assert json.loads(json.dumps(vote.describe())) == vote.describe()  # a resumed run compares it with JSON
    for kwargs, message in (
        ({"methods": ["vote"]}, "needs --vote-k"),
        ({"methods": ["percpos"], "vote_k": 2}, "--vote-k is given"),
        ({"methods": ["percpos"], "ce_margin": 0.1}, "--ce-margin is given"),
        ({"methods": ["vote"], "vote_k": 3, "voters": voters}, "between 1 and the 2 teachers"),
    ):
        with pytest.raises(DensekitError, match=message):
            filters_from_options(**kwargs)


# -- the miner ---------------------------------------------------------------------------------------


def test_stored_scores_are_the_rerankers(tiny_teacher, tiny_cross_encoder, dataset, tmp_path: Path) -> None:
    """Only the written negatives and the positives are scored (no filter reads the scores)."""
    scorer = CrossEncoderScorer(tiny_cross_encoder, dataset.corpus, batch_size=7, max_length=64)
    out, removed_out = tmp_path / "neg.jsonl", tmp_path / "removed.jsonl"
    miner = HardNegativeMiner(tiny_teacher, filters=[], depth=20, scorer=scorer)
    miner.mine(dataset, out, removed_out=removed_out)
    reranker = CrossEncoderReranker(None, tiny_cross_encoder, dataset.corpus, max_length=64)  # type: ignore[arg-type]
    records = read_negatives(out)
    assert records and all(len(r.negatives) == 4 for r in records)
    for record in records:
        ids = [*record.positives, *(n.id for n in record.negatives)]
        expected = reranker.score(record.query, [_text(dataset.corpus, d) for d in ids])
        stored = [record.positive_scores["positive_ce_scores"][p] for p in record.positives]
        stored += [n.scores["ce_score"] for n in record.negatives]
        np.testing.assert_allclose(stored, expected, rtol=0, atol=2e-4)  # batch padding noise: 5e-5
        assert np.ptp(expected) > 0.01  # scores that differ, so equality is not vacuous
    removed = [json.loads(line) for line in removed_out.read_text().splitlines()]
    assert all(c["ce_score"] is None for line in removed for c in line["removed"])  # never scored
    assert json.loads(Path(f"{out}.config.json").read_text())["scorer"]["model"] == str(tiny_cross_encoder)


def test_scorer_truncates_where_the_reranker_does(tiny_cross_encoder, dataset, tmp_path: Path) -> None:
    """Without max_length, ce_score is the score `densekit eval --rerank` ranks by: both truncate at the
    length the folder's tokenizer records (48 here), not at 512."""
    folder = tmp_path / "ce"
    shutil.copytree(tiny_cross_encoder, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "model_max_length": 48}))
    scorer = CrossEncoderScorer(folder, dataset.corpus)
    reranker = CrossEncoderReranker(None, folder, dataset.corpus)  # type: ignore[arg-type]
    assert scorer.reranker.max_length == reranker.max_length == 48
    assert scorer.describe()["max_length"] == 48
    query, ids = next(iter(dataset.queries.values())), list(dataset.corpus.ids[:5])
    np.testing.assert_allclose(scorer.score(query, ids), reranker.score(query, [_text(dataset.corpus, d) for d in ids]))


def test_ce_filter_in_the_miner_drops_exactly_the_rule(tiny_teacher, tiny_cross_encoder, dataset, tmp_path) -> None:
    """Every candidate is written or removed (negatives = depth), so the partition can be checked whole."""
    scorer = CrossEncoderScorer(tiny_cross_encoder, dataset.corpus, max_length=64)
    out, removed_out = tmp_path / "neg.jsonl", tmp_path / "removed.jsonl"
    miner = HardNegativeMiner(tiny_teacher, filters=[CrossEncoderFilter(0.01)], negatives=10, depth=10, scorer=scorer)
    result = miner.mine(dataset, out, removed_out=removed_out)
    removed = {line["query_id"]: line for line in map(json.loads, removed_out.read_text().splitlines())}
    dropped = 0
    for record in read_negatives(out):
        threshold = min(record.positive_scores["positive_ce_scores"].values()) - 0.01
        assert all(n.scores["ce_score"] < threshold for n in record.negatives)
        gone = [c for c in removed.get(record.query_id, {"removed": []})["removed"] if c["filter"] == "ce(0.01)"]
        assert all(c["ce_score"] >= threshold for c in gone)
        positives_in_list = sum(
            c["filter"] == "positives" for c in removed.get(record.query_id, {"removed": []})["removed"]
        )
        assert len(record.negatives) + len(gone) + positives_in_list == 10
        dropped += len(gone)
    assert dropped == result.stats.removed["ce(0.01)"] > 0


def test_vote_with_bm25_source_and_cross_encoder(tiny_teacher, tiny_cross_encoder, dataset, tmp_path: Path) -> None:
    from test_mining_pipeline import Bm25sRetriever

    from densekit.mining import DenseSource

    bm25 = RetrieverSource(Bm25sRetriever(dataset.corpus), name="bm25")
    scorer = CrossEncoderScorer(tiny_cross_encoder, dataset.corpus, max_length=64)
    vote = VoteFilter(2, ("teacher", "ce", "bm25"))
    sources = [DenseSource(tiny_teacher, name="teacher"), bm25]
    out, removed_out = tmp_path / "neg.jsonl", tmp_path / "removed.jsonl"
    miner = HardNegativeMiner(
        tiny_teacher, sources, [vote], negatives=20, depth=10, fusion="union", scorer=scorer, bm25=bm25
    )
    result = miner.mine(dataset, out, removed_out=removed_out)
    records = {r.query_id: r for r in read_negatives(out)}
    lines = [json.loads(line) for line in removed_out.read_text().splitlines()]
    for line in lines:
        record = records[line["query_id"]]
        rows = [n.to_json() for n in record.negatives] + [c for c in line["removed"] if c["filter"] != "positives"]
        nan = float("nan")
        candidates = Candidates(
            line["query_id"],
            [r["id"] for r in rows],
            [r["teacher_score"] for r in rows],
            list(record.positives),
            [line["positive_scores"][p] for p in record.positives],
            extra_scores={
                name: (
                    [nan if r[f"{name}_score"] is None else r[f"{name}_score"] for r in rows],
                    [line[f"positive_{name}_scores"].get(p, nan) for p in record.positives],
                )
                for name in ("ce", "bm25")
            },
        )
        # recomputed from the stored scores, the vote removes exactly the candidates the miner removed
        assert [r.get("filter") == vote.label for r in rows] == (~vote.keep(candidates)).tolist()
    assert result.stats.removed[vote.label] > 0


def test_miner_refuses_a_vote_without_its_teachers(tiny_teacher) -> None:
    with pytest.raises(DensekitError, match="'ce' needs a cross-encoder"):
        HardNegativeMiner(tiny_teacher, filters=[VoteFilter(1, ("teacher", "ce"))])
    with pytest.raises(DensekitError, match="ce filter needs a cross-encoder"):
        HardNegativeMiner(tiny_teacher, filters=[CrossEncoderFilter()])


# -- the CLI, and the trainer reading what it wrote -----------------------------------------------


def test_cli_mine_with_scorer_then_train_with_distillation(
    tiny_model: Path, tiny_cross_encoder: Path, scifact_small: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "neg.jsonl"
    base = ["mine", str(scifact_small), "--split", "test", "--teacher", str(tiny_model), "--out", str(out)]
    base += ["--scorer", str(tiny_cross_encoder), "--depth", "6"]
    code, stdout, stderr = run_cli([*base, "--method", "ce", "--ce-margin", "0.05", "--json"], capsys, monkeypatch)
    assert code == 0, stderr
    assert json.loads(stdout)["stats"]["removed"]["ce(0.05)"] > 0
    assert all("ce_score" in n.scores for r in read_negatives(out) for n in r.negatives)

    run = tmp_path / "run"
    code, stdout, stderr = run_cli(
        ["train", "--model", str(tiny_model), "--negatives", str(out), "--corpus", str(scifact_small),
         "--output", str(run), "--negatives-per-query", "2", "--batch-size", "4", "--max-steps", "2",
         "--max-length", "48", "--device", "cpu", "--distill", "margin-mse", "--json", "--quiet"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["teacher_score"] == "ce_score"  # the default teacher: the cross-encoder

    code, stdout, stderr = run_cli([*base, "--method", "vote", "--vote-k", "2", "--json"], capsys, monkeypatch)
    assert code == 0, stderr
    assert "vote(2 of teacher+ce)" in json.loads(stdout)["stats"]["removed"]

    for bad, message in (
        [["--method", "ce", "--scorer", str(tmp_path)], "not a cross-encoder folder"],
        [["--vote-k", "2"], "--vote-k is given"],
        [["--method", "vote", "--vote-k", "3"], "between 1 and the 2 teachers"],
    ):
        code, _, err = run_cli([*base, *bad], capsys, monkeypatch)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = run_cli(["mine", str(scifact_small), "--out", str(out), "--method", "ce"], capsys, monkeypatch)
    assert code == 2 and "needs a cross-encoder" in err
